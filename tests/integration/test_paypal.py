"""The PayPal adapter (shared/processors/paypal) against the PayPal simulator (sandbox/paypal_sim.py)
over real HTTP: OAuth tokens, orders captured under derived request ids, declines, refunds (JPY too),
Transaction Search windows, signed webhooks verified through PayPal's postback, faults and error
mapping, exhaustive status tables, and that no credential or token leaks into text."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import get_args

import aiohttp
import pytest
from aiohttp import web

from sandbox.paypal_sim import raw_member, start_paypal_sim
from shared.processors.base import (
    InvalidCredentials,
    InvalidSignature,
    NotFound,
    OutcomeUnknown,
    PaymentDeclined,
    PaymentProcessor,
    PaymentRequest,
    PaymentStatus,
    ProcessorError,
    ProcessorRequestError,
    ProcessorTimeout,
    ProcessorUnavailable,
    RefundRequest,
    RefundStatus,
    Secret,
    find_payment,
    find_refund,
)
from shared.processors.paypal import PayPalCredentials, PayPalProcessor, adapter
from shared.processors.paypal import transformers as tf
from tests.integration.router_support import sim_post

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "AZbarber-one-client-id"
CLIENT_SECRET = "EL-paypal-client-secret-0001"
BASE = datetime(2026, 1, 10, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeClock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
async def sim():
    running = await start_paypal_sim()
    running.state.webhook_retry_delays = (0.05, 0.05)
    yield running
    await running.close()


@pytest.fixture
async def make_processor(sim):
    built: list[PayPalProcessor] = []

    def build(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET, *, api_base: str | None = None,
              timeout: float = 5.0, clock=None) -> PayPalProcessor:
        extra = {"clock": clock} if clock is not None else {}
        processor = PayPalProcessor(PayPalCredentials(client_id, Secret(secret)),
                                    api_base=api_base or sim.url, timeout=timeout, **extra)
        built.append(processor)
        return processor

    yield build
    for processor in built:
        await processor.close()


@pytest.fixture
def processor(make_processor) -> PayPalProcessor:
    return make_processor()


def account(sim):
    return sim.state.accounts[CLIENT_ID]


_keys = iter(range(1, 1_000_000))


def payment(payment_method: str = "paypal-approved", amount: str = "10.00", currency: str = "USD", *,
            key: str | None = None, reference: str | None = None, **extra) -> PaymentRequest:
    n = next(_keys)
    return PaymentRequest(amount=Decimal(amount), currency=currency, payment_method=payment_method,
                          idempotency_key=key or f"hp-pay-{n}", reference=reference or f"pay-{n}", **extra)


def refund_of(payment_id: str, amount: str, currency: str = "USD", *, key: str | None = None,
              reference: str | None = None) -> RefundRequest:
    n = next(_keys)
    return RefundRequest(processor_payment_id=payment_id, amount=Decimal(amount), currency=currency,
                         idempotency_key=key or f"hp-refund-{n}", reference=reference or f"refund-{n}")


# --- credentials and tokens ---------------------------------------------------------------------


async def test_adapter_implements_the_interface(processor):
    assert isinstance(processor, PaymentProcessor) and processor.name == "paypal"


async def test_check_credentials_gets_a_token_and_answers_the_app_id(sim, processor):
    info = await processor.check_credentials()
    assert info.account_id == account(sim).app_id and info.account_id.startswith("APP-")
    assert account(sim).tokens_issued == 1


async def test_token_is_fetched_once_reused_and_refreshed_after_expiry(sim, make_processor):
    clock = FakeClock()
    processor = make_processor(clock=clock)
    paid = await processor.create_payment(payment())  # order, capture: two calls
    await processor.retrieve_payment(paid.processor_payment_id)
    await processor.list_refunds(paid.processor_payment_id)
    assert account(sim).tokens_issued == 1

    clock.now += 32_400 - 120  # still well before the margin
    await processor.retrieve_payment(paid.processor_payment_id)
    assert account(sim).tokens_issued == 1
    clock.now += 90  # inside the last minute of the token's nine hours: replaced before it expires
    await processor.retrieve_payment(paid.processor_payment_id)
    await processor.retrieve_payment(paid.processor_payment_id)
    assert account(sim).tokens_issued == 2


async def test_a_revoked_token_is_replaced_once_and_a_dead_one_is_invalid_credentials(
        sim, processor, control):
    paid = await processor.create_payment(payment())
    await sim_post(control, "/_sim/oauth", {"revoke": True})
    assert (await processor.retrieve_payment(paid.processor_payment_id)).status == "completed"
    assert account(sim).tokens_issued == 2  # 401 invalid_token -> one new token -> retried

    # Every new token is dead on arrival: one refresh, then InvalidCredentials (no loop).
    await sim_post(control, "/_sim/oauth", {"revoke": True, "expires_in": 0})
    with pytest.raises(InvalidCredentials):
        await processor.retrieve_payment(paid.processor_payment_id)
    assert account(sim).tokens_issued == 3


@pytest.mark.parametrize("client_id, secret", [(CLIENT_ID, "invalid-secret-123"),
                                               ("invalid-client-id", CLIENT_SECRET)])
async def test_refused_client_id_or_secret_is_invalid_credentials(sim, make_processor, client_id, secret):
    processor = make_processor(client_id, secret)
    with pytest.raises(InvalidCredentials) as exc:
        await processor.check_credentials()
    assert exc.value.code == "invalid_client" and secret not in str(exc.value)
    with pytest.raises(InvalidCredentials):
        await processor.create_payment(payment())
    assert all(not a.orders for a in sim.state.accounts.values())


# --- payments -----------------------------------------------------------------------------------


async def test_payment_is_an_order_captured_under_request_ids_derived_from_the_key(sim, processor):
    request = payment(key="hp-pay-42", reference="payment-42", description="Fade and beard trim")
    result = await processor.create_payment(request)

    [order] = account(sim).orders.values()
    [capture] = account(sim).captures.values()
    assert result.processor_payment_id == capture["id"]  # the capture: what refunds use
    assert result.raw["order_id"] == order["id"]
    assert (result.status, result.amount, result.currency) == ("completed", Decimal("10.00"), "USD")
    assert result.reference == "payment-42" and result.created_at.tzinfo is not None
    assert order["status"] == "COMPLETED" and order["intent"] == "CAPTURE"
    assert order["payment_source"] == {"token": {"id": "paypal-approved", "type": "BILLING_AGREEMENT"}}
    unit = order["purchase_units"][0]
    assert unit["reference_id"] == unit["custom_id"] == "payment-42"
    assert unit["amount"] == {"currency_code": "USD", "value": "10.00"}
    assert unit["description"] == "Fade and beard trim"
    assert capture["custom_id"] == "payment-42"
    assert list(account(sim).idempotency) == ["hp-pay-42:create", "hp-pay-42:capture"]

    fetched = await processor.retrieve_payment(result.processor_payment_id)
    assert (fetched.processor_payment_id, fetched.status, fetched.amount, fetched.reference) == (
        result.processor_payment_id, "completed", Decimal("10.00"), "payment-42")
    assert fetched.raw["order_id"] == order["id"]


async def test_platform_fee_and_destination_become_partner_fields(sim, processor):
    await processor.create_payment(payment(amount="50.00", platform_fee=Decimal("7.50"),
                                           destination="BARBERMERCHANT1"))
    [order] = account(sim).orders.values()
    unit = order["purchase_units"][0]
    assert unit["payee"] == {"merchant_id": "BARBERMERCHANT1"}
    assert unit["payment_instruction"] == {"platform_fees": [{"amount": {"currency_code": "USD",
                                                                         "value": "7.50"}}]}


async def test_the_same_idempotency_key_twice_captures_once(sim, processor):
    request = payment()
    first = await processor.create_payment(request)
    again = await processor.create_payment(request)
    assert again.processor_payment_id == first.processor_payment_id
    assert again.raw["order_id"] == first.raw["order_id"]
    assert len(account(sim).orders) == 1 and len(account(sim).captures) == 1

    other = await processor.create_payment(payment())  # another key is another payment
    assert other.processor_payment_id != first.processor_payment_id


async def test_a_key_reused_for_another_payment_is_an_unknown_outcome_not_a_refusal(sim, processor):
    """The first request under the key reached PayPal and may have been done: read as a refusal, its
    attempt would be settled failed beside a payment that succeeded (tests/integration/test_reused_keys.py)."""
    await processor.create_payment(payment(key="hp-pay-reused", amount="10.00"))
    with pytest.raises(OutcomeUnknown) as exc:
        await processor.create_payment(payment(key="hp-pay-reused", amount="12.00"))
    assert exc.value.code == "PAYPAL_REQUEST_ID_PREVIOUSLY_USED"
    assert len(account(sim).orders) == 1


async def test_simulator_speaks_paypals_wire_details(sim, processor, control):
    """Replays answer 200, writes answer minimal unless asked, the controls validate, and a reset
    forgets tokens (the adapter gets a new one by itself)."""
    basic = "Basic " + base64.b64encode(b"raw-client:raw-secret").decode()
    async with control.post("/v1/oauth2/token", data={"grant_type": "client_credentials"},
                            headers={"Authorization": basic}) as resp:
        token = (await resp.json())["access_token"]
    auth = {"Authorization": f"Bearer {token}", "PayPal-Request-Id": "raw-1"}
    order = {"intent": "CAPTURE", "purchase_units": [{"amount": {"currency_code": "EUR", "value": "5"}}]}
    statuses, bodies = [], []
    for _ in range(2):
        async with control.post("/v2/checkout/orders", json=order, headers=auth) as resp:
            statuses.append(resp.status)
            bodies.append(await resp.json())
    assert statuses == [201, 200] and bodies[0] == bodies[1]
    assert set(bodies[0]) == {"id", "status", "links"} and bodies[0]["status"] == "CREATED"
    async with control.post(f"/v2/checkout/orders/{bodies[0]['id']}/capture", json={},
                            headers={**auth, "PayPal-Request-Id": "raw-2"}) as resp:
        error = await resp.json()
    assert resp.status == 422 and error["details"][0]["issue"] == "ORDER_NOT_APPROVED"
    async with control.get("/v2/checkout/orders/NOPE", headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 401 and (await resp.json())["error"] == "invalid_token"
    for bad in ({"expires_in": -1}, {"revoke": "yes"}, {"typo": 1}):
        async with control.post("/_sim/oauth", json=bad) as resp:
            assert resp.status == 400

    paid = await processor.create_payment(payment(reference="dumped"))
    async with control.get("/_sim/captures", params={"account": CLIENT_ID}) as resp:
        [dumped] = (await resp.json())["data"]
    assert dumped["id"] == paid.processor_payment_id and dumped["order_id"] == paid.raw["order_id"]
    assert dumped["custom_id"] == "dumped" and dumped["account"] == CLIENT_ID

    await sim_post(control, "/_sim/reset", {})
    assert sim.state.accounts == {} and sim.state.tokens == {}
    with pytest.raises(ProcessorRequestError):  # its token is forgotten, and so is the capture
        await processor.retrieve_payment(paid.processor_payment_id)
    assert account(sim).tokens_issued == 1  # the adapter fetched a new token by itself


async def test_instrument_declined_is_payment_declined_with_the_order_id(sim, processor):
    request = payment("paypal-declined")
    with pytest.raises(PaymentDeclined) as exc:
        await processor.create_payment(request)
    [order] = account(sim).orders.values()
    assert exc.value.code == "INSTRUMENT_DECLINED" and exc.value.processor_payment_id == order["id"]
    assert order["status"] == "APPROVED" and not account(sim).captures

    with pytest.raises(PaymentDeclined) as again:  # the same key: the same (replayed) decline
        await processor.create_payment(request)
    assert again.value.processor_payment_id == order["id"] and len(account(sim).orders) == 1


async def test_a_declined_capture_is_payment_declined_with_the_capture_id(sim, processor):
    with pytest.raises(PaymentDeclined) as exc:
        await processor.create_payment(payment("paypal-capture-declined", reference="declined-1"))
    [capture] = account(sim).captures.values()
    assert exc.value.processor_payment_id == capture["id"]
    assert exc.value.code == "DECLINED_BY_RISK_FRAUD_FILTERS"
    fetched = await processor.retrieve_payment(capture["id"])
    assert fetched.status == "failed" and fetched.failure_code == "DECLINED_BY_RISK_FRAUD_FILTERS"
    with pytest.raises(ProcessorRequestError) as refused:
        await processor.refund(refund_of(capture["id"], "1.00"))
    assert refused.value.code == "REFUND_NOT_ALLOWED"


async def test_a_pending_capture_is_pending_until_paypal_settles_it(sim, processor, control):
    result = await processor.create_payment(payment("paypal-pending"))
    assert result.status == "pending" and result.failure_code is None
    with pytest.raises(ProcessorRequestError) as exc:
        await processor.refund(refund_of(result.processor_payment_id, "1.00"))
    assert exc.value.code == "PENDING_CAPTURE"

    await sim_post(control, f"/_sim/captures/{result.processor_payment_id}/status", {"status": "COMPLETED"})
    assert (await processor.retrieve_payment(result.processor_payment_id)).status == "completed"


async def test_unknown_capture_is_a_request_error_and_a_bad_id_never_reaches_the_path(processor):
    with pytest.raises(ProcessorRequestError) as exc:
        await processor.retrieve_payment("NOSUCHCAPTURE1")
    assert exc.value.code == "INVALID_RESOURCE_ID"
    with pytest.raises(ProcessorRequestError) as bad:
        await processor.retrieve_payment("../../v1/oauth2/token")
    assert bad.value.code == "invalid_id"


# --- money --------------------------------------------------------------------------------------


async def test_jpy_and_huf_amounts_are_whole_on_the_wire_and_exact_back(sim, processor):
    yen = await processor.create_payment(payment(amount="1500", currency="JPY"))
    assert (yen.amount, yen.currency) == (Decimal("1500"), "JPY")
    assert account(sim).captures[yen.processor_payment_id]["amount"] == {"currency_code": "JPY",
                                                                        "value": "1500"}
    part = await processor.refund(refund_of(yen.processor_payment_id, "500", "JPY"))
    rest = await processor.refund(refund_of(yen.processor_payment_id, "1000", "JPY"))
    assert (part.amount, rest.amount) == (Decimal("500"), Decimal("1000"))
    assert account(sim).captures[yen.processor_payment_id]["status"] == "REFUNDED"

    forint = await processor.create_payment(payment(amount="1000.00", currency="HUF"))
    assert account(sim).captures[forint.processor_payment_id]["amount"]["value"] == "1000"
    assert forint.amount == Decimal("1000.00") and str(forint.amount) == "1000.00"

    orders = len(account(sim).orders)
    for amount, currency in (("10.5", "JPY"), ("1000.50", "HUF"), ("10.001", "USD")):
        with pytest.raises(ProcessorRequestError) as exc:  # refused before anything is sent
            await processor.create_payment(payment(amount=amount, currency=currency))
        assert exc.value.code == "DECIMAL_PRECISION"
    assert len(account(sim).orders) == orders


def test_money_conversion_is_exact_and_refuses_floats():
    assert tf.to_money(Decimal("10.5"), "usd") == {"currency_code": "USD", "value": "10.50"}
    assert tf.to_money(Decimal("1500"), "JPY") == {"currency_code": "JPY", "value": "1500"}
    assert tf.to_money(Decimal("0.10"), "EUR")["value"] == "0.10"
    assert tf.from_money({"currency_code": "USD", "value": "0.3"}) == (Decimal("0.30"), "USD")
    assert tf.from_money({"currency_code": "JPY", "value": "1500"}) == (Decimal("1500"), "JPY")
    assert tf.from_money({"currency_code": "USD", "value": "-7.00"})[0] == Decimal("-7.00")
    with pytest.raises(ProcessorRequestError):
        tf.to_money(10.5, "USD")  # type: ignore[arg-type]  # a float has already lost the cents
    for bad in ({"currency_code": "USD", "value": 10.5}, {"currency_code": "USD", "value": "1e3"},
                {"currency_code": "JPY", "value": "10.5"}, {"currency_code": "XXX", "value": "1"},
                {"value": "1.00"}):
        with pytest.raises(ProcessorRequestError):
            tf.from_money(bad)


# --- refunds ------------------------------------------------------------------------------------


async def test_partial_then_full_refund_and_their_limits(sim, processor):
    paid = await processor.create_payment(payment(amount="10.00"))
    capture_id = paid.processor_payment_id
    part = await processor.refund(refund_of(capture_id, "3.00", reference="refund-a"))
    assert (part.status, part.amount, part.reference) == ("succeeded", Decimal("3.00"), "refund-a")
    assert part.processor_payment_id == capture_id
    assert account(sim).captures[capture_id]["status"] == "PARTIALLY_REFUNDED"

    with pytest.raises(ProcessorRequestError) as too_much:
        await processor.refund(refund_of(capture_id, "7.01"))
    assert too_much.value.code == "REFUND_AMOUNT_EXCEEDED"
    rest = await processor.refund(refund_of(capture_id, "7.00", reference="refund-b"))
    assert account(sim).captures[capture_id]["status"] == "REFUNDED"
    with pytest.raises(ProcessorRequestError) as done:
        await processor.refund(refund_of(capture_id, "0.01"))
    assert done.value.code == "CAPTURE_FULLY_REFUNDED"

    fetched = await processor.retrieve_refund(part.processor_refund_id)
    assert (fetched.processor_payment_id, fetched.amount, fetched.reference) == (
        capture_id, Decimal("3.00"), "refund-a")
    listed = await processor.list_refunds(capture_id)
    assert {(r.processor_refund_id, r.reference) for r in listed} == {
        (part.processor_refund_id, "refund-a"), (rest.processor_refund_id, "refund-b")}
    found = await find_refund(processor, refund_of(capture_id, "7.00", reference="refund-b"))
    assert found is not None and found.processor_refund_id == rest.processor_refund_id
    assert found.amount == Decimal("7.00") and found.status == "succeeded"
    assert await find_refund(processor, refund_of(capture_id, "7.00", reference="refund-zzz")) is None
    assert await find_refund(processor, refund_of(capture_id, "3.00", reference="refund-b")) is None
    # The capture still was a payment that happened.
    assert (await processor.retrieve_payment(capture_id)).status == "completed"


async def test_the_same_refund_key_twice_refunds_once(sim, processor):
    paid = await processor.create_payment(payment())
    request = refund_of(paid.processor_payment_id, "4.00")
    first = await processor.refund(request)
    again = await processor.refund(request)
    assert again.processor_refund_id == first.processor_refund_id and len(account(sim).refunds) == 1


async def test_list_refunds_keeps_to_its_capture(processor):
    one = await processor.create_payment(payment())
    two = await processor.create_payment(payment())
    await processor.refund(refund_of(one.processor_payment_id, "1.00", reference="r-one"))
    await processor.refund(refund_of(two.processor_payment_id, "2.00", reference="r-two"))
    assert [r.reference for r in await processor.list_refunds(one.processor_payment_id)] == ["r-one"]
    assert [r.reference for r in await processor.list_refunds(two.processor_payment_id)] == ["r-two"]
    assert await find_refund(processor, refund_of(one.processor_payment_id, "2.00", reference="r-two")) is None


async def test_pending_refunds_settle_or_fail_through_the_control(sim, processor, control):
    paid = await processor.create_payment(payment("paypal-pending-refund", amount="20.00"))
    pending = await processor.refund(refund_of(paid.processor_payment_id, "20.00", reference="slow"))
    assert pending.status == "pending"
    with pytest.raises(ProcessorRequestError) as exc:  # pending refunds count: nothing left
        await processor.refund(refund_of(paid.processor_payment_id, "1.00"))
    assert exc.value.code == "CAPTURE_FULLY_REFUNDED"

    await sim_post(control, f"/_sim/refunds/{pending.processor_refund_id}/status", {"status": "FAILED"})
    failed = await processor.retrieve_refund(pending.processor_refund_id)
    assert failed.status == "failed" and failed.failure_reason == "ECHECK"

    again = await processor.refund(refund_of(paid.processor_payment_id, "20.00", reference="again"))
    assert again.status == "pending"  # the failed one gave the amount back
    await sim_post(control, f"/_sim/refunds/{again.processor_refund_id}/status", {"status": "COMPLETED"})
    assert (await processor.retrieve_refund(again.processor_refund_id)).status == "succeeded"
    statuses = {r.reference: r.status for r in await processor.list_refunds(paid.processor_payment_id)}
    assert statuses == {"slow": "failed", "again": "succeeded"}
    async with control.post(f"/_sim/refunds/{again.processor_refund_id}/status",
                            json={"status": "FAILED"}) as resp:
        assert resp.status == 409  # only pending refunds move


# --- transaction search -------------------------------------------------------------------------


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_list_payments_is_the_half_open_window_of_payments(sim, processor):
    made = [await processor.create_payment(payment(reference=f"window-{i}")) for i in range(4)]
    declined = None
    with pytest.raises(PaymentDeclined) as exc:
        await processor.create_payment(payment("paypal-capture-declined", reference="window-declined"))
    declined = exc.value.processor_payment_id
    await processor.refund(refund_of(made[1].processor_payment_id, "2.00"))  # a T1107 row, not a payment
    captures = account(sim).captures
    for i, result in enumerate(made):  # hours 0, 1, 2, 3 after BASE
        captures[result.processor_payment_id]["create_time"] = _stamp(BASE + timedelta(hours=i))
    captures[declined]["create_time"] = _stamp(BASE + timedelta(hours=1, minutes=30))
    for refund in account(sim).refunds.values():
        refund["create_time"] = _stamp(BASE + timedelta(hours=1, minutes=10))

    window = await processor.list_payments(BASE + timedelta(hours=1), BASE + timedelta(hours=3))
    assert [p.reference for p in window] == ["window-1", "window-declined", "window-2"]
    assert [p.status for p in window] == ["completed", "failed", "completed"]
    assert window[0].processor_payment_id == made[1].processor_payment_id
    assert window[0].amount == Decimal("10.00") and window[0].created_at == BASE + timedelta(hours=1)

    everything = await processor.list_payments(BASE - timedelta(days=45), BASE + timedelta(days=1))
    assert len(everything) == 5  # a 46-day window, searched as two of at most 31 days
    found = await find_payment(processor, "window-3", since=BASE, until=BASE + timedelta(days=1))
    assert found is not None and found.processor_payment_id == made[3].processor_payment_id
    assert await find_payment(processor, "window-3", since=BASE, until=BASE + timedelta(hours=3)) is None
    naive = await processor.list_payments(datetime(2026, 1, 10, 2), datetime(2026, 1, 10, 3))
    assert [p.reference for p in naive] == ["window-2"]  # naive datetimes are UTC


async def test_list_payments_walks_every_page(sim, processor, monkeypatch):
    monkeypatch.setattr(adapter, "SEARCH_PAGE_SIZE", 2)
    made = [await processor.create_payment(payment(reference=f"paged-{i}")) for i in range(5)]
    now = datetime.now(UTC)
    listed = await processor.list_payments(now - timedelta(hours=1), now + timedelta(hours=1))
    assert sorted(p.processor_payment_id for p in listed) == sorted(m.processor_payment_id for m in made)


async def test_transaction_search_refuses_a_window_over_31_days(processor):
    with pytest.raises(ProcessorRequestError) as exc:
        await processor._call("GET", "/v1/reporting/transactions", params={
            "start_date": _stamp(BASE), "end_date": _stamp(BASE + timedelta(days=32))})
    assert exc.value.code == "INVALID_DATE_RANGE"


# --- webhooks -----------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A real local HTTP server that records what PayPal POSTs to it."""

    url: str = ""
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

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
    app.router.add_post("/api/v1/webhooks/paypal/7", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1/webhooks/paypal/7"
    yield rec
    await runner.cleanup()


async def test_register_webhook_answers_its_id_as_the_secret_and_is_idempotent_by_url(sim, processor,
                                                                                        receiver):
    registration = await processor.register_webhook(receiver.url)
    [hook] = account(sim).webhooks.values()
    assert registration.endpoint_id == hook["id"] and registration.secret == Secret(hook["id"])
    assert {t["name"] for t in hook["event_types"]} == set(tf.WEBHOOK_EVENT_TYPES)
    again = await processor.register_webhook(receiver.url)  # PayPal: WEBHOOK_URL_ALREADY_EXISTS
    assert again.endpoint_id == registration.endpoint_id and len(account(sim).webhooks) == 1


async def test_a_signed_delivery_verifies_and_parses(sim, processor, receiver):
    registration = await processor.register_webhook(receiver.url)
    paid = await processor.create_payment(payment(reference="hooked-1"))
    await receiver.wait_for(1)
    body, headers = receiver.received[0]
    assert {h.lower() for h in headers} >= set(adapter.WEBHOOK_HEADERS)
    assert headers["PAYPAL-AUTH-ALGO"] == "SHA256withRSA"

    await processor.verify_webhook(body, headers, secret=registration.secret, url=receiver.url)
    event = processor.parse_webhook(body)
    assert event.event_type == "PAYMENT.CAPTURE.COMPLETED" and event.event_id.startswith("WH-")
    assert event.understood and event.refund_id is None
    assert event.payment_id == paid.processor_payment_id  # a notice: what it is now comes from the API
    fetched = await processor.retrieve_payment(event.payment_id)
    assert (fetched.status, fetched.reference) == ("completed", "hooked-1")

    # The certificate the headers name is served by the simulator.
    async with aiohttp.ClientSession() as session, session.get(headers["PAYPAL-CERT-URL"]) as resp:
        assert resp.status == 200 and (await resp.read()).startswith(b"-----BEGIN CERTIFICATE-----")

    refund = await processor.refund(refund_of(paid.processor_payment_id, "4.00", reference="hooked-r"))
    await receiver.wait_for(2)
    body, headers = receiver.received[1]
    await processor.verify_webhook(body, headers, secret=registration.secret, url=receiver.url)
    event = processor.parse_webhook(body)
    assert event.event_type == "PAYMENT.CAPTURE.REFUNDED" and event.payment_id is None
    assert event.refund_id == refund.processor_refund_id
    fetched = await processor.retrieve_refund(event.refund_id)
    assert fetched.processor_payment_id == paid.processor_payment_id
    assert (fetched.status, fetched.amount, fetched.reference) == ("succeeded", Decimal("4.00"), "hooked-r")


async def test_declined_and_pending_captures_are_delivered_too(sim, processor, receiver, control):
    registration = await processor.register_webhook(receiver.url)
    with pytest.raises(PaymentDeclined):
        await processor.create_payment(payment("paypal-capture-declined"))
    pending = await processor.create_payment(payment("paypal-pending"))
    await sim_post(control, f"/_sim/captures/{pending.processor_payment_id}/status", {"status": "COMPLETED"})
    await receiver.wait_for(3)
    events = []
    for body, headers in receiver.received:
        await processor.verify_webhook(body, headers, secret=registration.secret, url=receiver.url)
        events.append(processor.parse_webhook(body))
    assert [e.event_type for e in events] == [
        "PAYMENT.CAPTURE.DENIED", "PAYMENT.CAPTURE.PENDING", "PAYMENT.CAPTURE.COMPLETED"]
    # Each names its capture; the capture as it is now is what the API says.
    assert [(await processor.retrieve_payment(e.payment_id)).status for e in events] == [
        "failed", "completed", "completed"]


def _mutations(body: bytes, headers: dict[str, str], webhook_id: str):
    """(what, body, headers, secret) that must all fail verification."""
    named = {k.lower(): k for k in headers}
    sig_key, time_key, cert_key = (named["paypal-transmission-sig"], named["paypal-transmission-time"],
                                   named["paypal-cert-url"])
    filler = "BBBBBBB=" if headers[sig_key].endswith("AAAAAAA=") else "AAAAAAA="
    forged_sig = headers[sig_key][:-8] + filler  # still base64, no longer the signature
    yield "tampered body", body.replace(b'"10.00"', b'"1.00"'), headers, webhook_id
    yield "re-encoded body", json.dumps(json.loads(body), indent=1).encode(), headers, webhook_id
    yield "forged signature", body, {**headers, sig_key: forged_sig}, webhook_id
    yield "signature not base64", body, {**headers, sig_key: "not*base64"}, webhook_id
    yield "other transmission time", body, {**headers, time_key: "2026-01-01T00:00:00Z"}, webhook_id
    yield "foreign certificate", body, {**headers, cert_key: "https://evil.example/cert.pem"}, webhook_id
    yield "wrong webhook id", body, headers, "WRONGWEBHOOKID1"
    yield "malformed webhook id", body, headers, "not-a-webhook-id!"
    for name in adapter.WEBHOOK_HEADERS:
        yield f"missing {name}", body, {k: v for k, v in headers.items() if k.lower() != name}, webhook_id
    yield "not JSON", b"not json", headers, webhook_id


async def test_forged_or_incomplete_deliveries_are_invalid_signatures(sim, processor, receiver):
    registration = await processor.register_webhook(receiver.url)
    await processor.create_payment(payment())
    await receiver.wait_for(1)
    body, headers = receiver.received[0]
    await processor.verify_webhook(body, headers, secret=registration.secret, url=receiver.url)  # genuine
    assert b'"10.00"' in body

    for what, forged_body, forged_headers, webhook_id in _mutations(body, headers, registration.endpoint_id):
        with pytest.raises(InvalidSignature):
            await processor.verify_webhook(forged_body, forged_headers, secret=Secret(webhook_id),
                                           url=receiver.url)
            pytest.fail(f"{what} was accepted")


async def test_another_webhooks_id_does_not_verify(sim, processor, make_processor, receiver):
    registration = await processor.register_webhook(receiver.url)
    other = await make_processor("AZbarber-two-client-id").register_webhook(receiver.url + "?other")
    await processor.create_payment(payment())
    await receiver.wait_for(1)
    body, headers = receiver.received[0]
    with pytest.raises(InvalidSignature):
        await processor.verify_webhook(body, headers, secret=other.secret, url=receiver.url)
    await processor.verify_webhook(body, headers, secret=registration.secret, url=receiver.url)


async def test_duplicate_deliveries_are_each_signed_afresh(sim, processor, receiver, control):
    registration = await processor.register_webhook(receiver.url)
    await sim_post(control, "/_sim/webhooks/duplicate", {"enabled": True})
    await processor.create_payment(payment())
    await receiver.wait_for(2)
    (first, first_headers), (second, second_headers) = receiver.received
    assert first == second
    assert first_headers["PAYPAL-TRANSMISSION-ID"] != second_headers["PAYPAL-TRANSMISSION-ID"]
    for body, headers in receiver.received:
        await processor.verify_webhook(body, headers, secret=registration.secret, url=receiver.url)
    assert len({processor.parse_webhook(body).event_id for body, _ in receiver.received}) == 1


def _event(event_type: str, resource_type: str | None, resource: dict) -> bytes:
    event = {"id": "WH-1", "event_type": event_type, "create_time": "2026-01-10T10:00:00Z",
             "resource": resource}
    if resource_type:
        event["resource_type"] = resource_type
    return json.dumps(event).encode()


_REFUND = {"id": "REFUND1", "status": "COMPLETED", "amount": {"currency_code": "USD", "value": "5.00"},
           "custom_id": "r-1", "links": [{"rel": "up", "href": "https://x/v2/payments/captures/CAP1"}]}
_CAPTURE = {"id": "CAP1", "status": "COMPLETED", "amount": {"currency_code": "USD", "value": "5.00"},
            "custom_id": "p-1", "create_time": "2026-01-10T09:00:00Z"}


def test_parse_webhook_maps_capture_and_refund_events_and_ignores_others(processor):
    reversed_ = processor.parse_webhook(_event("PAYMENT.CAPTURE.REVERSED", "refund", _REFUND))
    assert (reversed_.refund_id, reversed_.payment_id) == (_REFUND["id"], None)
    assert reversed_.occurred_at == datetime(2026, 1, 10, 10, tzinfo=UTC)
    on_capture = processor.parse_webhook(_event("PAYMENT.CAPTURE.REVERSED", "capture", _CAPTURE))
    assert (on_capture.payment_id, on_capture.refunds_of_payment) == ("CAP1", True)
    completed = processor.parse_webhook(_event("PAYMENT.CAPTURE.COMPLETED", "capture", _CAPTURE))
    assert (completed.payment_id, completed.refunds_of_payment) == ("CAP1", False)
    other = processor.parse_webhook(_event("CHECKOUT.ORDER.APPROVED", "checkout-order", {"id": "O1"}))
    assert other.understood is False and other.event_type == "CHECKOUT.ORDER.APPROVED"
    odd = processor.parse_webhook(_event("PAYMENT.CAPTURE.COMPLETED", "dispute", {"id": "D1"}))
    assert odd.understood is False
    with pytest.raises(ProcessorRequestError):  # a capture it does not name
        processor.parse_webhook(_event("PAYMENT.CAPTURE.COMPLETED", "capture", {"status": "COMPLETED"}))
    for broken in (b"{", b"[]", b'{"id": "WH-1"}'):
        with pytest.raises(ProcessorRequestError):
            processor.parse_webhook(broken)


def test_raw_member_finds_the_exact_text_of_a_member():
    text = '{"a": 1, "webhook_event" :  {"x": [1, {"y": "}"}]} , "z": "w"}'
    assert raw_member(text, "webhook_event") == '{"x": [1, {"y": "}"}]}'
    assert raw_member('{"webhook_event": 1, "webhook_event": "last"}', "webhook_event") == '"last"'
    assert raw_member("[]", "webhook_event") is None and raw_member("{}", "webhook_event") is None


# --- faults and error mapping -------------------------------------------------------------------


async def test_timeout_is_processor_timeout_and_the_retry_settles_it(sim, processor, make_processor, control):
    impatient = make_processor(timeout=0.5)
    await impatient.check_credentials()  # the token first, so the fault hits the capture
    await sim_post(control, "/_sim/faults", {"mode": "timeout", "delay_ms": 5_000, "count": 1,
                                             "path_prefix": "/v2/checkout/orders/"})
    request = payment()
    with pytest.raises(ProcessorTimeout) as exc:
        await impatient.create_payment(request)
    assert isinstance(exc.value, OutcomeUnknown)
    [charged] = account(sim).captures.values()  # the capture happened anyway

    retried = await processor.create_payment(request)
    assert retried.processor_payment_id == charged["id"] and len(account(sim).captures) == 1


async def test_disconnect_after_sending_is_outcome_unknown_and_the_retry_charges_once(sim, processor,
                                                                                     control):
    await processor.check_credentials()
    await sim_post(control, "/_sim/faults", {"mode": "disconnect", "count": 1,
                                             "path_prefix": "/v2/checkout/orders/"})
    request = payment()
    with pytest.raises(OutcomeUnknown) as exc:
        await processor.create_payment(request)
    assert not isinstance(exc.value, ProcessorTimeout)
    [charged] = account(sim).captures.values()
    retried = await processor.create_payment(request)
    assert retried.processor_payment_id == charged["id"] and len(account(sim).captures) == 1


async def test_server_error_is_outcome_unknown_and_nothing_was_recorded(sim, processor, control):
    await processor.check_credentials()
    await sim_post(control, "/_sim/faults", {"mode": "error", "status": 503, "count": 1,
                                             "path_prefix": "/v2/checkout/orders"})
    request = payment()
    with pytest.raises(OutcomeUnknown) as exc:
        await processor.create_payment(request)
    assert exc.value.code == "SERVICE_UNAVAILABLE" and not account(sim).orders
    assert (await processor.create_payment(request)).status == "completed"
    assert len(account(sim).orders) == 1


async def test_a_failing_token_endpoint_is_outcome_unknown(sim, processor, control):
    await sim_post(control, "/_sim/faults", {"mode": "error", "count": 1, "path_prefix": "/v1/oauth2"})
    with pytest.raises(OutcomeUnknown):
        await processor.check_credentials()
    await processor.check_credentials()


@pytest.mark.parametrize("api_base", ["closed port", "http://paypal-sim.invalid"])
async def test_nothing_listening_or_no_such_host_is_processor_unavailable(make_processor, api_base):
    base = f"http://127.0.0.1:{free_port()}" if api_base == "closed port" else api_base
    processor = make_processor(api_base=base, timeout=3.0)
    with pytest.raises(ProcessorUnavailable):
        await processor.check_credentials()
    with pytest.raises(ProcessorUnavailable):
        await processor.create_payment(payment())


@pytest.fixture
async def stub():
    """A server that hands out tokens and answers every other request with `answer`."""
    state = {"answer": (200, b"{}")}

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "A21AAstubtoken", "expires_in": 32400,
                                  "app_id": "APP-STUB"})

    async def anything(request: web.Request) -> web.Response:
        status, body = state["answer"]
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/oauth2/token", token)
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


def _error(name: str, issue: str | None = None) -> bytes:
    body = {"name": name, "message": f"{name} happened", "debug_id": "abc123"}
    if issue:
        body["details"] = [{"issue": issue, "description": f"{issue} described"}]
    return json.dumps(body).encode()


@pytest.mark.parametrize("status, body, expected, code", [
    (429, _error("RATE_LIMIT_REACHED"), ProcessorUnavailable, "RATE_LIMIT_REACHED"),
    (403, _error("NOT_AUTHORIZED", "PERMISSION_DENIED"), InvalidCredentials, "PERMISSION_DENIED"),
    (401, b'{"error": "invalid_client", "error_description": "Client Authentication failed"}',
     InvalidCredentials, "invalid_client"),
    (400, _error("INVALID_REQUEST", "MISSING_REQUIRED_PARAMETER"), ProcessorRequestError,
     "MISSING_REQUIRED_PARAMETER"),
    (404, _error("RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID"), NotFound, "INVALID_RESOURCE_ID"),
    (422, _error("UNPROCESSABLE_ENTITY", "INSTRUMENT_DECLINED"), ProcessorRequestError,
     "INSTRUMENT_DECLINED"),
    (422, _error("UNPROCESSABLE_ENTITY", "PREVIOUS_REQUEST_IN_PROGRESS"), OutcomeUnknown,
     "PREVIOUS_REQUEST_IN_PROGRESS"),
    (500, _error("INTERNAL_SERVER_ERROR"), OutcomeUnknown, "INTERNAL_SERVER_ERROR"),
    (502, b"<html>bad gateway</html>", OutcomeUnknown, None),
    (200, b"<html>not json</html>", OutcomeUnknown, None),
])
async def test_http_answers_map_to_the_interfaces_errors(stub, make_processor, status, body, expected, code):
    stub["answer"] = (status, body)
    processor = make_processor(api_base=stub["url"])
    with pytest.raises(ProcessorError) as exc:
        await processor.retrieve_payment("CAPTURE1")  # outside create_payment a 422 is no decline
    assert type(exc.value) is expected and exc.value.code == code


async def test_a_capture_in_progress_elsewhere_is_outcome_unknown(stub, make_processor):
    stub["answer"] = (422, _error("UNPROCESSABLE_ENTITY", "PREVIOUS_REQUEST_IN_PROGRESS"))
    with pytest.raises(OutcomeUnknown):
        await make_processor(api_base=stub["url"]).create_payment(payment())


# --- status tables ------------------------------------------------------------------------------

# PayPal's documented statuses, written out here independently of the adapter's tables.
DOCUMENTED = {
    "order": ({"CREATED", "SAVED", "APPROVED", "VOIDED", "COMPLETED", "PAYER_ACTION_REQUIRED"},
              tf.ORDER_STATUS, tf.order_status, PaymentStatus),
    "capture": ({"COMPLETED", "DECLINED", "PARTIALLY_REFUNDED", "PENDING", "REFUNDED", "FAILED"},
                tf.CAPTURE_STATUS, tf.capture_status, PaymentStatus),
    "refund": ({"CANCELLED", "FAILED", "PENDING", "COMPLETED"}, tf.REFUND_STATUS, tf.refund_status,
               RefundStatus),
    "transaction": ({"S", "P", "V", "F", "D"}, tf.TRANSACTION_STATUS, tf.transaction_status, PaymentStatus),
}
EXPECTED = {
    ("order", "COMPLETED"): "completed", ("order", "VOIDED"): "canceled", ("order", "APPROVED"): "pending",
    ("capture", "COMPLETED"): "completed", ("capture", "REFUNDED"): "completed",
    ("capture", "PARTIALLY_REFUNDED"): "completed", ("capture", "PENDING"): "pending",
    ("capture", "DECLINED"): "failed", ("capture", "FAILED"): "failed",
    ("refund", "COMPLETED"): "succeeded", ("refund", "PENDING"): "pending",
    ("refund", "FAILED"): "failed", ("refund", "CANCELLED"): "failed",
    ("transaction", "S"): "completed", ("transaction", "P"): "pending", ("transaction", "D"): "failed",
}


@pytest.mark.parametrize("kind", sorted(DOCUMENTED))
def test_status_tables_cover_every_documented_status_and_refuse_unknown_ones(kind):
    documented, table, mapper, literal = DOCUMENTED[kind]
    assert set(table) == documented
    for status in documented:
        assert mapper(status) in get_args(literal)
        if (kind, status) in EXPECTED:
            assert mapper(status) == EXPECTED[(kind, status)]
    for unknown in ("UNKNOWN", "completed", "", None):
        with pytest.raises(ProcessorRequestError):
            mapper(unknown)


# --- nothing secret in any text -----------------------------------------------------------------


async def test_no_credential_or_token_appears_in_any_repr_str_or_error(sim, make_processor, control, stub):
    texts: list[str] = []
    tokens = {"A21AAstubtoken"}

    async def collect(call) -> None:
        try:
            await call
        except ProcessorError as exc:
            texts.extend([str(exc), repr(exc), exc.message, json.dumps(exc.raw, default=str)])

    processor = make_processor()
    paid = await processor.create_payment(payment())
    texts += [repr(processor), str(processor), repr(vars(processor)), repr(paid), json.dumps(paid.raw)]
    texts += [repr(PayPalCredentials(CLIENT_ID, Secret(CLIENT_SECRET)))]
    await collect(make_processor(secret="invalid-" + CLIENT_SECRET).check_credentials())
    await collect(processor.create_payment(payment("paypal-declined")))
    await sim_post(control, "/_sim/faults", {"mode": "error", "count": 1})
    await collect(processor.retrieve_payment(paid.processor_payment_id))
    await sim_post(control, "/_sim/faults", {"mode": "disconnect", "count": 1})
    await collect(processor.retrieve_payment(paid.processor_payment_id))
    tokens.update(sim.state.tokens)  # revoking forgets them
    await sim_post(control, "/_sim/oauth", {"revoke": True, "expires_in": 0})
    await collect(processor.retrieve_payment(paid.processor_payment_id))
    tokens.update(sim.state.tokens)
    await collect(make_processor(api_base=f"http://127.0.0.1:{free_port()}").check_credentials())
    stub["answer"] = (401, b'{"error": "invalid_token"}')
    stub_processor = make_processor(api_base=stub["url"])
    await collect(stub_processor.retrieve_payment("CAPTURE1"))
    texts += [repr(stub_processor), repr(vars(stub_processor))]

    assert len(texts) > 20 and len(tokens) == 3  # two from the simulator, one from the stub
    for text in texts:
        assert CLIENT_SECRET not in text and CLIENT_ID not in text, text
        for token in tokens:
            assert token not in text, text


# --- the command line ---------------------------------------------------------------------------


def test_the_simulator_runs_as_a_module_and_stops_on_sigint():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.paypal_sim", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "did not start"
                time.sleep(0.05)
        request = urllib.request.Request(base + "/v1/oauth2/token", data=b"grant_type=client_credentials",
                                         headers={"Authorization": "Basic Y2xpZW50OnNlY3JldA==",
                                                  "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer = json.load(resp)
        assert answer["token_type"] == "Bearer" and answer["expires_in"] == 32_400
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert f"paypal_sim listening on {base}" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
