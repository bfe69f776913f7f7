"""Collections' pure parts: accrual deltas add up to what is owed along any run of a transaction's
states; the plan bills exactly the groups an integer-cents oracle bills, and collections plus what
stays unbilled are exactly the accruals; windows; dunning."""

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


@given(st.integers(1, 10**7), st.integers(0, 10_000), st.lists(st.integers(0, 10**7), max_size=6), st.data())
def test_accrual_deltas_along_any_rising_run_of_states_sum_to_what_is_owed(amount_c, rate_bp, refund_steps, data):
    """States of one transaction (completed, then growing refunds). Whatever states the service
    happens to apply (an increasing run of sequence numbers ending at the newest, late ones
    skipped), the rows `accrual_deltas` gives along it sum to the newest state's net, and a full
    refund nets exactly zero; each row's kind follows its sign. Oracle: integer cents. Delivery
    order and the service's sequence guard are driven for real in
    tests/integration/test_projection_order.py."""
    commission_c = (2 * amount_c * rate_bp + 10_000) // 20_000
    refunded = sorted({min(r, amount_c) for r in refund_steps})
    states = [(0, "completed")] + [(r, "refunded" if r == amount_c else "partially_refunded") for r in refunded if r]
    skipped = data.draw(st.lists(st.booleans(), min_size=len(states) - 1, max_size=len(states) - 1))
    run = [s for s, skip in zip(states, skipped) if not skip] + [states[-1]]
    current, rows = Owed(D(0), D(0)), []
    for refunded_c, status in run:
        after = owed(payment_type="external", status=status, amount=cents(amount_c), refunded_amount=cents(refunded_c),
                     commission=cents(commission_c), currency="USD")
        rows += accrual_deltas(current, after)
        current = after
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


# Half-hour steps back from NOW (15:30) land exactly on midnights too: the window's edge is drawn.
accruals = st.lists(st.builds(
    lambda i, barber, currency, units, half_hours, tx: Accrual(i, barber, currency, cents(units),
                                                               NOW - timedelta(minutes=30 * half_hours), f"tx{tx}"),
    st.integers(), st.integers(1, 4), st.sampled_from(["USD", "EUR"]), st.integers(-3000, 5000).filter(bool),
    st.integers(0, 2 * 24 * 40), st.integers(1, 30)), max_size=40, unique_by=lambda a: a.id)
settings = st.dictionaries(st.integers(1, 4), st.builds(BarberSettings, st.sampled_from(["daily", "weekly", "monthly"]),
                                                        st.booleans()))
# The ends of NOW's last complete windows, written out by hand (not `window_end`'s own answer).
WINDOW_ENDS = {"daily": datetime(2026, 11, 26, tzinfo=UTC), "weekly": datetime(2026, 11, 23, tzinfo=UTC),
               "monthly": datetime(2026, 11, 1, tzinfo=UTC)}


def expected_bills(all_accruals, barber_settings, default, minimum_c, force, barber_id):
    """Oracle, by brute force in integer cents: which accruals each run may bill (a manual run for
    `barber_id`: all of that barber's; the schedule: barbers with automatic collection), those
    before the barber's window end (NOW with `force`), summed per (barber, currency); a group is
    billed, whole, when its total is at least the minimum and above zero."""
    groups: dict[tuple[int, str], tuple[int, list[int], datetime]] = {}
    for a in all_accruals:
        setting = barber_settings.get(a.barber_id, default)
        may_bill = a.barber_id == barber_id if barber_id is not None else setting.auto_collection
        if not may_bill:
            continue
        end = NOW if force else WINDOW_ENDS[setting.frequency]
        if not a.accrued_at < end:
            continue
        total, ids, _ = groups.get((a.barber_id, a.currency), (0, [], end))
        groups[(a.barber_id, a.currency)] = (total + int(a.amount * 100), [*ids, a.id], end)
    return {key: (total, tuple(sorted(ids)), end) for key, (total, ids, end) in groups.items()
            if total >= minimum_c and total > 0}


@given(accruals, settings, st.integers(0, 5000), st.booleans(), st.one_of(st.none(), st.integers(1, 4)))
def test_collections_plus_unbilled_are_the_accruals(all_accruals, barber_settings, minimum_c, force, barber_id):
    """Exactly the groups the oracle bills become collections, each of exactly its total and its
    accruals, and nothing else is billed; collections plus what stays unbilled are the accruals."""
    default = BarberSettings("weekly", True)
    planned = plan_collections(all_accruals, barber_settings, default, NOW, cents(minimum_c), force=force,
                               barber_id=barber_id)
    billed = [i for c in planned for i in c.accrual_ids]
    assert len(billed) == len(set(billed))  # no accrual in two collections
    got = {(c.barber_id, c.currency): (int(c.amount * 100), c.accrual_ids, c.period_end) for c in planned}
    assert len(got) == len(planned)  # one collection per (barber, currency)
    assert got == expected_bills(all_accruals, barber_settings, default, minimum_c, force, barber_id)
    by_id = {a.id: a for a in all_accruals}
    for collection in planned:
        assert collection.amount == sum(by_id[i].amount for i in collection.accrual_ids)  # exact, no rounding
        assert collection.transaction_ids == tuple(sorted({by_id[i].transaction_id for i in collection.accrual_ids}))
    unbilled = [a for a in all_accruals if a.id not in set(billed)]
    assert sum(c.amount for c in planned) + sum(a.amount for a in unbilled) == sum(a.amount for a in all_accruals)
    # A second run over what is left bills nothing: every group it could bill fell short already.
    assert plan_collections(unbilled, barber_settings, default, NOW, cents(minimum_c), force=force,
                            barber_id=barber_id) == []


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
