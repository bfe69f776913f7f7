"""Payment and refund lifecycles, the same for every service that takes or records money. Pure.

    pending --processor says--> completed | failed | canceled | (still) pending
    completed --refunds that succeeded--> partially_refunded | refunded

A payment only moves forward (a late "created" notice cannot undo a "completed", and a completed
payment never fails), and its refunded total only ever comes from refunds the processor says succeeded.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from shared.money import format_amount

PaymentStatus = Literal["pending", "completed", "failed", "canceled", "refunded", "partially_refunded"]
RefundStatus = Literal["pending", "succeeded", "failed"]

_SETTLED: dict[str, PaymentStatus] = {
    "pending": "pending", "completed": "completed", "failed": "failed", "canceled": "canceled",
}
REFUNDABLE: frozenset[str] = frozenset({"completed", "partially_refunded"})


def settled_status(processor_status: str) -> PaymentStatus:
    """An attempt's status from the processor interface's payment status (exhaustive)."""
    return _SETTLED[processor_status]


class RefundRefused(Exception):
    def __init__(self, code: str, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.code, self.detail, self.status = code, detail, status


def plan_refund(*, status: str, amount: Decimal, refunded_amount: Decimal, pending_refunds: Decimal,
                requested: Decimal | None, currency: str) -> Decimal:
    """How much this refund is for: the request, or all that is left. Pending refunds count as
    taken, so two refunds racing on one payment can never add up to more than it."""
    if status not in REFUNDABLE:
        raise RefundRefused("not_refundable", f"a {status} payment cannot be refunded", status=409)
    remaining = amount - refunded_amount - pending_refunds
    if remaining <= 0:
        raise RefundRefused("not_refundable", "nothing is left to refund (refunds in flight count)", status=409)
    refund = remaining if requested is None else requested
    if refund > remaining:
        raise RefundRefused("refund_exceeds_payment", f"amount: {format_amount(refund, currency)} exceeds the "
                                                      f"refundable {format_amount(remaining, currency)}")
    return refund


def apply_refund(*, amount: Decimal, refunded_amount: Decimal, refund: Decimal) -> tuple[Decimal, PaymentStatus]:
    """The payment's refunded total and status once a refund succeeded (from the locked row)."""
    total = refunded_amount + refund
    if refund <= 0 or total > amount:
        raise ValueError(f"a refund of {refund} on {refunded_amount} of {amount} is not possible")
    return total, "refunded" if total == amount else "partially_refunded"


# How far along a payment is: news only ever moves it forward. A failed or canceled payment can
# still complete (the payer tried another card on the same payment), a completed one never fails.
_PROGRESS = {"pending": 0, "failed": 1, "canceled": 1, "completed": 2}


def merged_status(current: str | None, reported: str) -> str:
    """The payment's base status when the processor reports `reported` (a processor payment
    status) and we hold `current`. Notices arrive late and out of order, so the furthest state
    wins: never back to pending, never from completed to failed; between failed and canceled the
    first one stands."""
    reported = settled_status(reported)
    if current is None:
        return reported
    base = "completed" if current in ("refunded", "partially_refunded") else current
    return reported if _PROGRESS[reported] > _PROGRESS[base] else base


def status_with_refunds(base: str, amount: Decimal, refunded_total: Decimal) -> PaymentStatus:
    """A completed payment's status given the refunds that succeeded so far."""
    if base not in ("completed", "partially_refunded", "refunded"):
        return settled_status(base)
    if refunded_total <= 0:
        return "completed"
    return "refunded" if refunded_total >= amount else "partially_refunded"
