"""The payment and refund lifecycles every service shares: statuses never regress, and refunds
add up to exactly what succeeded, whatever order the news comes in."""

from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.lifecycle import (
    RefundRefused,
    apply_refund,
    merged_status,
    plan_refund,
    status_with_refunds,
)

PROCESSOR_STATUSES = ["pending", "completed", "failed", "canceled"]


@pytest.mark.parametrize(("current", "reported", "expected"), [
    (None, "pending", "pending"), (None, "completed", "completed"),
    ("pending", "completed", "completed"), ("pending", "failed", "failed"), ("pending", "canceled", "canceled"),
    ("completed", "pending", "completed"),  # a late "created" never undoes a completed payment
    ("completed", "failed", "completed"),  # a completed payment never fails
    ("failed", "completed", "completed"),  # but a failed one can still complete (another card)
    ("failed", "canceled", "failed"), ("canceled", "failed", "canceled"),
    ("partially_refunded", "completed", "completed"),  # the base status; refunds are recounted after
    ("refunded", "pending", "completed"),
])
def test_merged_status(current, reported, expected):
    assert merged_status(current, reported) == expected


@given(st.lists(st.sampled_from(PROCESSOR_STATUSES), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_statuses_converge_whatever_the_order_of_the_news(reports, rnd):
    """Oracle, independent of the code: completed if any report says so; else the first failure
    or cancellation reported; else pending. And the same set of reports in any order agrees on
    whether it ends completed."""
    status = None
    for reported in reports:
        status = merged_status(status, reported)
    settled = [r for r in reports if r in ("failed", "canceled")]
    assert status == ("completed" if "completed" in reports else settled[0] if settled else "pending")
    shuffled = reports[:]
    rnd.shuffle(shuffled)
    again = None
    for reported in shuffled:
        again = merged_status(again, reported)
    assert (again == "completed") == (status == "completed")


@pytest.mark.parametrize(("base", "refunded", "expected"), [
    ("completed", "0", "completed"), ("completed", "0.01", "partially_refunded"),
    ("completed", "100.00", "refunded"), ("partially_refunded", "0", "completed"),
    ("failed", "0", "failed"), ("pending", "5", "pending"),
])
def test_status_with_refunds(base, refunded, expected):
    assert status_with_refunds(base, D("100.00"), D(refunded)) == expected


@given(st.integers(1, 10**7), st.lists(st.integers(1, 10**6), max_size=10))
def test_planned_refunds_never_exceed_the_payment(amount_cents, requests):
    """Refunds planned one after another, each counting the ones before as taken: their sum stays
    within the payment, and a full refund takes exactly what is left (integer oracle)."""
    amount, taken = D(amount_cents).scaleb(-2), D(0)
    for cents in requests:
        try:
            refund = plan_refund(status="completed", amount=amount, refunded_amount=D(0), pending_refunds=taken,
                                 requested=D(cents).scaleb(-2), currency="USD")
        except RefundRefused as refused:
            assert refused.code in ("refund_exceeds_payment", "not_refundable")
            assert cents > amount_cents - int(taken * 100)
            continue
        taken += refund
    assert taken <= amount
    if taken < amount:
        rest = plan_refund(status="completed", amount=amount, refunded_amount=D(0), pending_refunds=taken,
                           requested=None, currency="USD")
        assert taken + rest == amount


def test_refunds_of_what_cannot_be_refunded():
    for status in ("pending", "failed", "canceled", "refunded"):
        with pytest.raises(RefundRefused) as info:
            plan_refund(status=status, amount=D(10), refunded_amount=D(0), pending_refunds=D(0), requested=None,
                        currency="USD")
        assert info.value.status == 409
    with pytest.raises(RefundRefused) as info:
        plan_refund(status="completed", amount=D("10.00"), refunded_amount=D(0), pending_refunds=D(0),
                    requested=D("10.01"), currency="USD")
    assert info.value.detail == "amount: 10.01 exceeds the refundable 10.00"


@given(st.integers(1, 10**6), st.lists(st.integers(1, 10**5), max_size=6))
def test_applied_refunds_add_up_and_end_refunded_exactly_at_the_amount(amount_cents, parts):
    amount, refunded = D(amount_cents).scaleb(-2), D(0)
    applied_cents = 0
    for cents in parts:
        if applied_cents + cents > amount_cents:
            with pytest.raises(ValueError):
                apply_refund(amount=amount, refunded_amount=refunded, refund=D(cents).scaleb(-2))
            continue
        refunded, status = apply_refund(amount=amount, refunded_amount=refunded, refund=D(cents).scaleb(-2))
        applied_cents += cents
        assert refunded.scaleb(2) == applied_cents
        assert status == ("refunded" if applied_cents == amount_cents else "partially_refunded")
