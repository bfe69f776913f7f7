"""The Stripe simulator driven by the official `stripe` SDK: proves wire compatibility
(form encoding, errors, idempotency, lists, refunds that settle later, signed webhooks) and the
fault and webhook switches. The processor-neutral parts are in test_sim_common.py."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest
import stripe
from aiohttp import web

from sandbox.stripe_sim import parse_stripe_form, start_stripe_sim
from tests.integration.router_support import sim_post

KEY = "sk_test_barber_one"


@pytest.fixture
async def sim():
    running = await start_stripe_sim()
    yield running
    await running.close()


@pytest.fixture
async def make_client(sim):
    """Builds SDK clients against the simulator and closes their HTTP sessions afterwards."""
    http_clients: list[stripe.AIOHTTPClient] = []

    def build(key: str = KEY, timeout: float = 10.0, retries: int = 0) -> stripe.StripeClient:
        http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout))
        http_clients.append(http)
        return stripe.StripeClient(key, base_addresses={"api": sim.url}, http_client=http,
                                   max_network_retries=retries)

    yield build
    for http in http_clients:
        await http.close_async()


@pytest.fixture
def client(make_client) -> stripe.StripeClient:
    return make_client()


async def sim_payment_intents(control: aiohttp.ClientSession) -> list[dict]:
    async with control.get("/_sim/payment_intents") as resp:
        return (await resp.json())["data"]


def visa_payment(**extra) -> dict:
    return {"amount": 5000, "currency": "usd", "payment_method": "pm_card_visa",
            "confirm": True, **extra}


# --- payments --------------------------------------------------------------------------------


async def test_destination_charge_succeeds_and_records_fee_and_destination(client, control):
    pi = await client.v1.payment_intents.create_async(params=visa_payment(
        currency="USD", application_fee_amount=1000,
        transfer_data={"destination": "acct_barber42"}, metadata={"appointment_id": "77"},
        description="Fade", expand=["latest_charge"]))

    assert pi.object == "payment_intent" and pi.id.startswith("pi_")
    assert pi.status == "succeeded" and pi.amount_received == 5000 and pi.currency == "usd"
    assert pi.application_fee_amount == 1000
    assert pi.transfer_data.destination == "acct_barber42"
    assert pi.metadata["appointment_id"] == "77"
    charge = pi.latest_charge  # expanded
    assert charge.id.startswith("ch_") and charge.status == "succeeded" and charge.paid
    assert charge.application_fee_amount == 1000 and charge.transfer.startswith("tr_")

    fetched = await client.v1.payment_intents.retrieve_async(pi.id)
    assert fetched.latest_charge == charge.id
    [stored] = await sim_payment_intents(control)
    assert stored["transfer_data"]["destination"] == "acct_barber42"
    assert stored["application_fee_amount"] == 1000


async def test_create_then_confirm_and_cancel(client):
    pending = await client.v1.payment_intents.create_async(
        params={"amount": 2500, "currency": "usd", "payment_method": "pm_card_mastercard"})
    assert pending.status == "requires_confirmation" and pending.latest_charge is None
    confirmed = await client.v1.payment_intents.confirm_async(pending.id)
    assert confirmed.status == "succeeded" and confirmed.latest_charge.startswith("ch_")

    bare = await client.v1.payment_intents.create_async(params={"amount": 900, "currency": "eur"})
    assert bare.status == "requires_payment_method"
    canceled = await client.v1.payment_intents.cancel_async(
        bare.id, params={"cancellation_reason": "abandoned"})
    assert canceled.status == "canceled" and canceled.cancellation_reason == "abandoned"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.payment_intents.cancel_async(confirmed.id)
    assert exc.value.code == "payment_intent_unexpected_state"


@pytest.mark.parametrize("payment_method, decline_code", [
    ("pm_card_chargeDeclined", "generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ("pm_card_visa_chargeDeclined", "generic_decline"),
])
async def test_declined_card_raises_card_error_with_payment_intent(client, payment_method,
                                                                   decline_code):
    with pytest.raises(stripe.CardError) as exc:
        await client.v1.payment_intents.create_async(
            params=visa_payment(payment_method=payment_method))

    err = exc.value
    assert err.http_status == 402 and err.code == "card_declined"
    assert err.error.type == "card_error" and err.error.decline_code == decline_code
    pi = err.error.payment_intent
    assert pi.status == "requires_payment_method"
    assert pi.last_payment_error.decline_code == decline_code
    assert pi.last_payment_error.payment_method.id == payment_method
    stored = await client.v1.payment_intents.retrieve_async(pi.id)
    assert stored.status == "requires_payment_method"
    charge = await client.v1.charges.retrieve_async(stored.latest_charge)
    assert charge.status == "failed" and charge.outcome.reason == decline_code


async def test_bad_key_is_an_authentication_error_and_good_keys_pass(make_client):
    with pytest.raises(stripe.AuthenticationError) as exc:
        await make_client("sk_test_invalid_key_123").v1.balance.retrieve_async()
    assert exc.value.http_status == 401
    assert "Invalid API Key provided" in exc.value.user_message

    for key in ("sk_test_abc", "rk_test_restricted", "sk_live_realish"):
        account = await make_client(key).v1.accounts.retrieve_current_async()
        assert account.object == "account" and account.id.startswith("acct_")
    balance = await make_client("sk_test_abc").v1.balance.retrieve_async()
    assert balance.object == "balance"


@pytest.mark.parametrize("params, param, code", [
    ({"amount": 0}, "amount", "parameter_invalid_integer"),
    ({"amount": 10}, "amount", "amount_too_small"),
    ({"currency": "usdx"}, "currency", "parameter_invalid_string"),
    ({"application_fee_amount": 6000, "transfer_data": {"destination": "acct_x"}},
     "application_fee_amount", None),
    ({"application_fee_amount": 100}, "application_fee_amount", None),
    ({"transfer_data": {"destination": "barber_7"}}, "transfer_data[destination]",
     "resource_missing"),
    ({"application_fee": 100}, "application_fee", "parameter_unknown"),
    ({"capture_method": "manual"}, "capture_method", None),
])
async def test_invalid_payment_intent_params_are_400s_naming_the_param(client, control, params,
                                                                       param, code):
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.payment_intents.create_async(params=visa_payment(**params))
    assert exc.value.http_status == 400
    assert exc.value.param == param and exc.value.code == code
    assert await sim_payment_intents(control) == []


async def test_missing_payment_intent_is_404_resource_missing(client):
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.payment_intents.retrieve_async("pi_nope")
    assert exc.value.http_status == 404 and exc.value.code == "resource_missing"


# --- idempotency -----------------------------------------------------------------------------


async def test_idempotent_replay_returns_same_payment_intent(client, make_client, control):
    key = str(uuid.uuid4())
    first = await client.v1.payment_intents.create_async(params=visa_payment(),
                                                         options={"idempotency_key": key})
    again = await client.v1.payment_intents.create_async(params=visa_payment(),
                                                         options={"idempotency_key": key})
    assert again.id == first.id and again.latest_charge == first.latest_charge
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(await sim_payment_intents(control)) == 1

    # Keys are scoped per API key (per Stripe account): another account runs its own request.
    other = await make_client("sk_test_barber_two").v1.payment_intents.create_async(
        params=visa_payment(), options={"idempotency_key": key})
    assert other.id != first.id
    assert len(await sim_payment_intents(control)) == 2


async def test_idempotency_key_with_different_params_is_rejected(client, control):
    key = str(uuid.uuid4())
    await client.v1.payment_intents.create_async(params=visa_payment(),
                                                 options={"idempotency_key": key})
    with pytest.raises(stripe.IdempotencyError) as exc:
        await client.v1.payment_intents.create_async(params=visa_payment(amount=5001),
                                                     options={"idempotency_key": key})
    assert exc.value.http_status == 400
    assert len(await sim_payment_intents(control)) == 1


async def test_declines_are_replayed_but_validation_errors_are_not_saved(client, control):
    key = str(uuid.uuid4())
    for _ in range(2):
        with pytest.raises(stripe.CardError):
            await client.v1.payment_intents.create_async(
                params=visa_payment(payment_method="pm_card_chargeDeclined"),
                options={"idempotency_key": key})
    assert len(await sim_payment_intents(control)) == 1

    key = str(uuid.uuid4())
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.payment_intents.create_async(params={"amount": 5000, "currency": "usd",
                                                             "bogus": "1"},
                                                     options={"idempotency_key": key})
    fixed = await client.v1.payment_intents.create_async(params=visa_payment(),
                                                         options={"idempotency_key": key})
    assert fixed.status == "succeeded"


# --- faults ----------------------------------------------------------------------------------


async def test_timeout_then_retry_with_same_key_settles_without_second_charge(
        client, make_client, control):
    await sim_post(control, "/_sim/faults", {"mode": "timeout", "delay_ms": 5000,
                                             "path_prefix": "/v1/payment_intents"})
    impatient = make_client(timeout=0.5)
    key = str(uuid.uuid4())
    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        await impatient.v1.payment_intents.create_async(params=visa_payment(),
                                                        options={"idempotency_key": key})
    assert time.monotonic() - started < 3
    [charged] = await sim_payment_intents(control)  # the charge happened anyway
    assert charged["status"] == "succeeded"

    await sim_post(control, "/_sim/faults", {"mode": "none"})
    retried = await client.v1.payment_intents.create_async(params=visa_payment(),
                                                           options={"idempotency_key": key})
    assert retried.id == charged["id"] and retried.status == "succeeded"
    assert retried.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(await sim_payment_intents(control)) == 1


async def test_error_fault_counts_down_and_slow_fault_delays(client, control):
    await sim_post(control, "/_sim/faults", {"mode": "error", "count": 1})
    with pytest.raises(stripe.APIError) as exc:
        await client.v1.payment_intents.create_async(params=visa_payment())
    assert exc.value.http_status == 500 and exc.value.error.type == "api_error"
    assert (await client.v1.payment_intents.create_async(params=visa_payment())).status \
        == "succeeded"

    await sim_post(control, "/_sim/faults", {"mode": "slow", "delay_ms": 300, "count": 1})
    started = time.monotonic()
    await client.v1.balance.retrieve_async()
    assert time.monotonic() - started >= 0.3
    async with control.get("/_sim/faults") as resp:
        assert (await resp.json())["mode"] == "none"


async def test_sdk_retries_after_500_with_its_own_idempotency_key(make_client, control):
    await sim_post(control, "/_sim/faults", {"mode": "error", "count": 1})
    patient = make_client(retries=2)
    pi = await patient.v1.payment_intents.create_async(params=visa_payment())
    assert pi.status == "succeeded"
    assert len(await sim_payment_intents(control)) == 1


# --- refunds ---------------------------------------------------------------------------------


async def test_partial_then_full_refund_then_already_refunded(client):
    pi = await client.v1.payment_intents.create_async(params=visa_payment())
    partial = await client.v1.refunds.create_async(params={"payment_intent": pi.id,
                                                           "amount": 2000})
    assert partial.object == "refund" and partial.status == "succeeded"
    assert partial.amount == 2000 and partial.charge == pi.latest_charge
    rest = await client.v1.refunds.create_async(params={"charge": pi.latest_charge,
                                                        "reason": "requested_by_customer"})
    assert rest.amount == 3000
    charge = await client.v1.charges.retrieve_async(pi.latest_charge)
    assert charge.amount_refunded == 5000 and charge.refunded is True

    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.refunds.create_async(params={"payment_intent": pi.id})
    assert exc.value.code == "charge_already_refunded"
    listed = await client.v1.refunds.list_async(params={"payment_intent": pi.id})
    assert [r.id for r in listed.data] == [rest.id, partial.id]
    assert (await client.v1.refunds.retrieve_async(partial.id)).amount == 2000


async def test_over_refund_is_amount_too_large(client):
    pi = await client.v1.payment_intents.create_async(params=visa_payment(amount=1000))
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.refunds.create_async(params={"payment_intent": pi.id, "amount": 1500})
    assert exc.value.http_status == 400
    assert exc.value.code == "amount_too_large" and exc.value.param == "amount"
    assert "greater than unrefunded amount" in exc.value.user_message


async def test_refund_of_failed_payment_is_rejected(client):
    with pytest.raises(stripe.CardError) as declined:
        await client.v1.payment_intents.create_async(
            params=visa_payment(payment_method="pm_card_chargeDeclined"))
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.refunds.create_async(
            params={"payment_intent": declined.value.error.payment_intent.id})


# --- lists -----------------------------------------------------------------------------------


async def test_list_pagination_and_created_filter(client):
    created = [(await client.v1.payment_intents.create_async(
        params=visa_payment(amount=1000 + i))).id for i in range(5)]
    newest_first = created[::-1]

    page1 = await client.v1.payment_intents.list_async(params={"limit": 2})
    assert page1.object == "list" and page1.url == "/v1/payment_intents"
    assert [pi.id for pi in page1.data] == newest_first[:2] and page1.has_more
    page2 = await client.v1.payment_intents.list_async(
        params={"limit": 2, "starting_after": page1.data[-1].id})
    assert [pi.id for pi in page2.data] == newest_first[2:4] and page2.has_more
    page3 = await client.v1.payment_intents.list_async(
        params={"limit": 2, "starting_after": page2.data[-1].id})
    assert [pi.id for pi in page3.data] == newest_first[4:] and not page3.has_more
    back = await client.v1.payment_intents.list_async(
        params={"limit": 2, "ending_before": page3.data[0].id})
    assert [pi.id for pi in back.data] == newest_first[2:4]

    walked = [pi.id async for pi in page1.auto_paging_iter()]
    assert walked == newest_first

    now = int(time.time())
    future = await client.v1.payment_intents.list_async(params={"created": {"gte": now + 60}})
    assert future.data == [] and not future.has_more
    window = await client.v1.payment_intents.list_async(
        params={"created": {"gte": now - 60, "lte": now + 60}, "limit": 100})
    assert len(window.data) == 5
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.payment_intents.list_async(params={"limit": 101})


def test_parse_stripe_form_nesting():
    pairs = [("amount", "100"), ("transfer_data[destination]", "acct_1"),
             ("metadata[0]", "zero"), ("metadata[k]", "v"), ("expand[]", "a"),
             ("expand[]", "b"), ("enabled_events[0]", "x"), ("enabled_events[1]", "y"),
             ("created[gte]", "5")]
    assert parse_stripe_form(pairs) == {
        "amount": "100", "transfer_data": {"destination": "acct_1"},
        "metadata": {"0": "zero", "k": "v"}, "expand": ["a", "b"],
        "enabled_events": ["x", "y"], "created": {"gte": "5"},
    }


# --- webhooks --------------------------------------------------------------------------------


class Receiver:
    """A real HTTP server on a free port that records what the simulator POSTs to it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []  # (payload, Stripe-Signature)
        self.arrived: list[float] = []  # time.monotonic() of each entry in `received`
        self.fail_first = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.text()
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500)
        self.received.append((payload, request.headers.get("Stripe-Signature", "")))
        self.arrived.append(time.monotonic())
        return web.json_response({"received": True})

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"only {len(self.received)} of {count} arrived"
            await asyncio.sleep(0.02)


@pytest.fixture
async def receiver():
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/stripe", rec.handle)
    rec.runner = web.AppRunner(app)
    await rec.runner.setup()
    await web.TCPSite(rec.runner, "127.0.0.1", 0).start()
    rec.url = f"http://127.0.0.1:{rec.runner.addresses[0][1]}/hooks/stripe"
    yield rec
    await rec.runner.cleanup()


async def register(client: stripe.StripeClient, url: str, events: list[str]):
    return await client.v1.webhook_endpoints.create_async(
        params={"url": url, "enabled_events": events})


async def test_signed_webhook_verifies_with_the_sdk(client, make_client, receiver):
    endpoint = await register(client, receiver.url,
                              ["payment_intent.succeeded", "payment_intent.payment_failed"])
    assert endpoint.id.startswith("we_") and endpoint.secret.startswith("whsec_")
    # Another account's endpoint, same URL, all events: it must hear nothing of these payments.
    await register(make_client("sk_test_someone_else"), receiver.url, ["*"])

    pi = await client.v1.payment_intents.create_async(params=visa_payment())
    await receiver.wait_for(1)
    payload, header = receiver.received[0]
    event = stripe.Webhook.construct_event(payload, header, endpoint.secret)
    assert event.type == "payment_intent.succeeded" and event.id.startswith("evt_")
    assert event.data.object.id == pi.id and event.data.object.status == "succeeded"
    assert event.livemode is False and event.object == "event"

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.replace("succeeded", "failed"), header,
                                       endpoint.secret)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_wrong")

    with pytest.raises(stripe.CardError):
        await client.v1.payment_intents.create_async(
            params=visa_payment(payment_method="pm_card_chargeDeclined"))
    await receiver.wait_for(2)
    failed = stripe.Webhook.construct_event(*receiver.received[1], endpoint.secret)
    assert failed.type == "payment_intent.payment_failed"
    assert failed.data.object.last_payment_error.code == "card_declined"

    events = await client.v1.events.list_async(params={"type": "payment_intent.succeeded"})
    assert [e.id for e in events.data] == [event.id]
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 2  # nothing for the other account, no unsubscribed types

    listed = await client.v1.webhook_endpoints.list_async()
    assert [e.id for e in listed.data] == [endpoint.id] and "secret" not in listed.data[0]
    deleted = await client.v1.webhook_endpoints.delete_async(endpoint.id)
    assert deleted.deleted is True


async def test_duplicate_switch_delivers_each_event_twice(client, control, receiver):
    endpoint = await register(client, receiver.url, ["payment_intent.succeeded"])
    await sim_post(control, "/_sim/webhooks/duplicate", {"enabled": True})
    pi = await client.v1.payment_intents.create_async(params=visa_payment())
    await receiver.wait_for(2)
    first, second = (stripe.Webhook.construct_event(p, h, endpoint.secret)
                     for p, h in receiver.received)
    assert first.id == second.id and first.data.object.id == pi.id


async def test_refund_webhooks_and_retry_after_receiver_failure(client, sim, control, receiver):
    sim.state.webhook_retry_delays = (0.05, 0.05)
    receiver.fail_first = 1
    endpoint = await register(client, receiver.url, ["refund.created", "charge.refunded"])
    pi = await client.v1.payment_intents.create_async(params=visa_payment())
    await client.v1.refunds.create_async(params={"payment_intent": pi.id, "amount": 700})
    await receiver.wait_for(2)
    events = sorted((stripe.Webhook.construct_event(p, h, endpoint.secret)
                     for p, h in receiver.received), key=lambda e: e.type)
    assert [e.type for e in events] == ["charge.refunded", "refund.created"]
    assert events[0].data.object.amount_refunded == 700
    async with control.get("/_sim/state") as resp:
        deliveries = (await resp.json())["deliveries"]
    assert any(d["status"] == 500 for d in deliveries)
    assert any(d["attempt"] == 2 and d["status"] == 200 for d in deliveries)


async def test_reset_clears_everything(client, control):
    await client.v1.payment_intents.create_async(params=visa_payment())
    await sim_post(control, "/_sim/faults", {"mode": "error"})
    await sim_post(control, "/_sim/reset", {})
    async with control.get("/_sim/state") as resp:
        state = await resp.json()
    assert state["accounts"] == [] and state["faults"]["mode"] == "none"
    assert json.dumps(state)  # plain JSON all the way down


async def sim_call(control: aiohttp.ClientSession, method: str, path: str,
                   body: dict | None = None) -> tuple[int, dict]:
    async with control.request(method, path, json=body) as resp:
        return resp.status, await resp.json()


def verified_events(receiver: Receiver, secret: str) -> list[stripe.Event]:
    """Every delivery checked against the endpoint's secret the way a receiver does it."""
    return [stripe.Webhook.construct_event(payload, header, secret)
            for payload, header in receiver.received]


# --- refunds that change after they are created --------------------------------------------


async def test_pending_refund_settles_to_succeeded_through_the_control(client, control,
                                                                       receiver):
    endpoint = await register(client, receiver.url, ["charge.refund.updated", "refund.updated"])
    pi = await client.v1.payment_intents.create_async(
        params=visa_payment(payment_method="pm_card_pendingRefund"))
    assert pi.status == "succeeded"
    refund = await client.v1.refunds.create_async(
        params={"payment_intent": pi.id, "amount": 2000, "metadata": {"order": "42"}})
    assert refund.status == "pending" and refund.pending_reason == "processing"
    charge = await client.v1.charges.retrieve_async(pi.latest_charge)
    assert charge.amount_refunded == 2000 and charge.refunded is False  # pending counts
    with pytest.raises(stripe.InvalidRequestError) as exc:  # so it cannot be refunded twice
        await client.v1.refunds.create_async(params={"payment_intent": pi.id, "amount": 3001})
    assert exc.value.code == "amount_too_large"

    status, settled = await sim_call(control, "POST", f"/_sim/refunds/{refund.id}/status",
                                     {"status": "succeeded"})
    assert status == 200 and settled["status"] == "succeeded"
    assert settled["pending_reason"] is None and settled["failure_reason"] is None
    fetched = await client.v1.refunds.retrieve_async(refund.id)
    assert fetched.status == "succeeded" and fetched.metadata["order"] == "42"
    charge = await client.v1.charges.retrieve_async(pi.latest_charge)
    assert charge.amount_refunded == 2000

    await receiver.wait_for(2)
    events = sorted(verified_events(receiver, endpoint.secret), key=lambda e: e.type)
    assert [e.type for e in events] == ["charge.refund.updated", "refund.updated"]
    for event in events:
        assert event.data.object.id == refund.id and event.data.object.status == "succeeded"
        assert event.data.previous_attributes.status == "pending"
        assert event.request.id is None  # nobody's API request caused it

    # Only refunds of pm_card_refundFail fail after succeeding.
    status, body = await sim_call(control, "POST", f"/_sim/refunds/{refund.id}/status",
                                  {"status": "failed"})
    assert status == 409 and "pm_card_refundFail" in body["error"]


async def test_failed_refund_gives_the_amount_back(client, control, receiver):
    endpoint = await register(client, receiver.url,
                              ["charge.refund.updated", "refund.updated", "refund.failed"])
    pi = await client.v1.payment_intents.create_async(
        params=visa_payment(payment_method="pm_card_refundFail"))
    refund = await client.v1.refunds.create_async(params={"payment_intent": pi.id})
    assert refund.status == "succeeded" and refund.amount == 5000  # it fails only later
    charge = await client.v1.charges.retrieve_async(pi.latest_charge)
    assert charge.amount_refunded == 5000 and charge.refunded is True
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.refunds.create_async(params={"payment_intent": pi.id})
    assert exc.value.code == "charge_already_refunded"

    status, failed = await sim_call(control, "POST", f"/_sim/refunds/{refund.id}/status",
                                    {"status": "failed"})
    assert status == 200 and failed["status"] == "failed"
    assert failed["failure_reason"] == "expired_or_canceled_card"
    assert failed["failure_balance_transaction"].startswith("txn_")
    charge = await client.v1.charges.retrieve_async(pi.latest_charge)
    assert charge.amount_refunded == 0 and charge.refunded is False
    fetched = await client.v1.refunds.retrieve_async(refund.id)
    assert fetched.status == "failed" and fetched.failure_reason == "expired_or_canceled_card"

    # The money is back on the charge, so it can be refunded again.
    again = await client.v1.refunds.create_async(params={"payment_intent": pi.id,
                                                         "amount": 1000})
    assert again.status == "succeeded"
    charge = await client.v1.charges.retrieve_async(pi.latest_charge)
    assert charge.amount_refunded == 1000

    await receiver.wait_for(3)
    events = sorted(verified_events(receiver, endpoint.secret), key=lambda e: e.type)
    assert [e.type for e in events] == ["charge.refund.updated", "refund.failed",
                                        "refund.updated"]
    assert all(e.data.object.id == refund.id and e.data.object.status == "failed"
               for e in events)
    status, _ = await sim_call(control, "POST", f"/_sim/refunds/{refund.id}/status",
                               {"status": "succeeded"})
    assert status == 409  # failed is final


async def test_canceled_refund_gives_the_amount_back_and_impossible_moves_are_refused(
        client, control):
    pi = await client.v1.payment_intents.create_async(
        params=visa_payment(payment_method="pm_card_pendingRefund"))
    refund = await client.v1.refunds.create_async(params={"payment_intent": pi.id})
    charge = await client.v1.charges.retrieve_async(pi.latest_charge)
    assert refund.status == "pending" and charge.refunded is True

    status, canceled = await sim_call(control, "POST", f"/_sim/refunds/{refund.id}/status",
                                      {"status": "canceled"})
    assert status == 200 and canceled["status"] == "canceled"
    charge = await client.v1.charges.retrieve_async(pi.latest_charge)
    assert charge.amount_refunded == 0 and charge.refunded is False
    status, _ = await sim_call(control, "POST", f"/_sim/refunds/{refund.id}/status",
                               {"status": "succeeded"})
    assert status == 409

    pending = await client.v1.refunds.create_async(params={"payment_intent": pi.id,
                                                           "amount": 100})
    url = f"/_sim/refunds/{pending.id}/status"
    assert (await sim_call(control, "POST", url, {"status": "pending"}))[0] == 400
    assert (await sim_call(control, "POST", url, {"status": "failed",
                                                  "failure_reason": "bogus"}))[0] == 400
    assert (await sim_call(control, "POST", "/_sim/refunds/re_nope/status",
                           {"status": "succeeded"}))[0] == 404
    status, failed = await sim_call(control, "POST", url, {"status": "failed",
                                                           "failure_reason": "lost_or_stolen_card"})
    assert status == 200 and failed["failure_reason"] == "lost_or_stolen_card"

    plain = await client.v1.payment_intents.create_async(params=visa_payment())
    ordinary = await client.v1.refunds.create_async(params={"payment_intent": plain.id})
    assert ordinary.status == "succeeded"
    status, body = await sim_call(control, "POST", f"/_sim/refunds/{ordinary.id}/status",
                                  {"status": "failed"})
    assert status == 409 and (await client.v1.refunds.retrieve_async(ordinary.id)).status \
        == "succeeded"


async def test_refund_list_filters_by_payment_intent_and_keeps_metadata(client):
    first = await client.v1.payment_intents.create_async(params=visa_payment())
    second = await client.v1.payment_intents.create_async(params=visa_payment())
    noted = await client.v1.refunds.create_async(params={
        "payment_intent": first.id, "amount": 1000, "metadata": {"reason_code": "no_show"}})
    other = await client.v1.refunds.create_async(params={"payment_intent": second.id,
                                                         "amount": 700})
    plain = await client.v1.refunds.create_async(params={"payment_intent": first.id,
                                                         "amount": 500})

    of_first = await client.v1.refunds.list_async(params={"payment_intent": first.id})
    assert [r.id for r in of_first.data] == [plain.id, noted.id]
    assert of_first.data[1].metadata.to_dict() == {"reason_code": "no_show"}
    assert of_first.data[0].metadata.to_dict() == {}
    of_second = await client.v1.refunds.list_async(params={"payment_intent": second.id})
    assert [r.id for r in of_second.data] == [other.id]
    by_charge = await client.v1.refunds.list_async(params={"charge": second.latest_charge})
    assert [r.id for r in by_charge.data] == [other.id]
    assert len((await client.v1.refunds.list_async()).data) == 3


async def test_payment_intent_list_honours_created_bounds_with_pagination(client, sim):
    ids = [(await client.v1.payment_intents.create_async(params=visa_payment())).id
           for _ in range(6)]
    # Created in the same second; spread them 100 s apart so bounds can cut a window.
    base = 1_700_000_000
    for i, pi_id in enumerate(ids):
        sim.state.accounts[KEY].payment_intents[pi_id]["created"] = base + 100 * i
    window = {"gte": base + 100, "lte": base + 400}  # ids[1] .. ids[4]

    page1 = await client.v1.payment_intents.list_async(params={"created": window, "limit": 2})
    assert [pi.id for pi in page1.data] == [ids[4], ids[3]] and page1.has_more
    page2 = await client.v1.payment_intents.list_async(
        params={"created": window, "limit": 2, "starting_after": page1.data[-1].id})
    assert [pi.id for pi in page2.data] == [ids[2], ids[1]] and not page2.has_more
    walked = [pi.id async for pi in (await client.v1.payment_intents.list_async(
        params={"created": window, "limit": 1})).auto_paging_iter()]
    assert walked == [ids[4], ids[3], ids[2], ids[1]]
    strict = await client.v1.payment_intents.list_async(
        params={"created": {"gt": base + 100, "lt": base + 400}})
    assert [pi.id for pi in strict.data] == [ids[3], ids[2]]
    exact = await client.v1.payment_intents.list_async(params={"created": base + 500})
    assert [pi.id for pi in exact.data] == [ids[5]]


# --- disconnect fault -----------------------------------------------------------------------


async def test_disconnect_fault_loses_the_answer_but_not_the_payment(client, control):
    await sim_post(control, "/_sim/faults", {"mode": "disconnect", "count": 1,
                                             "path_prefix": "/v1/payment_intents"})
    key = str(uuid.uuid4())
    with pytest.raises(stripe.APIConnectionError):
        await client.v1.payment_intents.create_async(params=visa_payment(),
                                                     options={"idempotency_key": key})
    async with control.get("/_sim/state") as resp:
        state = await resp.json()
    [account] = state["accounts"]
    [created] = account["payment_intents"]  # the request ran before the connection closed
    assert created["status"] == "succeeded" and key in account["idempotency_keys"]
    assert state["faults"]["mode"] == "none"  # count used up

    retried = await client.v1.payment_intents.create_async(params=visa_payment(),
                                                           options={"idempotency_key": key})
    assert retried.id == created["id"]
    assert retried.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(await sim_payment_intents(control)) == 1


# --- webhook switches ------------------------------------------------------------------------


async def test_webhook_delay_holds_each_delivery_back(client, control, receiver):
    endpoint = await register(client, receiver.url, ["payment_intent.succeeded"])
    assert (await sim_call(control, "POST", "/_sim/webhooks/delay", {"ms": -1}))[0] == 400
    settings = await sim_post(control, "/_sim/webhooks/delay", {"ms": 600})
    assert settings["delay_ms"] == 600
    started = time.monotonic()
    pi = await client.v1.payment_intents.create_async(params=visa_payment())
    await receiver.wait_for(1)
    assert receiver.arrived[0] - started >= 0.6  # a lower bound: never fails on a slow machine
    [event] = verified_events(receiver, endpoint.secret)
    assert event.data.object.id == pi.id


async def test_reorder_holds_events_and_releases_them_newest_first(client, sim, control,
                                                                    receiver):
    endpoint = await register(client, receiver.url, ["payment_intent.succeeded"])
    await sim_post(control, "/_sim/webhooks/reorder", {"enabled": True})
    pis = [await client.v1.payment_intents.create_async(params=visa_payment())
           for _ in range(3)]
    await sim.state.webhooks.idle()  # nothing in flight: they are held, not merely late
    assert receiver.received == []
    async with control.get("/_sim/webhooks") as resp:
        assert len((await resp.json())["held"]) == 3

    assert (await sim_post(control, "/_sim/webhooks/flush", {}))["released"] == 3
    await receiver.wait_for(3)
    delivered = [e.data.object.id for e in verified_events(receiver, endpoint.secret)]
    assert delivered == [pi.id for pi in reversed(pis)]

    # With a batch size, every full batch leaves by itself, newest first.
    await sim_post(control, "/_sim/webhooks/reorder", {"enabled": True, "batch": 2})
    pair = [await client.v1.payment_intents.create_async(params=visa_payment())
            for _ in range(2)]
    await receiver.wait_for(5)
    delivered = [e.data.object.id for e in verified_events(receiver, endpoint.secret)]
    assert delivered[3:] == [pair[1].id, pair[0].id]

    # Turning reordering off releases whatever is still held.
    last = await client.v1.payment_intents.create_async(params=visa_payment())
    await sim.state.webhooks.idle()
    assert len(receiver.received) == 5
    off = await sim_post(control, "/_sim/webhooks/reorder", {"enabled": False})
    assert off["released"] == 1 and off["reorder"] is False
    await receiver.wait_for(6)
    assert verified_events(receiver, endpoint.secret)[-1].data.object.id == last.id


async def test_duplicate_deliveries_are_recorded_per_copy_and_can_be_turned_off(
        client, sim, control, receiver):
    endpoint = await register(client, receiver.url, ["payment_intent.succeeded"])
    assert (await sim_call(control, "POST", "/_sim/webhooks/duplicate",
                           {"enabled": "yes"}))[0] == 400
    await sim_post(control, "/_sim/webhooks/duplicate", {"enabled": True})
    await client.v1.payment_intents.create_async(params=visa_payment())
    await receiver.wait_for(2)
    await sim.state.webhooks.idle()
    async with control.get("/_sim/deliveries") as resp:
        deliveries = (await resp.json())["data"]
    assert [(d["copy"], d["status"]) for d in deliveries] == [(1, 200), (2, 200)]
    assert len({d["event_id"] for d in deliveries}) == 1
    assert all(d["endpoint"] == endpoint.id for d in deliveries)

    await sim_post(control, "/_sim/webhooks/duplicate", {"enabled": False})
    await client.v1.payment_intents.create_async(params=visa_payment())
    await receiver.wait_for(3)
    await sim.state.webhooks.idle()
    assert len(receiver.received) == 3
    assert len({e.id for e in verified_events(receiver, endpoint.secret)}) == 2
