"""PayPal's wire objects to the processor interface's types, and PayPal's statuses mapped
exhaustively: an unknown status is an error, never a guess.

Money on PayPal's wire is `{"currency_code": "USD", "value": "10.00"}`: a decimal string, never a
number. It is converted exactly with `shared.money` (never through a float). PayPal takes no
decimals for HUF, JPY and TWD, although ISO 4217 gives HUF and TWD two: amounts in those must be
whole and are written without a fraction ("1500"); read back they carry the ISO exponent again
(`Decimal("1500.00")` for HUF), as every other amount in the suite does.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from shared.money import MoneyError, minor_unit_exponent, to_decimal
from shared.processors.base import (
    PaymentResult,
    PaymentStatus,
    ProcessorRequestError,
    RefundResult,
    RefundStatus,
    WebhookEvent,
)

# Currencies PayPal documents as "does not support decimals".
PAYPAL_ZERO_DECIMAL = frozenset({"HUF", "JPY", "TWD"})

# Every Order status Orders v2 documents. Only COMPLETED means money moved; an order is not
# what we report as the payment (its capture is), but create_payment checks it on the way.
ORDER_STATUS: dict[str, PaymentStatus] = {
    "CREATED": "pending",
    "SAVED": "pending",
    "APPROVED": "pending",
    "PAYER_ACTION_REQUIRED": "pending",
    "VOIDED": "canceled",
    "COMPLETED": "completed",
}
# Every Capture status Payments v2 documents. A refunded capture still is a payment that
# happened (refunds are their own objects), as a refunded Stripe PaymentIntent stays succeeded.
CAPTURE_STATUS: dict[str, PaymentStatus] = {
    "COMPLETED": "completed",
    "PARTIALLY_REFUNDED": "completed",
    "REFUNDED": "completed",
    "PENDING": "pending",
    "DECLINED": "failed",
    "FAILED": "failed",
}
# Every Refund status Payments v2 documents; a cancelled refund moved no money, like a failed one.
REFUND_STATUS: dict[str, RefundStatus] = {
    "COMPLETED": "succeeded",
    "PENDING": "pending",
    "FAILED": "failed",
    "CANCELLED": "failed",
}
# Transaction Search's one-letter `transaction_status` codes. V (fully reversed) and F
# (partially refunded) were payments that happened; their refunds are separate transactions.
TRANSACTION_STATUS: dict[str, PaymentStatus] = {
    "S": "completed",
    "V": "completed",
    "F": "completed",
    "P": "pending",
    "D": "failed",
}
# Transaction event codes T00xx are payments received or sent (T0006: PayPal Checkout APIs);
# refunds and reversals are T11xx; fees, holds and transfers are other groups.
PAYMENT_EVENT_GROUP = "T00"
REFUND_EVENT_GROUP = "T11"
# Transaction Search's codes for a refund's own row.
REFUND_TRANSACTION_STATUS: dict[str, RefundStatus] = {"S": "succeeded", "P": "pending", "D": "failed", "V": "failed"}

# The webhook events the adapter subscribes to, and which resource each carries.
CAPTURE_EVENTS = frozenset({"PAYMENT.CAPTURE.COMPLETED", "PAYMENT.CAPTURE.DENIED",
                            "PAYMENT.CAPTURE.PENDING"})
REFUND_EVENTS = frozenset({"PAYMENT.CAPTURE.REFUNDED", "PAYMENT.CAPTURE.REVERSED"})
WEBHOOK_EVENT_TYPES: tuple[str, ...] = (
    "PAYMENT.CAPTURE.COMPLETED", "PAYMENT.CAPTURE.DENIED", "PAYMENT.CAPTURE.PENDING",
    "PAYMENT.CAPTURE.REFUNDED", "PAYMENT.CAPTURE.REVERSED",
)


def _status(table: dict[str, Any], kind: str, value: object) -> Any:
    try:
        return table[value]  # type: ignore[index]
    except (KeyError, TypeError):
        raise ProcessorRequestError(f"unknown PayPal {kind} status {value!r}",
                                    code="unknown_status") from None


def order_status(status: str) -> PaymentStatus:
    return _status(ORDER_STATUS, "order", status)


def capture_status(status: str) -> PaymentStatus:
    return _status(CAPTURE_STATUS, "capture", status)


def refund_status(status: str) -> RefundStatus:
    return _status(REFUND_STATUS, "refund", status)


def transaction_status(status: str) -> PaymentStatus:
    return _status(TRANSACTION_STATUS, "transaction", status)


# ---- money ---------------------------------------------------------------------------------


def _paypal_exponent(currency: str) -> int:
    try:
        exponent = minor_unit_exponent(currency)
    except MoneyError as exc:
        raise ProcessorRequestError(f"PayPal amount: {exc}", code="unsupported_currency") from None
    return 0 if currency.upper() in PAYPAL_ZERO_DECIMAL else exponent


def to_money(amount: Decimal, currency: str) -> dict[str, str]:
    """An exact `Decimal` as PayPal's money object; refuses what PayPal's decimals cannot hold
    instead of rounding it."""
    if isinstance(amount, float) or not isinstance(amount, Decimal) or not amount.is_finite():
        raise ProcessorRequestError(f"amount must be a finite Decimal, not {type(amount).__name__}",
                                    code="invalid_amount")
    code = currency.strip().upper()
    quantum = Decimal(1).scaleb(-_paypal_exponent(code))
    exact = amount.quantize(quantum)
    if exact != amount:
        raise ProcessorRequestError(
            f"{amount} {code} has more decimals than PayPal takes for {code}", code="DECIMAL_PRECISION")
    return {"currency_code": code, "value": str(exact)}


def from_money(money: dict[str, Any]) -> tuple[Decimal, str]:
    """PayPal's money object as (exact Decimal at the currency's ISO exponent, currency)."""
    try:
        code = str(money["currency_code"]).upper()
        value = to_decimal(money["value"])  # plain decimal text only: never through a float
        exponent = minor_unit_exponent(code)
    except (KeyError, TypeError, MoneyError) as exc:
        raise ProcessorRequestError(f"not a PayPal amount: {exc}", code="invalid_amount") from None
    exact = value.quantize(Decimal(1).scaleb(-exponent))
    if exact != value:
        raise ProcessorRequestError(f"PayPal amount {value} {code} has more decimals than {code} has",
                                    code="invalid_amount")
    return exact, code


# ---- objects -------------------------------------------------------------------------------


def parse_time(text: str | None) -> datetime | None:
    """PayPal's RFC 3339 times ("2024-10-12T23:55:07Z", "...07.436Z", "...07+0000") as aware UTC;
    None when PayPal gave none (never a made-up 1970)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ProcessorRequestError(f"not a PayPal time: {text!r}", code="invalid_time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def link(obj: dict[str, Any], rel: str) -> str | None:
    """The href of the HATEOAS link `rel`, if present."""
    for entry in obj.get("links") or ():
        if isinstance(entry, dict) and entry.get("rel") == rel:
            return entry.get("href")
    return None


def last_segment(href: str | None, collection: str) -> str | None:
    """`.../<collection>/<id>` -> id (the id a link points to), else None."""
    if not href:
        return None
    parts = href.rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == collection else None


def order_id_of_capture(capture: dict[str, Any]) -> str | None:
    related = ((capture.get("supplementary_data") or {}).get("related_ids") or {})
    return related.get("order_id") or last_segment(link(capture, "up"), "orders")


def payment_result(capture: dict[str, Any], *, order_id: str | None = None,
                   reference: str | None = None) -> PaymentResult:
    """A capture (what refunds refer to) as our payment. `raw` is the capture plus `order_id`."""
    amount, currency = from_money(capture["amount"])
    status = capture_status(capture["status"])
    reason = (capture.get("status_details") or {}).get("reason")
    order = order_id or order_id_of_capture(capture)
    return PaymentResult(
        processor_payment_id=capture["id"],
        status=status,
        amount=amount,
        currency=currency,
        created_at=parse_time(capture.get("create_time")),
        reference=capture.get("custom_id") or reference,
        failure_code=(reason or capture["status"]) if status == "failed" else None,
        failure_message=f"PayPal capture {capture['status']}" + (f": {reason}" if reason else "")
        if status == "failed" else None,
        raw={**capture, "order_id": order},
    )


def refund_result(refund: dict[str, Any], *, capture_id: str | None = None) -> RefundResult:
    amount, currency = from_money(refund["amount"])
    status = refund_status(refund["status"])
    reason = (refund.get("status_details") or {}).get("reason")
    return RefundResult(
        processor_refund_id=refund["id"],
        processor_payment_id=last_segment(link(refund, "up"), "captures") or capture_id or "",
        status=status,
        amount=abs(amount),  # a reversal may be written as a negative amount
        currency=currency,
        reference=refund.get("custom_id") or refund.get("invoice_id"),
        failure_reason=(reason or refund["status"]) if status == "failed" else None,
        raw=refund,
    )


def order_captures(order: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for unit in order.get("purchase_units") or ()
            for c in ((unit.get("payments") or {}).get("captures") or ())]


def order_refunds(order: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for unit in order.get("purchase_units") or ()
            for r in ((unit.get("payments") or {}).get("refunds") or ())]


def transaction_payments(details: Iterable[dict[str, Any]]) -> list[PaymentResult]:
    """Transaction Search rows that are payments we received, as payments (refunds, fees and
    transfers are left out); `reference` is the `custom_field` our custom_id became."""
    results = []
    for detail in details:
        info = detail.get("transaction_info") or {}
        code = info.get("transaction_event_code") or ""
        if not code.startswith(PAYMENT_EVENT_GROUP) or "transaction_amount" not in info:
            continue
        amount, currency = from_money(info["transaction_amount"])
        if amount <= 0:  # money we sent, not a payment to this account
            continue
        status = transaction_status(info.get("transaction_status"))
        results.append(PaymentResult(
            processor_payment_id=info["transaction_id"],
            status=status,
            amount=amount,
            currency=currency,
            created_at=parse_time(info.get("transaction_initiation_date")),
            reference=info.get("custom_field"),
            failure_code=info.get("transaction_status") if status == "failed" else None,
            raw=detail,
        ))
    return results


def transaction_refunds(details: Iterable[dict[str, Any]]) -> list[tuple[RefundResult, datetime | None]]:
    """Transaction Search rows that are refunds of a capture, with when each was made."""
    results = []
    for detail in details:
        info = detail.get("transaction_info") or {}
        code = info.get("transaction_event_code") or ""
        if not code.startswith(REFUND_EVENT_GROUP) or "transaction_amount" not in info:
            continue
        amount, currency = from_money(info["transaction_amount"])
        status = _status(REFUND_TRANSACTION_STATUS, "refund transaction", info.get("transaction_status"))
        results.append((RefundResult(
            processor_refund_id=info["transaction_id"], processor_payment_id=info.get("paypal_reference_id") or "",
            status=status, amount=abs(amount), currency=currency, reference=info.get("custom_field"),
            failure_reason=info.get("transaction_status") if status == "failed" else None, raw=detail,
        ), parse_time(info.get("transaction_initiation_date"))))
    return results


def webhook_event(event: dict[str, Any]) -> WebhookEvent:
    """A PayPal webhook event as a notice: which capture or refund changed (other types, and
    subscribed types carrying a resource we do not know, are not understood)."""
    type_ = event["event_type"]
    if not isinstance(event["id"], str) or not isinstance(type_, str):
        raise ProcessorRequestError("a PayPal event's id and event_type are strings", code="invalid_event")
    resource = event.get("resource") or {}
    kind = event.get("resource_type")
    notice: dict[str, Any] = {}
    if type_ in CAPTURE_EVENTS and kind in (None, "capture"):
        notice = {"payment_id": _resource_id(resource)}
    elif type_ in REFUND_EVENTS and kind in (None, "refund"):
        notice = {"refund_id": _resource_id(resource)}
    elif type_ in REFUND_EVENTS and kind == "capture":  # a reversal reported on the capture: its refunds moved
        notice = {"payment_id": _resource_id(resource), "refunds_of_payment": True}
    return WebhookEvent(event_id=event["id"], event_type=type_,
                        occurred_at=parse_time(event.get("create_time")), **notice)


def _resource_id(resource: Any) -> str:
    value = resource.get("id") if isinstance(resource, dict) else None
    if not isinstance(value, str) or not value:
        raise ProcessorRequestError("a PayPal event names its resource by a string id", code="invalid_event")
    return value


# ---- errors --------------------------------------------------------------------------------


def error_issue(body: dict[str, Any]) -> str | None:
    """PayPal's most specific code for an error: the first `details[].issue`, else `name`, else
    the OAuth `error`."""
    for detail in body.get("details") or ():
        if isinstance(detail, dict) and detail.get("issue"):
            return str(detail["issue"])
    return body.get("name") or body.get("error")


def error_text(body: dict[str, Any]) -> str:
    """A one-line description of an error body (never contains request headers)."""
    parts = [str(body.get("message") or body.get("error_description") or body.get("name")
                 or body.get("error") or "no error body")]
    for detail in body.get("details") or ():
        if isinstance(detail, dict):
            field = f"{detail['field']}: " if detail.get("field") else ""
            parts.append(f"{field}{detail.get('issue', '')} {detail.get('description', '')}".strip())
    if body.get("debug_id"):
        parts.append(f"debug_id {body['debug_id']}")
    return "; ".join(parts)
