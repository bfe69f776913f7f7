"""Collections' pure parts: accruals add up to what is owed however events arrive; collections
plus what stays unbilled are exactly the accruals; windows; dunning."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.collections.domain import (
    Accrual,
    BarberSettings,
    Owed,
    accrual_deltas,
    after_failure,
    owed,
    plan_collections,
    window_end,
)

NOW = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)  # a Thursday


def cents(units: int) -> D:
    return D(units).scaleb(-2)


@given(st.integers(1, 10**7), st.integers(0, 10_000), st.lists(st.integers(0, 10**7), max_size=6),
       st.randoms(use_true_random=False))
def test_accruals_add_up_to_what_is_owed_in_any_order(amount_c, rate_bp, refund_steps, rnd):
    """States of one transaction (completed, then growing refunds), applied in a random order with
    older ones skipped as the service does: the accrual rows sum to the final state's net, and a
    full refund nets exactly zero. Oracle: integer cents."""
    commission_c = (2 * amount_c * rate_bp + 10_000) // 20_000
    refunded = sorted({min(r, amount_c) for r in refund_steps})
    states = [(0, "completed")] + [(r, "refunded" if r == amount_c else "partially_refunded") for r in refunded if r]
    sequenced = list(enumerate(states, 1))
    rnd.shuffle(sequenced)
    applied, current, rows = 0, Owed(D(0), D(0)), []
    for seq, (refunded_c, status) in sequenced:
        if seq <= applied:
            continue
        after = owed(payment_type="external", status=status, amount=cents(amount_c), refunded_amount=cents(refunded_c),
                     commission=cents(commission_c), currency="USD")
        rows += accrual_deltas(current, after)
        current, applied = after, seq
    final_refunded_c = states[-1][0]
    expected_reversal_c = (2 * commission_c * final_refunded_c + amount_c) // (2 * amount_c)
    assert sum(amount for _, amount in rows) == cents(commission_c - expected_reversal_c)
    if final_refunded_c == amount_c:
        assert sum(amount for _, amount in rows) == 0
    assert all((kind == "commission") == (amount > 0) for kind, amount in rows)


def test_centralized_and_unfinished_payments_owe_nothing():
    for payment_type, status in [("centralized", "completed"), ("external", "pending"), ("external", "failed"),
                                 ("external", "canceled")]:
        assert owed(payment_type=payment_type, status=status, amount=D(100), refunded_amount=D(0),
                    commission=D(20), currency="USD").net == 0


@pytest.mark.parametrize(("frequency", "expected"), [
    ("daily", datetime(2026, 11, 26, tzinfo=UTC)), ("weekly", datetime(2026, 11, 23, tzinfo=UTC)),
    ("monthly", datetime(2026, 11, 1, tzinfo=UTC)),
])
def test_windows_end_at_utc_boundaries(frequency, expected):
    assert window_end(frequency, NOW) == expected
    assert window_end(frequency, expected) == expected  # a boundary is its own window's end


accruals = st.lists(st.builds(
    lambda i, barber, currency, units, hours, tx: Accrual(i, barber, currency, cents(units), NOW - timedelta(hours=hours),
                                                          f"tx{tx}"),
    st.integers(), st.integers(1, 4), st.sampled_from(["USD", "EUR"]), st.integers(-3000, 5000).filter(bool),
    st.integers(0, 24 * 40), st.integers(1, 30)), max_size=40, unique_by=lambda a: a.id)
settings = st.dictionaries(st.integers(1, 4), st.builds(BarberSettings, st.sampled_from(["daily", "weekly", "monthly"]),
                                                        st.booleans()))


@given(accruals, settings, st.integers(0, 5000), st.booleans())
def test_collections_plus_unbilled_are_the_accruals(all_accruals, barber_settings, minimum_c, force):
    default = BarberSettings("weekly", True)
    planned = plan_collections(all_accruals, barber_settings, default, NOW, cents(minimum_c), force=force)
    billed = [i for c in planned for i in c.accrual_ids]
    assert len(billed) == len(set(billed))  # no accrual in two collections
    by_id = {a.id: a for a in all_accruals}
    for collection in planned:
        members = [by_id[i] for i in collection.accrual_ids]
        assert collection.amount == sum(a.amount for a in members)
        assert collection.amount >= cents(minimum_c) and collection.amount > 0  # never negative
        assert {(a.barber_id, a.currency) for a in members} == {(collection.barber_id, collection.currency)}
        barber = barber_settings.get(collection.barber_id, default)
        assert barber.auto_collection
        end = NOW if force else window_end(barber.frequency, NOW)
        assert all(a.accrued_at < end for a in members)
    unbilled = [a for a in all_accruals if a.id not in set(billed)]
    assert sum(c.amount for c in planned) + sum(a.amount for a in unbilled) == sum(a.amount for a in all_accruals)
    # A second run over what is left bills nothing again.
    again = plan_collections(unbilled, barber_settings, default, NOW, cents(minimum_c), force=force)
    assert not {i for c in again for i in c.accrual_ids} & set(billed)


def test_a_manual_run_bills_a_barber_without_automatic_collection():
    accrual = [Accrual(1, 7, "USD", D("30.00"), NOW - timedelta(days=40), "tx1")]
    off = {7: BarberSettings("daily", False)}
    default = BarberSettings("weekly", True)
    assert plan_collections(accrual, off, default, NOW, D(25)) == []
    assert [c.amount for c in plan_collections(accrual, off, default, NOW, D(25), barber_id=7)] == [D("30.00")]


def test_dunning_schedule_then_overdue():
    first = datetime(2026, 11, 1, 12, tzinfo=UTC)
    steps = [after_failure(attempts=n, first_failed_at=first, retry_days=(1, 3, 7)) for n in (1, 2, 3, 4)]
    assert [(s.status, s.next_attempt_at) for s in steps] == [
        ("failed", first + timedelta(days=1)), ("failed", first + timedelta(days=3)),
        ("failed", first + timedelta(days=7)), ("overdue", None)]
