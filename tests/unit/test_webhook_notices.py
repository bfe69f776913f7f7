"""Every webhook event type the suite registers with a processor is one it acts on (issue 14, 13):
a registered type that parses as "not understood" would be answered 2xx and dropped, so money the
barber moved on its own dashboard would never be recorded. The object each type carries is what
the processor documents for it (written out here, not taken from the adapters)."""

from __future__ import annotations

import json

import pytest

from shared.processors.base import Secret
from shared.processors.paypal import PayPalCredentials, PayPalProcessor
from shared.processors.paypal import transformers as paypal
from shared.processors.square import SquareCredentials, SquareProcessor
from shared.processors.square import transformers as square
from shared.processors.stripe import StripeCredentials, StripeProcessor
from shared.processors.stripe import adapter as stripe_adapter

# Stripe: the object `data.object` is for each type (Stripe's event types reference).
STRIPE_OBJECTS = {
    "payment_intent.succeeded": "payment_intent", "payment_intent.payment_failed": "payment_intent",
    "payment_intent.canceled": "payment_intent", "payment_intent.processing": "payment_intent",
    "payment_intent.requires_action": "payment_intent", "refund.created": "refund", "refund.updated": "refund",
    "refund.failed": "refund", "charge.refund.updated": "refund", "charge.refunded": "charge",
}
# Square: `data.type` for each type (Square's webhook events reference).
SQUARE_OBJECTS = {"payment.created": "payment", "payment.updated": "payment", "refund.created": "refund",
                  "refund.updated": "refund"}
# PayPal: `resource_type` for each type (PayPal's webhook event names).
PAYPAL_RESOURCES = {"PAYMENT.CAPTURE.COMPLETED": "capture", "PAYMENT.CAPTURE.DENIED": "capture",
                    "PAYMENT.CAPTURE.PENDING": "capture", "PAYMENT.CAPTURE.REFUNDED": "refund",
                    "PAYMENT.CAPTURE.REVERSED": "refund"}


def stripe_body(event_type: str) -> bytes:
    kind = STRIPE_OBJECTS[event_type]
    obj = {"id": {"payment_intent": "pi_1", "refund": "re_1", "charge": "ch_1"}[kind], "object": kind}
    if kind in ("refund", "charge"):
        obj["payment_intent"] = "pi_1"
    return json.dumps({"id": "evt_1", "object": "event", "type": event_type, "created": 1764000000,
                       "data": {"object": obj}}).encode()


def square_body(event_type: str) -> bytes:
    kind = SQUARE_OBJECTS[event_type]
    return json.dumps({"merchant_id": "M1", "type": event_type, "event_id": "e1",
                       "created_at": "2026-11-26T00:00:00Z",
                       "data": {"type": kind, "id": "X1", "object": {kind: {"id": "X1", "payment_id": "P1"}}}}).encode()


def paypal_body(event_type: str) -> bytes:
    return json.dumps({"id": "WH-1", "event_type": event_type, "resource_type": PAYPAL_RESOURCES[event_type],
                       "create_time": "2026-11-26T00:00:00Z", "resource": {"id": "R1"}}).encode()


CASES = [
    *[("stripe", t) for t in stripe_adapter.WEBHOOK_EVENTS],
    *[("square", t) for t in square.WEBHOOK_EVENT_TYPES],
    *[("paypal", t) for t in paypal.WEBHOOK_EVENT_TYPES],
]
ADAPTERS = {
    "stripe": (StripeProcessor(StripeCredentials(Secret("sk_test_x"))), stripe_body, STRIPE_OBJECTS),
    "square": (SquareProcessor(SquareCredentials(Secret("EAAA-x"), "L1")), square_body, SQUARE_OBJECTS),
    "paypal": (PayPalProcessor(PayPalCredentials("c", Secret("s"))), paypal_body, PAYPAL_RESOURCES),
}


@pytest.mark.parametrize(("processor", "event_type"), CASES)
def test_every_registered_event_type_is_acted_on(processor, event_type):
    adapter, body, documented = ADAPTERS[processor]
    assert event_type in documented, f"{processor} registers {event_type}, which this test does not know"
    notice = adapter.parse_webhook(body(event_type))
    assert notice.understood, f"{processor} registers {event_type} but the adapter ignores it"
    assert notice.payment_id or notice.refund_id


def test_the_registered_lists_are_the_ones_sent_to_the_processors():
    """What `register_webhook` subscribes to is exactly what the test above walks."""
    assert sorted(stripe_adapter.WEBHOOK_EVENTS) == sorted(STRIPE_OBJECTS)
    assert sorted(square.WEBHOOK_EVENT_TYPES) == sorted(SQUARE_OBJECTS)
    assert sorted(paypal.WEBHOOK_EVENT_TYPES) == sorted(PAYPAL_RESOURCES)


def test_a_dashboard_refund_notice_asks_for_the_payments_refunds():
    adapter = ADAPTERS["stripe"][0]
    notice = adapter.parse_webhook(stripe_body("charge.refunded"))
    assert (notice.payment_id, notice.refunds_of_payment) == ("pi_1", True)
