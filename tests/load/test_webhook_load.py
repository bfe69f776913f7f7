"""The webhook burst benchmark's pure parts: events and signatures (checked with Stripe's SDK, Square's
SDK helper and the service's own adapters), redelivery scheduling, outcome counting and the checks."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from itertools import count

import msgspec
import pytest
import stripe
from square.utils.webhooks_helper import verify_signature

from services.external.processors import parse_credentials
from services.external.wire import ConnectionIn
from shared.processors.base import InvalidSignature, Secret
from shared.processors.square import SquareCredentials, SquareProcessor
from shared.processors.stripe import StripeCredentials, StripeProcessor
from tests.load import webhooks as wh

NOW = 1_800_000_000.0
STRIPE_EP = wh.Endpoint("stripe", 41, 960001, wh.webhook_secret("stripe", 960001),
                        "http://127.0.0.1:8000/api/v1/webhooks/stripe/41")
SQUARE_EP = wh.Endpoint("square", 42, 960001, wh.webhook_secret("square", 960001),
                        "http://127.0.0.1:8000/api/v1/webhooks/square/42")


def factory(seed: int = 7) -> wh.EventFactory:
    """Deterministic ids (a counter) so failures reproduce."""
    counter = count(1)
    return wh.EventFactory(random.Random(seed), token=lambda n: f"{next(counter):0{2 * n}x}")


def stripe_adapter() -> StripeProcessor:
    return StripeProcessor(StripeCredentials(Secret("sk_test_unused")), api_base="http://127.0.0.1:9")


def square_adapter() -> SquareProcessor:
    return SquareProcessor(SquareCredentials(Secret("EAAAunused"), "LUNUSED"), api_base="http://127.0.0.1:9")


# --- events and signatures ---------------------------------------------------------------------

def test_stripe_event_verifies_with_stripes_sdk_and_only_with_its_secret():
    event = factory().new(STRIPE_EP, NOW)
    header = wh.signed_headers(event, NOW)[wh.STRIPE_SIGNATURE_HEADER]
    assert header.startswith(f"t={int(NOW)},v1=")
    # tolerance=None: the timestamp is not compared with the clock, only the HMAC is checked
    assert stripe.WebhookSignature.verify_header(event.body, header, STRIPE_EP.secret)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(event.body, header, wh.webhook_secret("stripe", 960002))
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(event.body.replace(b"succeeded", b"canceled"), header,
                                              STRIPE_EP.secret)


async def test_stripe_event_passes_the_services_adapter_as_an_understood_payment():
    import time

    event = factory().new(STRIPE_EP, time.time())
    adapter = stripe_adapter()
    headers = wh.signed_headers(event, time.time())
    await adapter.verify_webhook(event.body, headers, secret=Secret(STRIPE_EP.secret), url=STRIPE_EP.url)
    with pytest.raises(InvalidSignature):  # a stale signature (older than Stripe's 5 minutes) is refused
        await adapter.verify_webhook(event.body, wh.signed_headers(event, time.time() - 600),
                                     secret=Secret(STRIPE_EP.secret), url=STRIPE_EP.url)
    parsed = adapter.parse_webhook(event.body)
    assert parsed.understood and parsed.event_id == event.event_id
    assert parsed.event_type == "payment_intent.succeeded"
    # A notice: it names the payment; the service fetches what the payment is from the processor.
    assert (parsed.payment_id, parsed.refund_id) == (event.payment_id, None)


def test_stripe_event_has_the_shape_stripe_sends():
    event = factory().new(STRIPE_EP, NOW)
    body = json.loads(event.body)
    assert body["id"] == event.event_id and body["id"].startswith("evt_")
    assert body["object"] == "event" and body["type"] == "payment_intent.succeeded"
    assert body["created"] == int(NOW)
    intent = body["data"]["object"]
    assert intent["id"] == event.payment_id and intent["id"].startswith("pi_")
    assert intent["object"] == "payment_intent" and intent["status"] == "succeeded"
    assert intent["amount"] == event.amount_cents and intent["currency"] == "usd"
    assert intent["metadata"] == {} and intent["created"] == int(NOW)


def test_square_event_verifies_with_squares_helper_and_only_for_its_url_and_key():
    event = factory().new(SQUARE_EP, NOW)
    signature = wh.signed_headers(event, NOW)[wh.SQUARE_SIGNATURE_HEADER]
    text = event.body.decode()
    assert verify_signature(request_body=text, signature_header=signature, signature_key=SQUARE_EP.secret,
                            notification_url=SQUARE_EP.url)
    assert not verify_signature(request_body=text, signature_header=signature, signature_key=SQUARE_EP.secret,
                                notification_url=STRIPE_EP.url)
    assert not verify_signature(request_body=text, signature_header=signature,
                                signature_key=wh.webhook_secret("square", 960002), notification_url=SQUARE_EP.url)


async def test_square_event_passes_the_services_adapter_as_an_understood_payment():
    event = factory().new(SQUARE_EP, NOW)
    adapter = square_adapter()
    headers = wh.signed_headers(event, NOW)
    await adapter.verify_webhook(event.body, headers, secret=Secret(SQUARE_EP.secret), url=SQUARE_EP.url)
    with pytest.raises(InvalidSignature):
        await adapter.verify_webhook(event.body + b" ", headers, secret=Secret(SQUARE_EP.secret), url=SQUARE_EP.url)
    parsed = adapter.parse_webhook(event.body)
    assert parsed.understood and parsed.event_id == event.event_id and parsed.event_type == "payment.updated"
    assert (parsed.payment_id, parsed.refund_id) == (event.payment_id, None)  # a notice naming the payment
    body = json.loads(event.body)
    assert body["data"] == {"type": "payment", "id": event.payment_id, "object": {"payment": body["data"]["object"]
                                                                                    ["payment"]}}
    assert body["data"]["object"]["payment"]["location_id"] == wh.square_location_id(960001)
    assert body["created_at"].endswith("Z") and body["merchant_id"].startswith("M")


def test_our_signatures_equal_the_services_own_square_helper():
    from shared.processors.square.adapter import signature_for

    body = factory().new(SQUARE_EP, NOW).body
    assert wh.square_signature(body, "key", SQUARE_EP.url) == signature_for(
        body, signature_key="key", notification_url=SQUARE_EP.url)


def test_a_redelivery_is_the_same_body_signed_again():
    event = factory().new(STRIPE_EP, NOW)
    first = wh.signed_headers(event, NOW)[wh.STRIPE_SIGNATURE_HEADER]
    later = wh.signed_headers(event, NOW + 90)[wh.STRIPE_SIGNATURE_HEADER]
    assert first != later and later.startswith(f"t={int(NOW) + 90},")
    assert stripe.WebhookSignature.verify_header(event.body, later, STRIPE_EP.secret)


def test_every_new_event_is_a_new_payment():
    f = wh.EventFactory(random.Random(1))  # real random ids
    events = [f.new(STRIPE_EP if i % 2 else SQUARE_EP, NOW) for i in range(2000)]
    assert len({e.event_id for e in events}) == 2000
    assert len({e.payment_id for e in events}) == 2000
    square_ids = [e.payment_id for e in events if e.endpoint.processor == "square"]
    assert all(len(i) == 29 and i.isalnum() for i in square_ids)
    assert all(500 <= e.amount_cents <= 90_000 for e in events)


# --- connections -------------------------------------------------------------------------------

def test_webhook_secrets_are_derived_and_distinct():
    assert wh.webhook_secret("stripe", 960001) == wh.webhook_secret("stripe", 960001)
    assert wh.webhook_secret("stripe", 960001).startswith("whsec_")
    secrets = {wh.webhook_secret(p, b) for p in wh.PROCESSORS for b in range(960001, 960051)}
    assert len(secrets) == 100
    assert wh.webhook_secret("stripe", 1, seed=b"other") != wh.webhook_secret("stripe", 1)


def test_connection_plan_and_requests_fit_the_services_wire_types():
    plan = wh.plan_connections(5, 960001)
    assert plan == [("stripe", 960001), ("square", 960001), ("stripe", 960002), ("square", 960002),
                    ("stripe", 960003)]
    for processor, barber in plan:
        body = wh.connection_request(processor, barber)
        parsed = msgspec.convert(body, ConnectionIn)  # forbid_unknown_fields: a stray key fails here
        assert parsed.webhook_secret == wh.webhook_secret(processor, barber)
        creds = parse_credentials(processor, parsed.credentials)
        if processor == "square":
            assert creds.location_id.startswith("L") and "invalid" not in creds.access_token


# --- redeliveries ------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.05, 0.0])
def test_the_duplicate_ratio_is_honoured_over_a_run(ratio):
    schedule = wh.DuplicateSchedule(ratio, random.Random(3))
    f = factory()
    applied: set[str] = set()
    redelivered = 0
    for _ in range(10_000):
        again = schedule.next()
        if again is None:
            event = f.new(STRIPE_EP, NOW)
            applied.add(event.event_id)
            schedule.remember(event)
        else:
            assert again.event_id in applied  # only an event already applied is delivered again
            redelivered += 1
    assert redelivered == schedule.redeliveries
    assert abs(redelivered - 10_000 * ratio) <= 1


def test_redeliveries_wait_for_an_applied_event():
    schedule = wh.DuplicateSchedule(0.5, random.Random(1))
    assert [schedule.next() for _ in range(6)] == [None] * 6  # nothing applied yet
    event = factory().new(SQUARE_EP, NOW)
    schedule.remember(event)
    # The debt built up meanwhile is paid as soon as there is something to redeliver.
    assert schedule.next() is event and schedule.next() is event


def test_the_duplicate_ratio_must_leave_room_for_fresh_events():
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            wh.DuplicateSchedule(bad, random.Random())


# --- outcomes ----------------------------------------------------------------------------------

def ack(event_id: str, duplicate: bool, ignored: bool = False) -> bytes:
    return msgspec.json.encode({"received": True, "event_id": event_id, "duplicate": duplicate, "ignored": ignored})


def test_classify_splits_applied_duplicates_and_errors():
    assert wh.classify(200, ack("e1", False), event_id="e1", redelivery=False) is None
    assert wh.classify(200, ack("e1", True), event_id="e1", redelivery=True) == wh.DUPLICATE
    assert wh.classify(200, ack("e1", False), event_id="e1", redelivery=True) == "200 duplicate_not_detected"
    assert wh.classify(200, ack("e1", True), event_id="e1", redelivery=False) == "200 unexpected_duplicate"
    assert wh.classify(200, ack("e1", False, ignored=True), event_id="e1", redelivery=False) == "200 ignored"
    assert wh.classify(200, ack("e2", False), event_id="e1", redelivery=False) == "200 wrong_event_id"
    assert wh.classify(200, b"<html>", event_id="e1", redelivery=False) == "200 unreadable_ack"
    problem = b'{"status": 400, "code": "invalid_signature", "title": "Bad Request"}'
    assert wh.classify(400, problem, event_id="e1", redelivery=False) == "400 invalid_signature"
    assert wh.classify(429, b'{"code": "rate_limited"}', event_id="e1", redelivery=True) == "429 rate_limited"
    assert wh.classify(500, b"", event_id="e1", redelivery=False) == "500"


def test_the_summary_counts_applied_duplicates_and_errors_apart():
    rec = wh.WebhookRecorder(start=10.0, end=20.0)
    rec.add(9.0, 0.001, None)  # warmup: not counted
    for i in range(900):
        rec.add(10.0 + i * 0.01, 0.010, None)
    for i in range(95):
        rec.add(10.0 + i * 0.05, 0.002, wh.DUPLICATE)
    rec.add(11.0, 0.003, "400 invalid_signature")
    rec.add(12.0, 0.003, "400 invalid_signature")
    rec.add(13.0, 5.0, "timeout")
    rec.add(14.0, 0.004, "200 duplicate_not_detected")
    rec.add(15.0, None, "client_overload")
    s = wh.webhook_summary(rec)
    assert (s["requests"], s["applied"], s["duplicates"], s["errors"]) == (1000, 900, 95, 5)
    assert s["errors_by_kind"] == {"400 invalid_signature": 2, "200 duplicate_not_detected": 1,
                                   "client_overload": 1, "timeout": 1}
    assert s["applied_rps"] == 90.0 and s["duplicate_rps"] == 9.5 and s["throughput_rps"] == 100.0
    assert s["success_rps"] == s["applied_rps"]
    assert s["success_rate"] == pytest.approx(0.995)
    assert s["duplicate_share"] == pytest.approx(95 / 995, abs=1e-4)
    assert s["latency_ms"]["samples"] == 999  # the overload drop was never sent
    assert s["latency_ms"]["max"] == 5000.0
    by = s["latency_ms_by_outcome"]
    assert by["applied"]["samples"] == 900 and by["applied"]["p99"] == 10.0
    assert by["duplicate"]["samples"] == 95 and by["duplicate"]["p50"] == 2.0
    assert by["error"]["samples"] == 4
    assert wh.verdict(s) == ["success rate 99.5000% is under 99.9%"]


def test_a_run_through_a_deduplicating_service_counts_what_it_sent():
    """Schedule, signatures, verification and counting together, against a stand-in service that
    verifies like the adapters and applies each event id once."""
    seen: set[str] = set()
    stored = {ep.connection_id: ep.secret for ep in (STRIPE_EP, SQUARE_EP)}  # what the service verifies with

    def service(event: wh.Event, headers: dict[str, str]) -> tuple[int, bytes]:
        ep = event.endpoint
        secret = stored[ep.connection_id]
        if ep.processor == "stripe":
            try:
                stripe.WebhookSignature.verify_header(event.body, headers[wh.STRIPE_SIGNATURE_HEADER], secret)
            except stripe.SignatureVerificationError:
                return 400, b'{"code": "invalid_signature"}'
        elif not verify_signature(request_body=event.body.decode(), signature_key=secret,
                                  signature_header=headers[wh.SQUARE_SIGNATURE_HEADER], notification_url=ep.url):
            return 400, b'{"code": "invalid_signature"}'
        first = event.event_id not in seen
        seen.add(event.event_id)
        return 200, ack(event.event_id, duplicate=not first)

    forged = replace(STRIPE_EP, secret="whsec_wrong")  # signed with a secret the connection does not have
    rng = random.Random(5)
    schedule, f = wh.DuplicateSchedule(0.1, rng), factory()
    rec = wh.WebhookRecorder(start=0.0, end=100.0)
    fresh = 0
    for i in range(5000):
        again = schedule.next()
        if again is None:
            fresh += 1
            endpoint = forged if fresh in (1, 2001) else (STRIPE_EP, SQUARE_EP)[fresh % 2]
        event = again or f.new(endpoint, NOW)
        status, body = service(event, wh.signed_headers(event, NOW + i * 0.01))
        kind = wh.classify(status, body, event_id=event.event_id, redelivery=again is not None)
        if kind is None:
            schedule.remember(event)
        rec.add(i * 0.02, 0.001, kind)
    s = wh.webhook_summary(rec)
    assert s["duplicates"] == schedule.redeliveries == 500
    assert s["errors_by_kind"] == {"400 invalid_signature": 2}  # the two events sent with a wrong secret
    assert s["applied"] == len(seen) == 5000 - 500 - 2
    assert s["duplicate_share"] == pytest.approx(500 / 4998, abs=1e-4)


# --- checks ------------------------------------------------------------------------------------

def summary(applied_rps: float, success_rate: float = 1.0, duplicate_share: float = 0.1) -> dict:
    return {"applied_rps": applied_rps, "success_rps": applied_rps, "success_rate": success_rate,
            "requests": 1000, "duplicate_share": duplicate_share}


def test_checks_compare_applied_webhooks_with_the_ceiling():
    ceiling = {"success_rps": 2000.0}
    rows = wh.webhook_checks(summary(1000.0), ceiling, duplicate_ratio=0.1, closed_loop=True)
    assert rows[0] == {"check": "applied webhooks/s / ceiling req/s", "value": 0.5, "target": ">= 0.5",
                       "passed": True}
    assert all(r["passed"] for r in rows)
    missed = wh.webhook_checks(summary(980.0, 0.99, 0.2), ceiling, duplicate_ratio=0.1, closed_loop=True)
    assert [r["passed"] for r in missed] == [False, False, False]
    assert missed[0]["value"] == 0.49
    assert wh.webhook_checks(summary(1.0), {"success_rps": 0.0}, duplicate_ratio=0.1,
                             closed_loop=True)[0]["passed"] is False


def test_checks_without_a_ceiling_or_in_an_open_loop_only_show_the_ratio():
    assert wh.webhook_checks(summary(10.0), None, duplicate_ratio=0.1, closed_loop=True)[0]["passed"] is None
    rows = wh.webhook_checks(summary(500.0), {"success_rps": 2000.0}, duplicate_ratio=0.1, closed_loop=False)
    assert rows[0]["value"] == 0.25 and rows[0]["passed"] is None


def test_the_webhook_ceiling_is_shown_beside_the_checks_and_never_decides_them():
    rows = wh.webhook_checks(summary(150.0), {"success_rps": 3000.0}, duplicate_ratio=0.1, closed_loop=True,
                             webhook_ceiling=summary(600.0))
    shown = {r["check"]: r for r in rows if r["passed"] is None}
    assert shown["applied webhooks/s / webhook ceiling's"]["value"] == 0.25
    assert shown["webhook ceiling / one-insert ceiling"]["value"] == 0.2
    assert rows[0]["passed"] is False  # the target stays the one-insert ceiling's
    assert len(wh.webhook_checks(summary(1.0), None, duplicate_ratio=0.1, closed_loop=True,
                                 webhook_ceiling=summary(0.0))) == 3  # nothing to divide by: not shown


def test_ceiling_endpoints_name_the_barber_and_processor_in_the_connection_id():
    endpoints = [wh.Endpoint("stripe", 17, 960001, "whsec_x", "http://svc/a"),
                 wh.Endpoint("square", 18, 960001, "key", "http://svc/b")]
    stripe, square = wh.ceiling_endpoints(endpoints, "http://127.0.0.1:9/")
    assert (stripe.connection_id, square.connection_id) == (9600010, 9600011)
    assert square.url == "http://127.0.0.1:9/api/v1/webhooks/square/9600011" == "http://127.0.0.1:9" + square.path
    assert (stripe.secret, square.secret, stripe.barber_id) == ("whsec_x", "key", 960001)


def test_arguments_default_to_the_brief_and_refuse_nonsense():
    args = wh.parse_args([])
    assert (args.url, args.concurrency, args.rate, args.duplicate_ratio) == (wh.DEFAULT_URL, 32, None, 0.1)
    assert args.json.endswith(".run/webhook-load-results.json") and not args.no_ceiling
    assert wh.parse_args(["--rate", "300"]).concurrency is None
    for bad in (["--duplicate-ratio", "1"], ["--connections", "0"], ["--rate", "10", "--concurrency", "4"],
                ["--warmup", "-1"]):
        with pytest.raises(SystemExit):
            wh.parse_args(bad)
