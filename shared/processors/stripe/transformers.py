"""Stripe's wire objects to the processor interface's types, and Stripe's statuses mapped
exhaustively: an unknown status is an error, never a guess."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.money import from_minor_units
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

# Every PaymentIntent status Stripe documents.
PAYMENT_INTENT_STATUS: dict[str, PaymentStatus] = {
    "succeeded": "completed",
    "processing": "pending",
    "requires_payment_method": "failed",  # after a confirmation attempt: the payment failed
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


def payment_status(stripe_status: str) -> PaymentStatus:
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
        status=payment_status(intent["status"]),
        amount=from_minor_units(intent["amount"], currency),
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
        processor_payment_id=charge["id"], status=status, amount=from_minor_units(charge["amount"], currency),
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
        amount=from_minor_units(refund["amount"], currency),
        currency=currency,
        reference=(refund.get("metadata") or {}).get(REFERENCE_KEY),
        failure_reason=refund.get("failure_reason"),
        raw=refund,
    )


def webhook_event(event: dict[str, Any]) -> WebhookEvent:
    """A Stripe Event: payment and refund changes become updates; other types are not understood."""
    type_ = event["type"]
    obj = (event.get("data") or {}).get("object") or {}
    payment = refund = None
    if type_ in PAYMENT_EVENTS and obj.get("object") == "payment_intent":
        payment = payment_result(obj)
    elif type_ in REFUND_EVENTS and obj.get("object") == "refund":
        refund = refund_result(obj)
    return WebhookEvent(event_id=event["id"], event_type=type_, occurred_at=_time(event.get("created")),
                        payment=payment, refund=refund)


def _time(epoch: int | None) -> datetime:
    return datetime.fromtimestamp(epoch or 0, UTC)
