"""Square's wire objects (Payments API `Payment`, Refunds API `PaymentRefund`, webhook events) to
the processor interface's types, with Square's statuses mapped exhaustively: an unknown status is
an error, never a guess.

Where our reference travels: a payment keeps it in Square's `reference_id` (at most 40
characters). A `PaymentRefund` has no reference field and no metadata, so the refund's `reason`
(at most 192 characters, kept and returned by Square) carries it as `hp_reference:<reference>`;
`reference_from_reason` reads it back, which is what `find_refund` relies on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from shared.money import MoneyError, from_minor_units, normalise_currency
from shared.processors.base import (
    PaymentResult,
    PaymentStatus,
    ProcessorRequestError,
    RefundResult,
    RefundStatus,
    WebhookEvent,
)

# Every Payment status Square documents.
PAYMENT_STATUS: dict[str, PaymentStatus] = {
    "APPROVED": "pending",  # authorized but not captured (delayed capture): no money has moved yet
    "PENDING": "pending",  # still processing (mostly non-card sources, e.g. bank transfers)
    "COMPLETED": "completed",
    "CANCELED": "canceled",  # voided, or the delayed-capture window ran out
    "FAILED": "failed",
}
# Every PaymentRefund status Square documents. REJECTED (the seller's balance could not cover it,
# or Square refused it) and FAILED both mean no money went back.
REFUND_STATUS: dict[str, RefundStatus] = {
    "PENDING": "pending",
    "COMPLETED": "succeeded",
    "REJECTED": "failed",
    "FAILED": "failed",
}
PAYMENT_EVENTS = frozenset({"payment.created", "payment.updated"})
REFUND_EVENTS = frozenset({"refund.created", "refund.updated"})
WEBHOOK_EVENT_TYPES: tuple[str, ...] = tuple(sorted(PAYMENT_EVENTS | REFUND_EVENTS))

# Square's documented field limits, checked before sending so a bad value fails here, clearly.
REFERENCE_ID_MAX = 40
REFUND_REASON_MAX = 192
NOTE_MAX = 500
IDEMPOTENCY_KEY_MAX = 45
REFUND_REFERENCE_PREFIX = "hp_reference:"


def payment_status(square_status: str) -> PaymentStatus:
    try:
        return PAYMENT_STATUS[square_status]
    except (KeyError, TypeError):
        raise ProcessorRequestError(f"unknown Square payment status {square_status!r}") from None


def refund_status(square_status: str) -> RefundStatus:
    try:
        return REFUND_STATUS[square_status]
    except (KeyError, TypeError):
        raise ProcessorRequestError(f"unknown Square refund status {square_status!r}") from None


def refund_reason(reference: str) -> str:
    """The `reason` a refund is created with: it carries our reference (see the module docstring)."""
    reason = f"{REFUND_REFERENCE_PREFIX}{reference}"
    if not reference or len(reason) > REFUND_REASON_MAX:
        raise ProcessorRequestError(
            f"refund reference must be 1 to {REFUND_REASON_MAX - len(REFUND_REFERENCE_PREFIX)} characters"
            " (it travels in Square's refund reason)")
    return reason


def reference_from_reason(reason: str | None) -> str | None:
    if reason and reason.startswith(REFUND_REFERENCE_PREFIX):
        return reason[len(REFUND_REFERENCE_PREFIX):] or None
    return None


def money(obj: Any, what: str) -> tuple[Decimal, str]:
    """A Square `Money` ({"amount": minor units, "currency": "USD"}) as an exact Decimal."""
    if not isinstance(obj, dict):
        raise ProcessorRequestError(f"Square {what} has no amount")
    units, currency = obj.get("amount"), obj.get("currency")
    try:
        code = normalise_currency(currency)
        return from_minor_units(units, code), code
    except MoneyError as exc:
        raise ProcessorRequestError(f"Square {what} is not a usable amount: {exc}") from None


def optional_time(value: Any, what: str = "timestamp") -> datetime | None:
    """`parse_time`, or None when Square gave no time at all (never a made-up one)."""
    return None if value is None else parse_time(value, what)


def parse_time(value: Any, what: str = "timestamp") -> datetime:
    """An RFC 3339 timestamp as Square writes it ("2026-11-24T10:00:00.123Z") -> aware datetime."""
    if not isinstance(value, str):
        raise ProcessorRequestError(f"Square {what} is missing")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ProcessorRequestError(f"Square {what} {value[:40]!r} is not an RFC 3339 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    """A datetime as Square takes it in queries; a naive one is taken to be UTC."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payment_result(payment: dict[str, Any]) -> PaymentResult:
    if not isinstance(payment, dict) or not payment.get("id"):
        raise ProcessorRequestError("not a Square payment")
    # amount_money is what was charged for the sale; total_money adds a tip, which we never send.
    amount, currency = money(payment.get("amount_money"), "payment amount")
    errors = ((payment.get("card_details") or {}).get("errors") or [])
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    return PaymentResult(
        processor_payment_id=payment["id"],
        status=payment_status(payment.get("status")),
        amount=amount,
        currency=currency,
        created_at=optional_time(payment.get("created_at"), "payment created_at"),
        reference=payment.get("reference_id"),
        charge_id=None,  # Square has no separate charge object: the payment is the charge
        failure_code=first.get("code"),
        failure_message=first.get("detail"),
        raw=payment,
    )


def refund_result(refund: dict[str, Any]) -> RefundResult:
    if not isinstance(refund, dict) or not refund.get("id"):
        raise ProcessorRequestError("not a Square refund")
    status = refund_status(refund.get("status"))
    amount, currency = money(refund.get("amount_money"), "refund amount")
    return RefundResult(
        processor_refund_id=refund["id"],
        processor_payment_id=refund.get("payment_id") or "",
        status=status,
        amount=amount,
        currency=currency,
        reference=reference_from_reason(refund.get("reason")),
        # Square gives no reason for a refund that did not go through; its status is all there is.
        failure_reason=refund["status"].lower() if status == "failed" else None,
        raw=refund,
    )


def webhook_event(event: dict[str, Any]) -> WebhookEvent:
    """A Square event as a notice: which payment or refund changed (other types are not understood)."""
    type_ = event["type"]
    if not isinstance(event["event_id"], str) or not isinstance(type_, str):
        raise ProcessorRequestError("a Square event's event_id and type are strings")
    obj = ((event.get("data") or {}).get("object")) or {}
    notice: dict[str, str] = {}
    if type_ in PAYMENT_EVENTS and isinstance(obj.get("payment"), dict):
        notice = {"payment_id": _object_id(obj["payment"].get("id"))}
    elif type_ in REFUND_EVENTS and isinstance(obj.get("refund"), dict):
        notice = {"refund_id": _object_id(obj["refund"].get("id"))}
    return WebhookEvent(event_id=event["event_id"], event_type=type_,
                        occurred_at=optional_time(event.get("created_at"), "event created_at"), **notice)


def _object_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ProcessorRequestError("a Square event names its object by a string id")
    return value
