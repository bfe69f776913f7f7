"""Stripe's wire objects to the processor interface's types, and Stripe's statuses mapped
exhaustively: an unknown status is an error, never a guess."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from shared.money import from_minor_units, to_minor_units
from shared.processors.base import (
    PaymentResult,
    PaymentStatus,
    ProcessorRequestError,
    RefundResult,
    RefundStatus,
    WebhookEvent,
)

# Where our own id for a payment or refund travels in Stripe's `metadata`.
REFERENCE_KEY = "hp_reference"

# Stripe's API keeps ISK two-decimal, though fractional króna are gone (since April 2023 an ISK
# amount must be a multiple of 100: `100` is 1 króna); ISO 4217, and this suite, give ISK no
# decimals. UGX, zero-decimal in ISO 4217, is zero-decimal in Stripe's API too.
_TWO_DECIMAL_ON_STRIPE = frozenset({"ISK"})


def stripe_units(amount: Decimal, currency: str) -> int:
    """An amount in Stripe's minor units for `currency` (5,000 ISK is 500000)."""
    units = to_minor_units(amount, currency)
    return units * 100 if currency.upper() in _TWO_DECIMAL_ON_STRIPE else units


def stripe_amount(units: Any, currency: str) -> Decimal:
    """Stripe's minor units back to an amount; a fractional króna (only in charges made before
    2023) is refused, never rounded."""
    if currency.upper() in _TWO_DECIMAL_ON_STRIPE and isinstance(units, int) and not isinstance(units, bool):
        whole, fraction = divmod(units, 100)
        if fraction:
            raise ProcessorRequestError(f"Stripe answered {units} minor units of {currency.upper()}: "
                                        f"not a whole number of króna")
        units = whole
    return from_minor_units(units, currency)

# Every PaymentIntent status Stripe documents. `requires_payment_method` is both where a new
# intent starts and where a failed attempt returns it: only an intent with `last_payment_error`
# failed (`payment_status`); one never attempted (abandoned) is still pending, never a failure.
PAYMENT_INTENT_STATUS: dict[str, PaymentStatus] = {
    "succeeded": "completed",
    "processing": "pending",
    "requires_payment_method": "pending",
    "requires_confirmation": "pending",
    "requires_action": "pending",
    "requires_capture": "pending",
    "canceled": "canceled",
}
# Every Refund status Stripe documents; a canceled refund moved no money, like a failed one.
REFUND_STATUS: dict[str, RefundStatus] = {
    "succeeded": "succeeded",
    "pending": "pending",
    "requires_action": "pending",
    "failed": "failed",
    "canceled": "failed",
}
PAYMENT_EVENTS = frozenset({
    "payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled",
    "payment_intent.processing", "payment_intent.requires_action",
})
REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"})
# A charge's refunds changed (a refund made in the barber's own Stripe dashboard announces itself so).
CHARGE_REFUND_EVENTS = frozenset({"charge.refunded"})
# Every event type the suite registers with a barber's Stripe account: each one is handled.
WEBHOOK_EVENT_TYPES: tuple[str, ...] = tuple(sorted(PAYMENT_EVENTS | REFUND_EVENTS | CHARGE_REFUND_EVENTS))


def payment_status(stripe_status: str, *, attempted: bool = True) -> PaymentStatus:
    """`attempted`: the intent carries a `last_payment_error` (only then is
    `requires_payment_method` a failure)."""
    if stripe_status == "requires_payment_method" and attempted:
        return "failed"
    try:
        return PAYMENT_INTENT_STATUS[stripe_status]
    except KeyError:
        raise ProcessorRequestError(f"unknown PaymentIntent status {stripe_status!r}") from None


def refund_status(stripe_status: str) -> RefundStatus:
    try:
        return REFUND_STATUS[stripe_status]
    except KeyError:
        raise ProcessorRequestError(f"unknown Refund status {stripe_status!r}") from None


def payment_result(intent: dict[str, Any]) -> PaymentResult:
    currency = intent["currency"].upper()
    charge = intent.get("latest_charge")
    error = intent.get("last_payment_error") or {}
    return PaymentResult(
        processor_payment_id=intent["id"],
        status=payment_status(intent["status"], attempted=bool(intent.get("last_payment_error"))),
        amount=stripe_amount(intent["amount"], currency),
        currency=currency,
        created_at=_time(intent.get("created")),
        reference=(intent.get("metadata") or {}).get(REFERENCE_KEY),
        charge_id=charge.get("id") if isinstance(charge, dict) else charge,
        failure_code=error.get("decline_code") or error.get("code"),
        failure_message=error.get("message"),
        raw=intent,
    )


# Every Charge status Stripe documents.
CHARGE_STATUS: dict[str, PaymentStatus] = {"succeeded": "completed", "pending": "pending", "failed": "failed"}


def charge_result(charge: dict[str, Any]) -> PaymentResult:
    currency = charge["currency"].upper()
    try:
        status = CHARGE_STATUS[charge["status"]]
    except KeyError:
        raise ProcessorRequestError(f"unknown Charge status {charge['status']!r}") from None
    return PaymentResult(
        processor_payment_id=charge["id"], status=status, amount=stripe_amount(charge["amount"], currency),
        currency=currency, created_at=_time(charge.get("created")),
        reference=(charge.get("metadata") or {}).get(REFERENCE_KEY), charge_id=charge["id"],
        failure_code=charge.get("failure_code"), failure_message=charge.get("failure_message"), raw=charge,
    )


def refund_result(refund: dict[str, Any]) -> RefundResult:
    currency = refund["currency"].upper()
    return RefundResult(
        processor_refund_id=refund["id"],
        processor_payment_id=refund.get("payment_intent") or "",
        status=refund_status(refund["status"]),
        amount=stripe_amount(refund["amount"], currency),
        currency=currency,
        reference=(refund.get("metadata") or {}).get(REFERENCE_KEY),
        failure_reason=refund.get("failure_reason"),
        raw=refund,
    )


def webhook_event(event: dict[str, Any]) -> WebhookEvent:
    """A Stripe Event as a notice: which PaymentIntent or Refund changed (other types, and
    subscribed types about other objects, are not understood)."""
    type_ = event["type"]
    if not isinstance(event["id"], str) or not isinstance(type_, str):
        raise ProcessorRequestError("a Stripe event's id and type are strings")
    obj = (event.get("data") or {}).get("object") or {}
    notice: dict[str, Any] = {}
    if type_ in PAYMENT_EVENTS and obj.get("object") == "payment_intent":
        notice = {"payment_id": _object_id(obj.get("id"))}
    elif type_ in REFUND_EVENTS and obj.get("object") == "refund":
        notice = {"refund_id": _object_id(obj.get("id"))}
    elif type_ in CHARGE_REFUND_EVENTS and obj.get("object") == "charge" and obj.get("payment_intent"):
        notice = {"payment_id": _object_id(obj["payment_intent"]), "refunds_of_payment": True}
    return WebhookEvent(event_id=event["id"], event_type=type_, occurred_at=_time(event.get("created")), **notice)


def _object_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ProcessorRequestError("a Stripe event names its object by a string id")
    return value


def _time(epoch: Any) -> datetime | None:
    """Stripe's epoch seconds; None when absent or not a plausible time (never 1970)."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch <= 0:
        return None
    try:
        return datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, OSError, ValueError):
        return None
