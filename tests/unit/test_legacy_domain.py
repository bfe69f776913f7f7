"""What the legacy import carries over from BookedBarber V2, and why not (`services.router.legacy`)."""

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.router.legacy import (
    LEGACY_NAMESPACE,
    LegacyBarber,
    LegacyPayment,
    Skip,
    Totals,
    V2PaymentRow,
    V2UserRow,
    barber_of,
    differences,
    legacy_transaction_id,
    payment_of,
    transaction_recorded,
)

D = Decimal
DEFAULT = D("0.20")


@pytest.mark.parametrize(("raw", "rate", "noted"), [
    (None, D("0.20"), True), (D("0.15"), D("0.15"), False), (D("0"), D("0"), False), (D("1"), D("1"), False),
    (D("20.00"), D("0.2"), True), (D("12.5"), D("0.125"), True), (D("100"), D("1"), True),
])
def test_a_barbers_rate_is_a_fraction_a_percentage_or_the_default(raw, rate, noted):
    barber = barber_of(V2UserRow(id=7, commission_rate=raw, stripe_account_id="acct_1"), DEFAULT)
    assert isinstance(barber, LegacyBarber)
    assert barber.commission_rate == rate and (barber.rate_note is not None) == noted


@pytest.mark.parametrize("raw", [D("-0.1"), D("100.01"), D("250")])
def test_an_impossible_rate_skips_the_barber_instead_of_guessing(raw):
    skip = barber_of(V2UserRow(id=7, commission_rate=raw, stripe_account_id=None), DEFAULT)
    assert skip == Skip("users", 7, "invalid_commission_rate", f"commission_rate {raw}")


def test_a_blank_stripe_account_is_no_account():
    assert barber_of(V2UserRow(id=1, commission_rate=None, stripe_account_id="  "), DEFAULT).connect_account_id is None


def row(**over):
    base = dict(id=10, barber_id=1, appointment_id=5, client_id=9, amount=D("45.50"), status="completed",
                stripe_payment_intent_id="pi_1", created_at=datetime(2025, 3, 1, 12, 0))
    return V2PaymentRow(**{**base, **over})


RATES = {1: D("0.15")}


def test_a_completed_payment_becomes_a_centralized_stripe_payment_at_its_original_time():
    p = payment_of(row(), RATES, "USD")
    assert isinstance(p, LegacyPayment)
    assert (p.amount, p.refunded_amount, p.status, p.client_id) == (D("45.50"), 0, "completed", 9)
    assert p.commission_amount == D("6.83")  # 6.825 half-up
    assert p.processor_fee == D("1.62")  # Stripe list price: 2.9 % + 0.30
    assert p.processed_at == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert p.transaction_id == legacy_transaction_id(10) != legacy_transaction_id(11)
    event = transaction_recorded(p, 1)
    assert (event.source, event.payment_type, event.processor, event.sequence) == ("legacy", "centralized", "stripe", 1)
    assert event.external_transaction_id == "pi_1" and event.transaction_id == p.transaction_id


def test_a_refund_gave_back_the_whole_payment_and_a_zoned_time_is_kept():
    moment = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5)))
    p = payment_of(row(status=" Refunded ", created_at=moment), RATES, "USD")
    assert (p.status, p.refunded_amount, p.processed_at) == ("refunded", D("45.50"), moment)


@pytest.mark.parametrize(("over", "reason"), [
    (dict(status="pending"), "status_pending"), (dict(status="failed"), "status_failed"),
    (dict(status=None), "status_missing"), (dict(amount=None), "missing_amount"),
    (dict(amount=D("0.00")), "zero_amount"), (dict(amount=D("-3.00")), "negative_amount"),
    (dict(amount=D("1.005")), "sub_minor_unit_amount"), (dict(barber_id=2), "unknown_barber"),
    (dict(created_at=None), "missing_created_at"),
])
def test_what_is_not_carried_over_says_why(over, reason):
    skip = payment_of(row(**over), RATES, "USD")
    assert isinstance(skip, Skip) and (skip.table, skip.legacy_id, skip.reason) == ("payments", 10, reason)


def test_a_yen_amount_must_be_whole_yen():
    assert payment_of(row(amount=D("4500.5")), RATES, "JPY").reason == "sub_minor_unit_amount"
    assert payment_of(row(amount=D("4500")), RATES, "JPY").commission_amount == D("675")


def test_differences_name_the_barber_and_the_figure_and_count_a_missing_side_as_zero():
    legacy = {1: Totals(2, D("10.00"), D("0")), 2: Totals(1, D("5.00"), D("5.00"))}
    suite = {1: Totals(2, D("10.0000"), D("0")), 3: Totals(1, D("1.00"), D("0"))}
    found = {d.barber_id: d.describe() for d in differences(legacy, suite, "router")}
    assert set(found) == {2, 3}
    assert found[2] == ("barber 2: count legacy 1 vs router 0, amount legacy 5.00 vs router 0, "
                        "refunded legacy 5.00 vs router 0")
    assert found[3].startswith("barber 3: count legacy 0 vs router 1")


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_the_transaction_id_is_the_stdlib_uuid5_of_the_legacy_id(legacy_id):
    """The spelled-out name-based UUID is exactly `uuid.uuid5`'s (ids already imported keep theirs)."""
    expected = uuid.uuid5(LEGACY_NAMESPACE, f"bookedbarber-v2/payments/{legacy_id}")
    assert legacy_transaction_id(legacy_id) == str(expected)
    assert uuid.UUID(legacy_transaction_id(legacy_id)).version == 5
