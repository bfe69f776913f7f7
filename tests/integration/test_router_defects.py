"""The router's money defects of issue 6, each reproduced against real Postgres, NATS and the
Stripe simulator (the races, 2 and 5, are in test_router_concurrency.py against a real server):

1. a retried refund paid out twice; an error after sending must leave the refund pending
3. a pending or failed refund raised refunded_amount and emitted an event
4. route-and-pay bodies were not validated (500)
6. money that ignored the currency
7. attempts left pending forever (the sweeper), Stripe's canceled recorded as failed
9. bad input that reached a 500
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import jwt
import msgspec
import pytest
import sqlalchemy as sa
import stripe

from services.router import tables as t
from shared.db import PlatformTables
from shared.events import ConnectionChanged, encode_event, new_event
from tests.conftest import JWT_SECRET
from tests.integration.conftest import ROUTER_SIM_KEY
from tests.integration.router_support import BASE, admin, barber, sim_call
from tests.support import eventually

_ids = itertools.count(1)
outbox = PlatformTables(t.metadata).outbox
LATER = timedelta(minutes=10)  # past PENDING_SWEEP_AFTER (300 s): the sweeper may settle


def next_barber() -> int:
    return 800_000 + next(_ids)


@pytest.fixture(scope="module")
def router(router_app):
    return router_app.state.router


async def in_app(client, fn, *args):
    """Run a coroutine of the app on the app's own loop (the test client runs it in a thread)."""
    return await asyncio.to_thread(client.blocking_portal.call, fn, *args)


async def rows(db, query) -> list[dict]:
    async with db.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def payment_row(db, transaction_id: str) -> dict:
    return (await rows(db, sa.select(t.platform_payments).where(
        t.platform_payments.c.id == uuid.UUID(transaction_id))))[0]


async def refund_rows(db, transaction_id: str) -> list[dict]:
    return await rows(db, sa.select(t.platform_refunds).where(
        t.platform_refunds.c.payment_id == uuid.UUID(transaction_id)).order_by(t.platform_refunds.c.created_at))


async def events_of(db, transaction_id: str) -> list[dict]:
    found = await rows(db, sa.select(outbox.c.body).where(outbox.c.event_type == "transaction.recorded")
                       .order_by(outbox.c.id))
    payloads = [msgspec.json.decode(r["body"])["payload"] for r in found]
    return [p for p in payloads if p["transaction_id"] == transaction_id]


async def sim_refunds(stripe_sim, payment_intent: str) -> list[dict]:
    state = await sim_call(stripe_sim, "GET", "/_sim/state")
    return [r for a in state["accounts"] for r in a["refunds"] if r["payment_intent"] == payment_intent]


async def fault(stripe_sim, **body) -> None:
    await sim_call(stripe_sim, "POST", "/_sim/faults", body)


async def paying_barber(client, **config) -> int:
    b = next_barber()
    response = await client.put(f"{BASE}/config/{b}", headers=admin(), json={
        "commission_rate": "0.10", "connect_account_id": f"acct_{b}", **config})
    assert response.status_code == 200, response.text
    return b


async def pay(client, b: int, amount: str, method: str = "pm_card_visa", currency: str = "USD") -> dict:
    response = await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 1, "amount": amount, "currency": currency, "payment_method": method})
    assert response.status_code == 200, response.text
    return response.json()


# ---- 1: a retried refund pays out once -------------------------------------------------------------

async def test_refund_retried_after_a_timeout_refunds_once(client, db, stripe_sim):
    b = await paying_barber(client)
    paid = await pay(client, b, "100.00")
    url, headers = f"{BASE}/transactions/{paid['transaction_id']}/refund", {**barber(b), "Idempotency-Key": f"r-{b}"}
    # Stripe processes the refund; only its answer is late (the client times out after 1 s).
    await fault(stripe_sim, mode="timeout", delay_ms=2500, count=1, path_prefix="/v1/refunds")
    first = await client.post(url, headers=headers, json={"amount": "30.00"})
    assert first.status_code == 504 and first.json()["code"] == "processor_timeout", first.text
    assert [r["status"] for r in await refund_rows(db, paid["transaction_id"])] == ["pending"]
    retry = await client.post(url, headers=headers, json={"amount": "30.00"})
    assert retry.status_code == 200, retry.text
    assert (retry.json()["refund_status"], retry.json()["refunded_amount"]) == ("succeeded", "30.00")
    assert [r["amount"] for r in await sim_refunds(stripe_sim, paid["external_transaction_id"])] == [3000]
    assert [e["status"] for e in await events_of(db, paid["transaction_id"])] == ["completed", "partially_refunded"]
    replay = await client.post(url, headers=headers, json={"amount": "30.00"})
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == retry.json()


async def test_a_connection_lost_after_sending_leaves_the_refund_pending_not_failed(client, db, stripe_sim):
    b = await paying_barber(client)
    paid = await pay(client, b, "80.00")
    url, headers = f"{BASE}/transactions/{paid['transaction_id']}/refund", {**barber(b), "Idempotency-Key": f"d-{b}"}
    await fault(stripe_sim, mode="disconnect", count=1, path_prefix="/v1/refunds")
    lost = await client.post(url, headers=headers)
    assert lost.status_code == 502 and lost.json()["code"] == "processor_outcome_unknown", lost.text
    stored = await refund_rows(db, paid["transaction_id"])
    assert [(r["status"], r["amount"]) for r in stored] == [("pending", Decimal("80.0000"))]
    assert (await payment_row(db, paid["transaction_id"]))["refunded_amount"] == 0
    retry = await client.post(url, headers=headers)
    assert retry.status_code == 200 and retry.json()["status"] == "refunded", retry.text
    assert [r["amount"] for r in await sim_refunds(stripe_sim, paid["external_transaction_id"])] == [8000]


# ---- 3: only a refund the processor says succeeded moves money ------------------------------------

async def test_a_pending_refund_moves_nothing_until_it_succeeds(client, db, stripe_sim, router):
    b = await paying_barber(client)
    paid = await pay(client, b, "50.00", method="pm_card_pendingRefund")
    response = await client.post(f"{BASE}/transactions/{paid['transaction_id']}/refund", headers=barber(b),
                                 json={"amount": "20.00"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["refund_status"], body["status"], body["refunded_amount"]) == ("pending", "completed", "0.00")
    assert (await payment_row(db, paid["transaction_id"]))["refunded_amount"] == 0
    assert [e["status"] for e in await events_of(db, paid["transaction_id"])] == ["completed"]
    # A second refund may not take what the pending one holds.
    too_much = await client.post(f"{BASE}/transactions/{paid['transaction_id']}/refund", headers=barber(b),
                                 json={"amount": "30.01"})
    assert too_much.status_code == 422 and too_much.json()["code"] == "refund_exceeds_payment"

    stripe_refund = (await sim_refunds(stripe_sim, paid["external_transaction_id"]))[0]
    await sim_call(stripe_sim, "POST", f"/_sim/refunds/{stripe_refund['id']}/status", {"status": "succeeded"})
    await in_app(client, router.sweeper.sweep_pending, datetime.now(UTC) + LATER)
    payment = await payment_row(db, paid["transaction_id"])
    assert (payment["status"], payment["refunded_amount"]) == ("partially_refunded", Decimal("20.0000"))
    events = await events_of(db, paid["transaction_id"])
    assert [(e["status"], e.get("refund_amount")) for e in events] == [
        ("completed", None), ("partially_refunded", "20.00")]


async def test_a_refund_that_fails_at_the_processor_moves_nothing(client, db, stripe_sim, router):
    b = await paying_barber(client)
    paid = await pay(client, b, "50.00", method="pm_card_pendingRefund")
    response = await client.post(f"{BASE}/transactions/{paid['transaction_id']}/refund", headers=barber(b))
    assert response.status_code == 202 and response.json()["refund_status"] == "pending"
    stripe_refund = (await sim_refunds(stripe_sim, paid["external_transaction_id"]))[0]
    await sim_call(stripe_sim, "POST", f"/_sim/refunds/{stripe_refund['id']}/status", {"status": "failed"})
    await in_app(client, router.sweeper.sweep_pending, datetime.now(UTC) + LATER)
    assert [r["status"] for r in await refund_rows(db, paid["transaction_id"])] == ["failed"]
    payment = await payment_row(db, paid["transaction_id"])
    assert (payment["status"], payment["refunded_amount"]) == ("completed", 0)
    assert [e["status"] for e in await events_of(db, paid["transaction_id"])] == ["completed"]
    # The failed refund holds nothing back: the whole amount can be refunded again.
    again = await client.post(f"{BASE}/transactions/{paid['transaction_id']}/refund", headers=barber(b))
    assert again.status_code == 202 and again.json()["refund_amount"] == "50.00"


# ---- 4: route-and-pay bodies are validated as /route validates ------------------------------------

@pytest.mark.parametrize(("amount", "currency", "field"), [
    ("1.234", "USD", "amount"), (-5, "USD", "amount"), ("NaN", "USD", "amount"), (0, "USD", "amount"),
    ("Infinity", "USD", "amount"), (5, "XYZ", "currency"), ("10.5", "JPY", "amount"), ("1.2345", "KWD", "amount"),
    ("100000.01", "USD", "amount"), ("５０", "USD", "amount"), ("1_000", "USD", "amount"), (" 50", "USD", "amount"),
])
async def test_route_and_pay_bodies_are_validated_like_route(client, db, amount, currency, field):
    b = next_barber()
    response = await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 1, "amount": amount, "currency": currency, "payment_method": "pm_card_visa"})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error" and field in response.json()["detail"]
    assert await rows(db, sa.select(t.routing_decisions).where(t.routing_decisions.c.barber_id == b)) == []


# ---- 6: every amount in its own currency -----------------------------------------------------------

async def test_fees_and_thresholds_use_the_payments_currency(client):
    b = next_barber()
    assert (await client.put(f"{BASE}/config/{b}", headers=admin(), json={
        "payment_mode": "hybrid", "min_external_amount": "20.00"})).status_code == 200
    jpy = (await client.post(f"{BASE}/route", headers=barber(b), json={
        "appointment_id": 1, "amount": 1010, "currency": "JPY"})).json()
    # 2.9 % of 1010 is 29.29 -> 29; no USD 0.30 is added to yen (that made it 29.59 -> 30).
    assert (jpy["estimated_processor_fee"], jpy["commission_amount"]) == ("29", "202")
    eur = (await client.post(f"{BASE}/route", headers=barber(b), json={
        "appointment_id": 2, "amount": "10.00", "currency": "EUR"})).json()
    assert eur["estimated_processor_fee"] == "0.54"  # 0.29 + EUR 0.25
    # The 20.00 minimum is in USD: a 10.00 EUR payment is not "below" it.
    assert eur["reason"] == "other_currency_without_external_connection"
    usd = (await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 3, "amount": "10.00"})).json()
    assert usd["reason"] == "below_min_external_amount"


async def test_thresholds_are_checked_in_their_currency(client):
    b = next_barber()
    refused = await client.put(f"{BASE}/config/{b}", headers=admin(), json={
        "threshold_currency": "JPY", "min_external_amount": "20.5"})
    assert refused.status_code == 422 and refused.json()["field"] == "min_external_amount"
    ok = await client.put(f"{BASE}/config/{b}", headers=admin(), json={
        "threshold_currency": "KWD", "min_external_amount": "20.125"})
    assert ok.status_code == 200 and ok.json()["min_external_amount"] == "20.125"
    # Changing only the currency re-checks the stored amounts against it.
    refused = await client.put(f"{BASE}/config/{b}", headers=admin(), json={"threshold_currency": "JPY"})
    assert refused.status_code == 422 and refused.json()["field"] == "min_external_amount"
    bad = await client.put(f"{BASE}/config/{b}", headers=admin(), json={"threshold_currency": "XYZ"})
    assert bad.status_code == 422 and "threshold_currency" in bad.json()["detail"]


async def test_a_kwd_partial_refund_in_fils(client, db, stripe_sim):
    b = await paying_barber(client)
    paid = await pay(client, b, "10.000", currency="KWD")
    response = await client.post(f"{BASE}/transactions/{paid['transaction_id']}/refund", headers=barber(b),
                                 json={"amount": "1.125"})
    assert response.status_code == 200, response.text
    assert (response.json()["refund_amount"], response.json()["refunded_amount"]) == ("1.125", "1.125")
    assert [r["amount"] for r in await sim_refunds(stripe_sim, paid["external_transaction_id"])] == [1125]
    too_fine = await client.post(f"{BASE}/transactions/{paid['transaction_id']}/refund", headers=barber(b),
                                 json={"amount": "1.1255"})
    assert too_fine.status_code == 422 and "decimal places" in too_fine.json()["detail"]


async def test_an_external_route_never_promises_a_negative_net(client, infra, event_names):
    import nats

    b = next_barber()
    assert (await client.put(f"{BASE}/config/{b}", headers=admin(), json={
        "payment_mode": "decentralized", "preferred_processor": "paypal"})).status_code == 200
    nc = await nats.connect(infra.nats_url)
    event = new_event(ConnectionChanged(
        connection_id=b, barber_id=b, processor="paypal", account_id="pp-1", status="active",
        default_currency="USD", supports_payments=True, supports_refunds=True))
    await nc.jetstream().publish(event_names["EVENT_SUBJECT_PREFIX"] + "connection.changed", encode_event(event))
    await nc.close()

    async def external_route():
        r = await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 1, "amount": "20.00"})
        return r.json() if r.json().get("payment_type") == "external" else None

    assert (await eventually(external_route, timeout=10))["processor"] == "paypal"
    # 0.50 through PayPal: 0.49 + 3.49 % is 0.51 of fees alone. Not external; fallback instead.
    tiny = (await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 2, "amount": "0.50"})).json()
    assert (tiny["payment_type"], tiny["reason"], tiny["fallback_used"]) == (
        "centralized", "external_fees_exceed_amount", True)
    assert Decimal(tiny["barber_net"]) >= 0


# ---- 7: the sweeper settles attempts nobody came back for -----------------------------------------

async def test_sweeper_settles_a_timed_out_payment_nobody_retried(client, db, stripe_sim, router):
    b = await paying_barber(client)
    await fault(stripe_sim, mode="timeout", delay_ms=2500, count=1, path_prefix="/v1/payment_intents")
    first = await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 1, "amount": "45.00", "payment_method": "pm_card_visa"})
    assert first.status_code == 504
    transaction_id = first.json()["transaction_id"]
    assert (await payment_row(db, transaction_id))["status"] == "pending"
    # Not yet: the attempt was touched moments ago (a retry may be driving it right now).
    await in_app(client, router.sweeper.sweep_pending, datetime.now(UTC))
    assert (await payment_row(db, transaction_id))["status"] == "pending"
    outcomes = await in_app(client, router.sweeper.sweep_pending, datetime.now(UTC) + LATER)
    assert outcomes.get("payment_completed", 0) >= 1
    payment = await payment_row(db, transaction_id)
    assert payment["status"] == "completed" and payment["stripe_payment_intent_id"] and payment["processed_at"]
    assert [e["status"] for e in await events_of(db, transaction_id)] == ["completed"]
    await in_app(client, router.sweeper.sweep_pending, datetime.now(UTC) + LATER)  # settled once, never again
    assert [e["status"] for e in await events_of(db, transaction_id)] == ["completed"]


async def test_sweeper_fails_an_attempt_the_processor_never_saw(client, db, stripe_sim, router):
    b = await paying_barber(client)
    await fault(stripe_sim, mode="error", count=1, path_prefix="/v1/payment_intents")  # 500, nothing recorded
    first = await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 1, "amount": "12.00", "payment_method": "pm_card_visa"})
    assert first.status_code == 502 and first.json()["code"] == "processor_outcome_unknown", first.text
    transaction_id = first.json()["transaction_id"]
    await in_app(client, router.sweeper.sweep_pending, datetime.now(UTC) + LATER)
    payment = await payment_row(db, transaction_id)
    assert (payment["status"], payment["failure_code"]) == ("failed", "not_found_at_processor")
    assert await events_of(db, transaction_id) == []  # it never reached Stripe: no payment to tell anyone of


async def test_a_canceled_payment_intent_is_recorded_canceled(client, db, stripe_sim, router):
    b = await paying_barber(client)
    paid = await pay(client, b, "60.00", method="pm_card_authenticationRequired")
    assert paid["status"] == "pending"  # waiting for 3-D Secure that never comes
    sdk = stripe.StripeClient(ROUTER_SIM_KEY, base_addresses={"api": stripe_sim},
                              http_client=stripe.AIOHTTPClient())
    await sdk.v1.payment_intents.cancel_async(paid["external_transaction_id"])
    await in_app(client, router.sweeper.sweep_pending, datetime.now(UTC) + LATER)
    payment = await payment_row(db, paid["transaction_id"])
    assert payment["status"] == "canceled" and payment["processed_at"] is not None
    assert [e["status"] for e in await events_of(db, paid["transaction_id"])] == ["canceled"]
    # A canceled attempt does not block the route: paying it again makes a new attempt.
    again = await client.post(f"{BASE}/process", headers=barber(b), json={
        "route_id": paid["route_id"], "payment_method": "pm_card_visa"})
    assert again.status_code == 200 and again.json()["status"] == "completed"
    assert again.json()["transaction_id"] != paid["transaction_id"]


async def test_the_sweeper_runs_in_one_replica_at_a_time(client, router_app, router_db):
    job = router_app.state.runtime.jobs["pending-sweeper"]
    async with router_db.connect() as holder:  # another replica, mid-run
        await holder.execute(sa.select(sa.func.pg_advisory_lock(job.key)))
        assert await in_app(client, job.run_once) is False
        await holder.execute(sa.select(sa.func.pg_advisory_unlock(job.key)))
    assert await in_app(client, job.run_once) is True


# ---- 9: bad input is a 4xx, never a 500 ---------------------------------------------------------------

def token(claims: dict) -> dict[str, str]:
    body = {"exp": int(time.time()) + 600, **claims}
    return {"Authorization": f"Bearer {jwt.encode(body, JWT_SECRET, algorithm='HS256')}"}


@pytest.mark.parametrize("claims", [
    {"sub": "1", "role": ["barber"]}, {"sub": "1", "role": {"barber": True}},
    {"sub": "2147483648", "role": "barber"}, {"sub": 99999999999, "role": "barber"},
    {"sub": "abc", "role": "barber"}, {"sub": "0", "role": "barber"}, {"sub": "-5", "role": "barber"},
    {"sub": -5, "role": "admin"}, {"sub": "admin", "role": "admin"},
])
async def test_bad_token_claims_are_401_and_write_nothing(client, db, claims):
    for method, path, body in [("PUT", "/config", {"payment_mode": "hybrid"}), ("GET", "/config", None),
                               ("POST", "/route", {"appointment_id": 1, "amount": 5})]:
        response = await client.request(method, BASE + path, headers=token(claims), json=body)
        assert response.status_code == 401 and response.json()["code"] == "unauthorized", (path, response.text)
    assert await rows(db, sa.select(t.hybrid_payment_configs).where(t.hybrid_payment_configs.c.barber_id <= 0)) == []


async def test_json_nested_ten_thousand_deep_is_400(client):
    deep = b'{"payment_mode": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    b = next_barber()
    for method, path in [("PUT", "/config"), ("POST", "/route"), ("POST", "/process"),
                         ("POST", f"/transactions/{uuid.uuid4()}/refund")]:
        for raw in (deep, b"[" * 10_000 + b"]" * 10_000):
            response = await client.request(method, BASE + path, content=raw,
                                             headers={**barber(b), "Content-Type": "application/json"})
            assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:200])


async def test_a_refused_connection_fails_the_attempt_and_a_retry_pays(make_settings, stripe_sim, db):
    """Connection refused: surely nothing happened, so the attempt fails (503) and the retry with
    the same key makes a new attempt that pays, instead of waiting for the sweeper."""
    from litestar.testing import AsyncTestClient

    from services.router.app import create_app
    from services.router.settings import RouterSettings

    closed = make_settings(RouterSettings, stripe_secret_key=ROUTER_SIM_KEY, stripe_api_base="http://127.0.0.1:1",
                           stripe_timeout=1.0, log_level="error")
    b = next_barber()
    body = {"appointment_id": 1, "amount": "20.00", "payment_method": "pm_card_visa"}
    headers = {**barber(b), "Idempotency-Key": f"refused-{b}"}
    async with AsyncTestClient(create_app(closed)) as down:
        assert (await down.put(f"{BASE}/config/{b}", headers=admin(),
                               json={"connect_account_id": f"acct_{b}"})).status_code == 200
        refused = await down.post(f"{BASE}/process", headers=headers, json=body)
        assert refused.status_code == 503 and refused.json()["code"] == "processor_unavailable", refused.text
    failed = await payment_row(db, refused.json()["transaction_id"])
    assert (failed["status"], failed["failure_code"]) == ("failed", "processor_unavailable")
    up = make_settings(RouterSettings, stripe_secret_key=ROUTER_SIM_KEY, stripe_api_base=stripe_sim,
                       stripe_timeout=1.0, log_level="error")
    async with AsyncTestClient(create_app(up)) as back:
        paid = await back.post(f"{BASE}/process", headers=headers, json=body)
    assert paid.status_code == 200 and paid.json()["status"] == "completed", paid.text
    assert paid.json()["transaction_id"] != refused.json()["transaction_id"]


async def test_an_unreachable_external_service_falls_back_to_the_platform(client, db, infra, event_names):
    """The barber's processor surely did nothing (the external service cannot even be reached) and
    fallback is on: the platform takes the payment, and the answer says so."""
    import nats

    b = await paying_barber(client, payment_mode="decentralized", fallback_enabled=True)
    nc = await nats.connect(infra.nats_url)
    event = new_event(ConnectionChanged(
        connection_id=b, barber_id=b, processor="square", account_id="sq-fallback", status="active",
        default_currency="USD", supports_payments=True, supports_refunds=True))
    await nc.jetstream().publish(event_names["EVENT_SUBJECT_PREFIX"] + "connection.changed", encode_event(event))
    await nc.close()

    async def external_route():
        r = await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 1, "amount": "25.00"})
        return r.json() if r.json().get("payment_type") == "external" else None

    route = await eventually(external_route, timeout=10)
    paid = await client.post(f"{BASE}/process", headers=barber(b),
                             json={"route_id": route["route_id"], "payment_method": "pm_card_visa"})
    assert paid.status_code == 200, paid.text
    body = paid.json()
    assert (body["payment_type"], body["status"], body["fallback_used"]) == ("centralized", "completed", True)
    assert body["fallback_from"]["processor"] == "square" and body["fallback_from"]["reason"] == "upstream_unavailable"
    # Paying the route again answers the platform payment; nothing is charged twice.
    again = await client.post(f"{BASE}/process", headers=barber(b),
                              json={"route_id": route["route_id"], "payment_method": "pm_card_visa"})
    assert again.json()["transaction_id"] == body["transaction_id"]


# ---- review findings: a refusal after a timeout, retries under changed rules, bad methods ---------

async def sim_intents_of(stripe_sim, transaction_id: str) -> list[dict]:
    found = (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
    return [pi for pi in found if pi["metadata"].get("transaction_id") == transaction_id]


async def test_a_refusal_after_a_timeout_leaves_the_attempt_pending_and_charges_once(
        client, db, make_settings, stripe_sim):
    """The first send reached Stripe but its answer was late; the retry cannot even connect. That
    says nothing about the first send: the attempt stays pending (not failed), so the next retry
    settles the same charge instead of making a second one."""
    from litestar.testing import AsyncTestClient

    from services.router.app import create_app
    from services.router.settings import RouterSettings

    b = await paying_barber(client)
    body = {"appointment_id": 1, "amount": "27.00", "payment_method": "pm_card_visa"}
    headers = {**barber(b), "Idempotency-Key": f"late-then-refused-{b}"}
    await fault(stripe_sim, mode="timeout", delay_ms=2500, count=1, path_prefix="/v1/payment_intents")
    late = await client.post(f"{BASE}/process", headers=headers, json=body)
    assert late.status_code == 504 and late.json()["code"] == "processor_timeout", late.text
    closed = make_settings(RouterSettings, stripe_secret_key=ROUTER_SIM_KEY, stripe_api_base="http://127.0.0.1:1",
                           stripe_timeout=1.0, log_level="error")
    async with AsyncTestClient(create_app(closed)) as down:
        refused = await down.post(f"{BASE}/process", headers=headers, json=body)
    assert refused.status_code == 503 and refused.json()["code"] == "processor_unavailable", refused.text
    assert refused.json()["transaction_id"] == late.json()["transaction_id"]
    assert (await payment_row(db, late.json()["transaction_id"]))["status"] == "pending"
    paid = await client.post(f"{BASE}/process", headers=headers, json=body)
    assert paid.status_code == 200 and paid.json()["status"] == "completed", paid.text
    assert paid.json()["transaction_id"] == late.json()["transaction_id"]
    assert [pi["amount"] for pi in await sim_intents_of(stripe_sim, paid.json()["transaction_id"])] == [2700]


async def test_a_route_and_pay_retry_keeps_its_route_though_the_rules_changed(client, db, stripe_sim):
    """Route-and-pay under an Idempotency-Key times out; meanwhile the barber's rules change so
    that no route could be decided now (decentralized, no connection, no fallback), and the rate
    too. The retry is the same request: it settles the same route and charge as decided, instead
    of deciding again (and refusing a payment that was taken)."""
    b = await paying_barber(client)
    body = {"appointment_id": 1, "amount": "50.00", "payment_method": "pm_card_visa"}
    headers = {**barber(b), "Idempotency-Key": f"rules-changed-{b}"}
    await fault(stripe_sim, mode="timeout", delay_ms=2500, count=1, path_prefix="/v1/payment_intents")
    late = await client.post(f"{BASE}/process", headers=headers, json=body)
    assert late.status_code == 504, late.text
    changed = await client.put(f"{BASE}/config/{b}", headers=admin(), json={
        "commission_rate": "0.30", "connect_account_id": f"acct_{b}", "payment_mode": "decentralized",
        "fallback_enabled": False})
    assert changed.status_code == 200, changed.text
    paid = await client.post(f"{BASE}/process", headers=headers, json=body)
    assert paid.status_code == 200, paid.text
    assert (paid.json()["transaction_id"], paid.json()["payment_type"], paid.json()["commission_amount"]) == (
        late.json()["transaction_id"], "centralized", "5.00")
    intents = await sim_intents_of(stripe_sim, paid.json()["transaction_id"])
    assert [(pi["amount"], pi["application_fee_amount"]) for pi in intents] == [(5000, 500)]
    decisions = await rows(db, sa.select(t.routing_decisions).where(t.routing_decisions.c.barber_id == b))
    assert len(decisions) == 1
    # A new request (another key) is decided under the new rules: no route without a connection.
    fresh = await client.post(f"{BASE}/process", headers={**barber(b), "Idempotency-Key": f"after-{b}"}, json=body)
    assert fresh.status_code == 422 and fresh.json()["reason"] == "no_external_connection", fresh.text


@pytest.mark.parametrize("method", ["acct_1Nv0FGQ9RKHgCVdK", "acct_"])
async def test_a_connect_account_is_not_a_payment_method(client, method):
    """Stripe would take `acct_...` as a source and pull the money from a connected account."""
    b = await paying_barber(client)
    response = await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 1, "amount": "10.00", "payment_method": method})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["payment_method"], response.text
