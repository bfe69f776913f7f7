"""The Square adapter (shared/processors/square) against the Square simulator (sandbox/square_sim.py)
served on a real port in-process: credentials, payments and declines, refunds that settle later,
the payment window, signed webhooks received by a real local server, every failure kind of the
processor interface, idempotency, the exhaustive status mapping and credential hygiene."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sandbox.square_sim import NONCE_DECLINED, NONCE_OK, NONCE_PENDING_REFUND, start_square_sim
from shared.processors.base import (
    InvalidCredentials,
    InvalidSignature,
    OutcomeUnknown,
    PaymentDeclined,
    PaymentProcessor,
    PaymentRequest,
    ProcessorError,
    ProcessorRequestError,
    ProcessorTimeout,
    ProcessorUnavailable,
    RefundRequest,
    Secret,
    find_payment,
    find_refund,
)
from shared.processors.square import (
    SIGNATURE_HEADER,
    SquareCredentials,
    SquareProcessor,
    signature_for,
    square_idempotency_key,
)
from shared.processors.square import transformers as tf
from tests.integration.router_support import sim_post

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "EAAAl-square-barber-one-token-7f3a"
LOCATION = "LBARBER1"


@pytest.fixture
async def sim():
    running = await start_square_sim()
    yield running
    await running.close()


@pytest.fixture
async def make_processor(sim):
    """Builds adapters against the simulator and closes them afterwards."""
    built: list[SquareProcessor] = []

    def build(token: str = TOKEN, location: str = LOCATION, *, timeout: float = 5.0,
              api_base: str | None = None) -> SquareProcessor:
        processor = SquareProcessor(SquareCredentials(Secret(token), location),
                                    api_base=api_base or sim.url, timeout=timeout)
        built.append(processor)
        return processor

    yield build
    for processor in built:
        await processor.close()


@pytest.fixture
def processor(make_processor) -> SquareProcessor:
    return make_processor()


async def sim_payments(control: aiohttp.ClientSession) -> list[dict]:
    async with control.get("/_sim/payments") as resp:
        return (await resp.json())["payments"]


async def square(control: aiohttp.ClientSession, method: str, path: str, body: dict | None = None,
                 token: str = TOKEN, **params: str) -> tuple[int, dict]:
    """A raw Square API call, for what the adapter never sends (autocomplete false, cancel)."""
    async with control.request(method, path, json=body, params=params or None,
                               headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json()


def payment(amount: str = "45.00", source: str = NONCE_OK, **extra) -> PaymentRequest:
    key = str(uuid.uuid4())
    fields = {"idempotency_key": key, "reference": f"pay-{key[:8]}", **extra}
    return PaymentRequest(amount=Decimal(amount), currency="USD", payment_method=source, **fields)


def refund_of(payment_id: str, amount: str, reference: str | None = None) -> RefundRequest:
    key = str(uuid.uuid4())
    return RefundRequest(processor_payment_id=payment_id, amount=Decimal(amount), currency="USD",
                         idempotency_key=key, reference=reference or f"refund-{key[:8]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- credentials -----------------------------------------------------------------------------


async def test_processor_implements_the_interface(processor):
    assert isinstance(processor, PaymentProcessor)
    assert processor.name == "square"


async def test_check_credentials_for_fixed_and_derived_locations(processor, make_processor, control):
    info = await processor.check_credentials()
    assert info.account_id.startswith("M") and info.default_currency == "USD"

    # The seller's main location is derived from the token and listed by ListLocations.
    status, listing = await square(control, "GET", "/v2/locations")
    assert status == 200
    ids = [loc["id"] for loc in listing["locations"]]
    main = [loc_id for loc_id in ids if loc_id != LOCATION]
    assert len(main) == 1 and LOCATION in ids
    assert (await make_processor(location=main[0]).check_credentials()) == info


async def test_unknown_location_is_invalid_credentials_naming_it(make_processor):
    with pytest.raises(InvalidCredentials) as exc:
        await make_processor(location="nowhere-42").check_credentials()
    assert "nowhere-42" in exc.value.message and "location" in exc.value.message
    with pytest.raises(InvalidCredentials):  # refused before anything is sent
        await make_processor(location="../payments").check_credentials()


async def test_refused_token_is_invalid_credentials(make_processor):
    with pytest.raises(InvalidCredentials) as exc:
        await make_processor("EAAA-invalid-token-0001").check_credentials()
    assert exc.value.code == "UNAUTHORIZED"


# --- payments --------------------------------------------------------------------------------


async def test_payment_completes_with_exact_minor_units_and_reference(processor, control):
    request = payment("45.07", description="Skin fade", customer="CUST1",
                      platform_fee=Decimal("5.00"), destination="ignored")
    result = await processor.create_payment(request)

    assert result.status == "completed" and result.amount == Decimal("45.07")
    assert result.currency == "USD" and result.reference == request.reference
    assert result.created_at.tzinfo is not None
    [stored] = await sim_payments(control)
    assert stored["id"] == result.processor_payment_id
    assert stored["amount_money"] == {"amount": 4507, "currency": "USD"}
    assert stored["status"] == "COMPLETED" and stored["location_id"] == LOCATION
    assert stored["reference_id"] == request.reference and stored["note"] == "Skin fade"
    assert stored["customer_id"] == "CUST1" and "app_fee_money" not in stored

    fetched = await processor.retrieve_payment(result.processor_payment_id)
    assert (fetched.status, fetched.amount, fetched.reference) == ("completed", Decimal("45.07"),
                                                                    request.reference)


@pytest.mark.parametrize("source, code", [
    (NONCE_DECLINED, "GENERIC_DECLINE"),
    ("cnon:card-nonce-rejected-cvv", "CVV_FAILURE"),
    ("cnon:card-nonce-rejected-postalcode", "ADDRESS_VERIFICATION_FAILURE"),
    ("cnon:card-nonce-rejected-expiration", "INVALID_EXPIRATION"),
])
async def test_decline_is_payment_declined_with_the_failed_payment(processor, control, source, code):
    with pytest.raises(PaymentDeclined) as exc:
        await processor.create_payment(payment(source=source))
    assert exc.value.code == code
    [stored] = await sim_payments(control)
    assert stored["status"] == "FAILED" and exc.value.processor_payment_id == stored["id"]

    failed = await processor.retrieve_payment(stored["id"])
    assert failed.status == "failed" and failed.failure_code == code


async def test_unknown_payment_and_bad_input_are_request_errors(processor, control):
    with pytest.raises(ProcessorRequestError) as exc:
        await processor.retrieve_payment("nosuchpayment")
    assert exc.value.code == "NOT_FOUND"
    with pytest.raises(ProcessorRequestError):  # not an id: refused here, never put in a path
        await processor.retrieve_payment("../refunds")
    with pytest.raises(ProcessorRequestError) as exc:
        await processor.create_payment(payment(source="tok_visa"))
    assert exc.value.code == "NOT_FOUND"
    with pytest.raises(ProcessorRequestError):  # longer than Square's 40-character reference_id
        await processor.create_payment(payment(reference="r" * 41))
    with pytest.raises(ProcessorRequestError) as exc:  # the location takes USD only
        await processor.create_payment(PaymentRequest(Decimal("10.00"), "EUR", NONCE_OK, "k-eur", "r-eur"))
    assert exc.value.code == "UNSUPPORTED_CURRENCY"
    assert await sim_payments(control) == []  # none of these charged anything


async def test_approved_and_canceled_payments_read_back_as_pending_and_canceled(processor, control):
    status, created = await square(control, "POST", "/v2/payments", {
        "source_id": NONCE_OK, "idempotency_key": "manual-1", "autocomplete": False,
        "amount_money": {"amount": 1500, "currency": "USD"}, "location_id": LOCATION})
    assert status == 200 and created["payment"]["status"] == "APPROVED"
    payment_id = created["payment"]["id"]
    assert (await processor.retrieve_payment(payment_id)).status == "pending"
    status, _ = await square(control, "POST", f"/v2/payments/{payment_id}/cancel", {})
    assert status == 200
    assert (await processor.retrieve_payment(payment_id)).status == "canceled"


# --- idempotency -----------------------------------------------------------------------------


async def test_same_idempotency_key_twice_charges_once(processor, control):
    request = payment()
    first = await processor.create_payment(request)
    again = await processor.create_payment(request)
    assert again.processor_payment_id == first.processor_payment_id
    assert len(await sim_payments(control)) == 1

    # The key with another amount: the first request under it was done, so not a refusal
    # (tests/integration/test_reused_keys.py).
    with pytest.raises(OutcomeUnknown) as exc:
        await processor.create_payment(dataclasses.replace(request, amount=Decimal("46.00")))
    assert exc.value.code == "IDEMPOTENCY_KEY_REUSED"
    assert len(await sim_payments(control)) == 1


async def test_keys_longer_than_square_takes_are_sent_as_a_stable_digest(processor, control):
    long_key = "hp-pay-" + "x" * 60
    sent = square_idempotency_key(long_key)
    assert len(sent) <= 45 and sent == square_idempotency_key(long_key)
    assert square_idempotency_key("short-key") == "short-key"
    request = payment(idempotency_key=long_key)
    first = await processor.create_payment(request)
    assert (await processor.create_payment(request)).processor_payment_id == first.processor_payment_id
    assert len(await sim_payments(control)) == 1


async def test_declines_are_replayed_under_their_key(processor, control):
    request = payment(source=NONCE_DECLINED)
    ids = []
    for _ in range(2):
        with pytest.raises(PaymentDeclined) as exc:
            await processor.create_payment(request)
        ids.append(exc.value.processor_payment_id)
    assert ids[0] == ids[1] and len(await sim_payments(control)) == 1


# --- refunds ---------------------------------------------------------------------------------


async def test_partial_then_full_refund_then_nothing_left(processor):
    paid = await processor.create_payment(payment("50.00"))
    partial = await processor.refund(refund_of(paid.processor_payment_id, "20.00", "refund-a"))
    assert partial.status == "succeeded" and partial.amount == Decimal("20.00")
    assert partial.reference == "refund-a" and partial.processor_payment_id == paid.processor_payment_id
    rest = await processor.refund(refund_of(paid.processor_payment_id, "30.00", "refund-b"))
    assert rest.status == "succeeded"

    with pytest.raises(ProcessorRequestError) as exc:
        await processor.refund(refund_of(paid.processor_payment_id, "0.01"))
    assert exc.value.code == "REFUND_AMOUNT_INVALID"

    listed = await processor.list_refunds(paid.processor_payment_id)
    assert [(r.processor_refund_id, r.reference) for r in listed] == [
        (partial.processor_refund_id, "refund-a"), (rest.processor_refund_id, "refund-b")]
    found = await find_refund(processor, refund_of(paid.processor_payment_id, "30.00", "refund-b"))
    assert found is not None and found.processor_refund_id == rest.processor_refund_id
    assert await find_refund(processor, refund_of(paid.processor_payment_id, "30.00", "refund-zzz")) is None
    # Our reference on a refund of another amount: not the one we asked for.
    assert await find_refund(processor, refund_of(paid.processor_payment_id, "29.00", "refund-b")) is None
    fetched = await processor.retrieve_refund(partial.processor_refund_id)
    assert (fetched.amount, fetched.reference) == (Decimal("20.00"), "refund-a")


async def test_same_refund_key_refunds_once(processor):
    paid = await processor.create_payment(payment("50.00"))
    request = refund_of(paid.processor_payment_id, "10.00")
    first = await processor.refund(request)
    assert (await processor.refund(request)).processor_refund_id == first.processor_refund_id
    assert len(await processor.list_refunds(paid.processor_payment_id)) == 1


async def test_pending_refunds_settle_through_the_control(processor, control):
    paid = await processor.create_payment(payment("40.00", source=NONCE_PENDING_REFUND))
    first = await processor.refund(refund_of(paid.processor_payment_id, "30.00"))
    assert first.status == "pending"
    with pytest.raises(ProcessorRequestError):  # a pending refund holds its amount
        await processor.refund(refund_of(paid.processor_payment_id, "20.00"))

    await sim_post(control, f"/_sim/refunds/{first.processor_refund_id}/status", {"status": "REJECTED"})
    rejected = await processor.retrieve_refund(first.processor_refund_id)
    assert rejected.status == "failed" and rejected.failure_reason == "rejected"

    second = await processor.refund(refund_of(paid.processor_payment_id, "40.00"))  # freed again
    await sim_post(control, f"/_sim/refunds/{second.processor_refund_id}/status", {"status": "COMPLETED"})
    assert (await processor.retrieve_refund(second.processor_refund_id)).status == "succeeded"
    async with control.post(f"/_sim/refunds/{second.processor_refund_id}/status",
                            json={"status": "FAILED"}) as resp:
        assert resp.status == 409  # only a pending refund settles


async def test_refund_of_a_failed_payment_is_refused(processor, control):
    with pytest.raises(PaymentDeclined) as exc:
        await processor.create_payment(payment(source=NONCE_DECLINED))
    with pytest.raises(ProcessorRequestError) as refused:
        await processor.refund(refund_of(exc.value.processor_payment_id, "1.00"))
    assert refused.value.code == "PAYMENT_NOT_REFUNDABLE"


# --- lists -----------------------------------------------------------------------------------


async def test_list_payments_returns_the_window_across_pages(processor, make_processor, sim):
    template = await processor.create_payment(payment("10.00"))
    merchant = next(iter(sim.state.merchants.values()))
    original = merchant.payments.pop(template.processor_payment_id)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    # 250 payments a minute apart (more than two pages of 100), created in the simulator directly.
    for i in range(250):
        row = copy.deepcopy(original)
        row.update(id=f"P{i:04d}", reference_id=f"ref-{i:04d}",
                   created_at=(base + timedelta(minutes=i)).isoformat(timespec="milliseconds")
                   .replace("+00:00", "Z"))
        merchant.payments[row["id"]] = row
    other = copy.deepcopy(original)  # another location's payment in the window is not ours
    other.update(id="POTHER", location_id="LELSEWHERE", created_at=base.isoformat().replace("+00:00", "Z"))
    merchant.payments["POTHER"] = other

    since, until = base + timedelta(minutes=20), base + timedelta(minutes=230)
    listed = await processor.list_payments(since, until)
    assert [p.processor_payment_id for p in listed] == [f"P{i:04d}" for i in range(20, 230)]
    assert all(since <= p.created_at < until for p in listed)
    found = await find_payment(processor, "ref-0100", since=since, until=until)
    assert found is not None and found.processor_payment_id == "P0100"
    assert await find_payment(processor, "ref-0019", since=since, until=until) is None
    elsewhere = await make_processor(location="LELSEWHERE").list_payments(base, until)
    assert [p.processor_payment_id for p in elsewhere] == ["POTHER"]


async def test_simulator_pages_with_cursors_and_checks_them(processor, control):
    for _ in range(3):
        await processor.create_payment(payment("5.00"))
    status, first = await square(control, "GET", "/v2/payments", limit="2", location_id=LOCATION)
    assert status == 200 and len(first["payments"]) == 2 and first["cursor"]
    status, second = await square(control, "GET", "/v2/payments", limit="2", location_id=LOCATION,
                                  cursor=first["cursor"])
    assert status == 200 and len(second["payments"]) == 1 and "cursor" not in second
    status, wrong = await square(control, "GET", "/v2/payments", limit="3", location_id=LOCATION,
                                 cursor=first["cursor"])
    assert status == 400 and wrong["errors"][0]["code"] == "INVALID_CURSOR"
    status, empty = await square(control, "GET", "/v2/payments", location_id=LOCATION,
                                 end_time="2020-01-01T00:00:00Z")
    assert status == 200 and empty == {}


# --- webhooks --------------------------------------------------------------------------------


class Receiver:
    """A real HTTP server on a free port that records what the simulator POSTs to it."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), dict(request.headers)))
        return web.Response(status=200)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"only {len(self.received)} of {count} arrived"
            await asyncio.sleep(0.02)


@pytest.fixture
async def receiver():
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/square", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks/square"
    yield rec
    await runner.cleanup()


async def test_registered_webhook_delivers_signed_events_that_verify(processor, make_processor, sim,
                                                                     receiver):
    registration = await processor.register_webhook(receiver.url)
    assert registration.endpoint_id.startswith("wbhk_") and registration.secret.reveal()
    # Another seller's subscription to the same URL must hear nothing of this seller's payments.
    await make_processor("EAAA-someone-else-token-2").register_webhook(receiver.url)

    paid = await processor.create_payment(payment("25.00"))
    refund = await processor.refund(refund_of(paid.processor_payment_id, "5.00", "refund-hook"))
    await receiver.wait_for(4)  # payment.created, payment.updated, refund.created, payment.updated
    await sim.state.webhooks.idle()
    assert len(receiver.received) == 4

    events = []
    for body, headers in receiver.received:
        await processor.verify_webhook(body, headers, secret=registration.secret, url=receiver.url)
        events.append(processor.parse_webhook(body))
    assert [e.event_type for e in events] == ["payment.created", "payment.updated", "refund.created",
                                              "payment.updated"]
    assert len({e.event_id for e in events}) == 4 and all(e.understood for e in events)
    # Notices name what changed; what it now is comes from the API (a signed body is only a claim).
    assert [e.payment_id for e in events if e.payment_id] == [paid.processor_payment_id] * 3
    [refund_event] = [e for e in events if e.refund_id]
    assert refund_event.refund_id == refund.processor_refund_id
    fetched = await processor.retrieve_refund(refund_event.refund_id)
    assert fetched.reference == "refund-hook" and fetched.status == "succeeded"


async def test_duplicate_and_reordered_deliveries_still_verify(processor, sim, control, receiver):
    """Square's events go through sandbox.common's deliverer, so its switches apply to them."""
    registration = await processor.register_webhook(receiver.url)
    await sim_post(control, "/_sim/webhooks/duplicate", {"enabled": True})
    await sim_post(control, "/_sim/webhooks/reorder", {"enabled": True})
    paid = await processor.create_payment(payment())
    await sim.state.webhooks.idle()
    assert receiver.received == []  # held, not merely late
    assert (await sim_post(control, "/_sim/webhooks/flush", {}))["released"] == 2
    await receiver.wait_for(4)
    events = []
    for body, headers in receiver.received:
        await processor.verify_webhook(body, headers, secret=registration.secret, url=receiver.url)
        events.append(processor.parse_webhook(body))
    # Newest first, each event twice (signed afresh): a receiver must order by state, not arrival.
    assert [e.event_type for e in events] == ["payment.updated"] * 2 + ["payment.created"] * 2
    assert events[0].event_id == events[1].event_id != events[2].event_id == events[3].event_id
    assert all(e.payment_id == paid.processor_payment_id for e in events)


async def test_forged_or_missing_signatures_are_refused(processor, sim, receiver):
    registration = await processor.register_webhook(receiver.url)
    await processor.create_payment(payment())
    await receiver.wait_for(1)
    body, headers = receiver.received[0]
    key = registration.secret
    assert headers[SIGNATURE_HEADER] == signature_for(body, signature_key=key.reveal(),
                                                      notification_url=receiver.url)
    await processor.verify_webhook(body, {SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}, secret=key,
                                   url=receiver.url)

    forged = [
        (body.replace(b"COMPLETED", b"CANCELED").replace(b"APPROVED", b"CANCELED"), headers, key,
         receiver.url),
        (body, headers, Secret("not-the-signature-key"), receiver.url),
        (body, headers, key, receiver.url + "/other"),
        (body, {k: v for k, v in headers.items() if k.lower() != SIGNATURE_HEADER}, key, receiver.url),
        (body, {SIGNATURE_HEADER: ""}, key, receiver.url),
        (b"\xff\xfe" + body, headers, key, receiver.url),
        (body, {SIGNATURE_HEADER: signature_for(body, signature_key="guess", notification_url=receiver.url)},
         key, receiver.url),
    ]
    for forged_body, forged_headers, secret, url in forged:
        with pytest.raises(InvalidSignature):
            await processor.verify_webhook(forged_body, forged_headers, secret=secret, url=url)


def test_parse_webhook_understands_payments_and_refunds_only(processor):
    created = "2026-11-24T10:00:00.123Z"
    pay = {"id": "PAY1", "status": "COMPLETED", "created_at": created,
           "amount_money": {"amount": 1234, "currency": "USD"}, "reference_id": "r1"}
    event = {"event_id": "E1", "type": "payment.updated", "created_at": created,
             "data": {"type": "payment", "id": "PAY1", "object": {"payment": pay}}}
    parsed = processor.parse_webhook(json.dumps(event).encode())
    assert parsed.understood and (parsed.payment_id, parsed.refund_id) == ("PAY1", None)
    assert parsed.occurred_at == datetime(2026, 11, 24, 10, 0, 0, 123000, tzinfo=UTC)
    refund = {**event, "type": "refund.updated", "data": {"type": "refund", "object": {"refund": {
        "id": "REF1", "payment_id": "PAY1", "status": "COMPLETED"}}}}
    assert processor.parse_webhook(json.dumps(refund).encode()).refund_id == "REF1"

    other = {**event, "type": "customer.created", "data": {"type": "customer", "object": {"customer": {}}}}
    assert processor.parse_webhook(json.dumps(other).encode()).understood is False
    nameless = {k: v for k, v in pay.items() if k != "id"}
    for bad in (b"not json", b"[]", json.dumps({"type": "payment.updated"}).encode(),
                json.dumps({**event, "data": {"object": {"payment": nameless}}}).encode()):
        with pytest.raises(ProcessorRequestError):
            processor.parse_webhook(bad)


# --- failures --------------------------------------------------------------------------------


async def test_timeout_fault_is_processor_timeout_and_a_retry_settles_it(processor, make_processor, control):
    await sim_post(control, "/_sim/faults", {"mode": "timeout", "delay_ms": 5000, "count": 1,
                                             "path_prefix": "/v2/payments"})
    request = payment()
    with pytest.raises(ProcessorTimeout):
        await make_processor(timeout=0.5).create_payment(request)
    [charged] = await sim_payments(control)  # it ran anyway
    retried = await processor.create_payment(request)
    assert retried.processor_payment_id == charged["id"] and retried.status == "completed"
    assert len(await sim_payments(control)) == 1


async def test_error_fault_is_outcome_unknown_and_is_not_retried_by_the_sdk(processor, control):
    await sim_post(control, "/_sim/faults", {"mode": "error", "count": 1, "status": 503})
    with pytest.raises(OutcomeUnknown) as exc:  # with SDK retries this call would have succeeded
        await processor.create_payment(payment())
    assert not isinstance(exc.value, ProcessorTimeout) and exc.value.code == "SERVICE_UNAVAILABLE"
    assert await sim_payments(control) == []
    assert (await processor.create_payment(payment())).status == "completed"


async def test_disconnect_fault_is_outcome_unknown_and_the_key_finds_the_payment(processor, control):
    await sim_post(control, "/_sim/faults", {"mode": "disconnect", "count": 1,
                                             "path_prefix": "/v2/payments"})
    request = payment()
    with pytest.raises(OutcomeUnknown) as exc:
        await processor.create_payment(request)
    assert not isinstance(exc.value, ProcessorTimeout)
    [created] = await sim_payments(control)
    assert (await processor.create_payment(request)).processor_payment_id == created["id"]
    assert len(await sim_payments(control)) == 1


async def test_closed_port_is_processor_unavailable(make_processor):
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ProcessorUnavailable):
        await make_processor(api_base=closed).create_payment(payment())
    with pytest.raises(ProcessorUnavailable):
        await make_processor(api_base=closed).check_credentials()


async def test_rate_limit_is_processor_unavailable(processor, control):
    await sim_post(control, "/_sim/rate_limit", {"count": 1})
    with pytest.raises(ProcessorUnavailable) as exc:
        await processor.create_payment(payment())
    assert exc.value.code == "RATE_LIMITED"
    assert await sim_payments(control) == []
    assert (await processor.create_payment(payment())).status == "completed"


# --- status mapping --------------------------------------------------------------------------


def _square_payment(status: str) -> dict:
    return {"id": "P1", "status": status, "created_at": "2026-01-01T00:00:00Z",
            "amount_money": {"amount": 100, "currency": "USD"}}


def _square_refund(status: str) -> dict:
    return {"id": "R1", "status": status, "payment_id": "P1", "reason": "hp_reference:x",
            "amount_money": {"amount": 100, "currency": "USD"}}


def test_every_square_status_is_mapped_and_unknown_ones_raise():
    expected_payments = {"APPROVED": "pending", "PENDING": "pending", "COMPLETED": "completed",
                         "CANCELED": "canceled", "FAILED": "failed"}
    expected_refunds = {"PENDING": "pending", "COMPLETED": "succeeded", "REJECTED": "failed",
                        "FAILED": "failed"}
    assert tf.PAYMENT_STATUS == expected_payments and tf.REFUND_STATUS == expected_refunds
    for status, ours in expected_payments.items():
        assert tf.payment_result(_square_payment(status)).status == ours
    for status, ours in expected_refunds.items():
        assert tf.refund_result(_square_refund(status)).status == ours
    for unknown in ("AUTHORIZED", "completed", "", None):
        with pytest.raises(ProcessorRequestError):
            tf.payment_result(_square_payment(unknown))
        with pytest.raises(ProcessorRequestError):
            tf.refund_result(_square_refund(unknown))


def test_refund_references_round_trip_through_the_reason():
    assert tf.reference_from_reason(tf.refund_reason("abc-123")) == "abc-123"
    assert tf.reference_from_reason("Customer changed their mind") is None
    assert tf.reference_from_reason(None) is None
    with pytest.raises(ProcessorRequestError):
        tf.refund_reason("x" * 200)


# --- credential hygiene ----------------------------------------------------------------------


def _texts(exc: ProcessorError) -> list[str]:
    return [str(exc), repr(exc), exc.message, json.dumps(exc.raw, default=str),
            "".join(traceback.format_exception(exc))]


async def test_no_credential_appears_in_any_repr_or_error(make_processor, sim, control):
    secret_token = "EAAAsecret-token-never-shown-5a9c1e"
    refused_token = "EAAAinvalid-token-never-shown-77b2"
    credentials = SquareCredentials(Secret(secret_token), LOCATION)
    good = make_processor(secret_token)
    texts = [repr(credentials), str(credentials), repr(good), str(good), repr(Secret(secret_token))]
    with pytest.raises(TypeError):  # a bare string would print itself wherever it went
        SquareCredentials(secret_token, LOCATION)  # type: ignore[arg-type]

    errors: list[ProcessorError] = []
    closed = f"http://127.0.0.1:{free_port()}"
    for call in (
        lambda: make_processor(refused_token).check_credentials(),
        lambda: make_processor(secret_token, api_base=closed).create_payment(payment()),
        lambda: good.create_payment(payment(source=NONCE_DECLINED)),
        lambda: good.retrieve_payment("nosuchpayment"),
        lambda: make_processor(secret_token, location="missing").check_credentials(),
    ):
        with pytest.raises(ProcessorError) as exc:
            await call()
        errors.append(exc.value)
    await sim_post(control, "/_sim/faults", {"mode": "timeout", "delay_ms": 3000, "count": 1})
    with pytest.raises(ProcessorTimeout) as timed_out:
        await make_processor(secret_token, timeout=0.3).retrieve_payment("anything")
    errors.append(timed_out.value)
    for error in errors:
        texts.extend(_texts(error))

    # The token did reach the simulator (so the checks below could fail), yet shows nowhere.
    assert secret_token in sim.state.merchants and refused_token not in sim.state.merchants
    for text in texts:
        assert secret_token not in text and refused_token not in text
    async with control.get("/_sim/state") as resp:
        assert secret_token not in await resp.text()


# --- the command line ------------------------------------------------------------------------


def test_module_serves_on_the_given_port_and_stops_on_sigint():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with subprocess.Popen([sys.executable, "-m", "sandbox.square_sim", "--port", str(port)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    assert time.monotonic() < deadline and proc.poll() is None, "did not start"
                    time.sleep(0.05)
            request = urllib.request.Request(base + "/v2/locations/LCLI",
                                             headers={"Authorization": "Bearer t-cli"})
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert json.load(resp)["location"]["id"] == "LCLI"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0
            assert f"square_sim listening on {base}" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
