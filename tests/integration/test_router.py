"""The router against real Postgres, NATS and the Stripe simulator: configs, routing,
idempotency, centralized payments, declines, timeouts, refunds, and money conservation.
"""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal

import msgspec
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from services.router import tables as t
from services.router.app import create_app
from services.router.settings import RouterSettings
from shared.db import PlatformTables
from shared.events import encode_event, new_event
from tests.integration.router_support import BASE, admin, barber, sim_call
from tests.support import eventually

_ids = itertools.count(1)
outbox = PlatformTables(t.metadata).outbox


def next_barber() -> int:
    """A barber id no other test (or earlier run in this database) uses."""
    return 500_000 + next(_ids)


async def scalar(db, query):
    async with db.connect() as conn:
        return await conn.scalar(query)


async def rows(db, query):
    async with db.connect() as conn:
        return (await conn.execute(query)).mappings().all()


async def set_config(client, barber_id: int, **fields) -> dict:
    response = await client.put(f"{BASE}/config/{barber_id}", json=fields, headers=admin())
    assert response.status_code == 200, response.text
    return response.json()


async def events_for(db, event_type: str, key: str, value) -> list[dict]:
    found = await rows(db, sa.select(outbox.c.body).where(outbox.c.event_type == event_type).order_by(outbox.c.id))
    payloads = [msgspec.json.decode(r["body"])["payload"] for r in found]
    return [p for p in payloads if p.get(key) == value]


# ---- configs ----------------------------------------------------------------------------

async def test_barber_without_a_row_gets_platform_defaults(client):
    b = next_barber()
    body = (await client.get(f"{BASE}/config", headers=barber(b))).json()
    assert body["barber_id"] == b and body["is_default"] is True
    assert (body["payment_mode"], body["commission_rate"], body["version"]) == ("centralized", "0.20", 0)


async def test_barber_changes_own_config_and_emits_config_changed(client, db):
    b = next_barber()
    response = await client.put(f"{BASE}/config", headers=barber(b), json={
        "payment_mode": "hybrid", "min_external_amount": 20, "split_threshold": "100.00",
        "preferred_processor": "square"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["payment_mode"], body["min_external_amount"], body["split_threshold"], body["version"]) == (
        "hybrid", "20.00", "100.00", 1)
    events = await events_for(db, "config.changed", "barber_id", b)
    assert len(events) == 1 and events[0]["payment_mode"] == "hybrid" and events[0]["commission_rate"] == "0.20"
    again = await client.put(f"{BASE}/config", headers=barber(b), json={"fallback_enabled": False})
    assert again.json()["version"] == 2 and again.json()["payment_mode"] == "hybrid"
    assert len(await events_for(db, "config.changed", "barber_id", b)) == 2


async def test_only_admins_change_commission_or_read_others(client):
    b = next_barber()
    refused = await client.put(f"{BASE}/config", headers=barber(b), json={"commission_rate": "0.05"})
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert (await client.get(f"{BASE}/config/{b + 1}", headers=barber(b))).status_code == 403
    assert (await client.put(f"{BASE}/config/{b + 1}", headers=barber(b), json={})).status_code == 403
    body = await set_config(client, b, commission_rate="0.125")
    assert body["commission_rate"] == "0.125"
    assert (await client.get(f"{BASE}/config/{b}", headers=admin())).json()["commission_rate"] == "0.125"


async def test_config_version_conflict_and_incoherent_rules(client):
    b = next_barber()
    await set_config(client, b, payment_mode="hybrid")
    stale = await client.put(f"{BASE}/config/{b}", headers=admin(), json={"fallback_enabled": False,
                                                                         "expected_version": 7})
    assert stale.status_code == 409 and stale.json()["code"] == "version_conflict"
    bad = await client.put(f"{BASE}/config/{b}", headers=admin(), json={"min_external_amount": 500,
                                                                       "max_platform_amount": 100})
    assert bad.status_code == 422 and bad.json()["field"] == "min_external_amount"
    for body, field in [({"commission_rate": 1.5}, "commission_rate"), ({"payment_mode": "sometimes"}, "payment_mode"),
                        ({"split_threshold": -5}, "split_threshold"), ({"connect_account_id": "bank_1"}, None),
                        ({"nonsense": 1}, None)]:
        response = await client.put(f"{BASE}/config/{b}", headers=admin(), json=body)
        assert response.status_code == 422, (body, response.text)
        if field:
            assert field in response.json()["detail"]


# ---- routing ----------------------------------------------------------------------------

async def test_route_records_a_centralized_decision(client, db):
    b = next_barber()
    response = await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 1, "amount": 50})
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in ("barber_id", "payment_type", "processor", "connection_id", "amount", "currency",
                                 "commission_rate", "commission_amount", "estimated_processor_fee", "barber_net",
                                 "reason", "fallback_used")} == {
        "barber_id": b, "payment_type": "centralized", "processor": "stripe", "connection_id": None,
        "amount": "50.00", "currency": "USD", "commission_rate": "0.20", "commission_amount": "10.00",
        "estimated_processor_fee": "1.75", "barber_net": "40.00", "reason": "mode_centralized",
        "fallback_used": False}
    stored = await rows(db, sa.select(t.routing_decisions).where(t.routing_decisions.c.route_id == uuid.UUID(
        body["route_id"])))
    assert len(stored) == 1 and stored[0]["amount"] == Decimal("50.0000")


async def test_route_authorisation(client):
    b = next_barber()
    body = {"appointment_id": 2, "amount": "10.00"}
    assert (await client.post(f"{BASE}/route", json=body)).status_code == 401
    assert (await client.post(f"{BASE}/route", json=body, headers={"Authorization": "Bearer nope"})).status_code == 401
    other = await client.post(f"{BASE}/route", json={**body, "barber_id": b + 1}, headers=barber(b))
    assert other.status_code == 403
    missing = await client.post(f"{BASE}/route", json=body, headers=admin())
    assert missing.status_code == 422 and missing.json()["field"] == "barber_id"
    assert (await client.post(f"{BASE}/route", json={**body, "barber_id": b}, headers=admin())).status_code == 200


BAD_BODIES = [
    (b'{"appointment_id": 1, "amount": -5}', "amount"),
    (b'{"appointment_id": 1, "amount": 0}', "amount"),
    (b'{"appointment_id": 1, "amount": "0.00"}', "amount"),
    (b'{"appointment_id": 1, "amount": 10.001}', "amount"),
    (b'{"appointment_id": 1, "amount": "NaN"}', "amount"),
    (b'{"appointment_id": 1, "amount": "Infinity"}', "amount"),
    (b'{"appointment_id": 1, "amount": 100000.01}', "amount"),
    (b'{"appointment_id": 1, "amount": 1e30}', "amount"),
    (b'{"appointment_id": 1, "amount": true}', "amount"),
    (b'{"appointment_id": 1, "amount": [50]}', "amount"),
    (b'{"appointment_id": 1, "amount": "fifty"}', "amount"),
    (b'{"appointment_id": 1}', "amount"),
    (b'{"appointment_id": "one", "amount": 5}', "appointment_id"),
    (b'{"appointment_id": -1, "amount": 5}', "appointment_id"),
    (b'{"appointment_id": 1, "amount": 5, "currency": "XYZ"}', "currency"),
    (b'{"appointment_id": 1, "amount": 5, "currency": 840}', "currency"),
    (b'{"appointment_id": 1, "amount": 5.5, "currency": "JPY"}', "amount"),
    (b'{"appointment_id": 1, "amount": 5, "client_id": "x"}', "client_id"),
    (b'{"appointment_id": 1, "amount": 5, "tip": 1}', None),
    (b'{"appointment_id": 1, "amount": 5', None),
    (b'', None),
    (b'[1, 2]', None),
    (b'null', None),
    (b'{"appointment_id": 1, "amount": NaN}', None),
]


@pytest.mark.parametrize(("raw", "field"), BAD_BODIES)
async def test_bad_route_bodies_are_4xx_and_write_nothing(client, db, raw, field):
    b = next_barber()
    response = await client.post(f"{BASE}/route", content=raw,
                                 headers={**barber(b), "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert body["code"] in ("validation_error", "invalid_json") and body["status"] == response.status_code
    if field:
        assert field in body["detail"]
    assert await scalar(db, sa.select(sa.func.count()).where(t.routing_decisions.c.barber_id == b)) == 0


async def test_route_idempotency(client, db):
    b = next_barber()
    headers = {**barber(b), "Idempotency-Key": f"route-{b}"}
    body = {"appointment_id": 77, "amount": "42.00"}
    first = await client.post(f"{BASE}/route", json=body, headers=headers)
    second = await client.post(f"{BASE}/route", json=body, headers=headers)
    assert first.json() == second.json() and second.headers["idempotent-replayed"] == "true"
    reused = await client.post(f"{BASE}/route", json={**body, "amount": "43.00"}, headers=headers)
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    assert await scalar(db, sa.select(sa.func.count()).where(t.routing_decisions.c.barber_id == b)) == 1
    # (Concurrent same-key requests are raced against a real server in test_router_concurrency.py.)




async def test_connection_read_model_drives_external_routes(client, db, infra, event_names):
    import nats

    b = next_barber()
    connection_id = b  # unique enough for this run
    await set_config(client, b, payment_mode="decentralized", fallback_enabled=False)
    refused = await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 3, "amount": 60})
    assert refused.status_code == 422 and refused.json()["code"] == "no_payment_route"

    nc = await nats.connect(infra.nats_url)
    js = nc.jetstream()
    subject = event_names["EVENT_SUBJECT_PREFIX"] + "connection.changed"
    active = new_event("connection.changed", {
        "connection_id": connection_id, "barber_id": b, "processor": "square", "account_id": "sq-1",
        "status": "active", "default_currency": "USD", "supports_payments": True, "supports_refunds": True,
        "processing_fees": {"percent": "2.6", "fixed": "0.10"}})
    await js.publish(subject, encode_event(active))

    async def routed_external():
        r = await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 4, "amount": 60})
        return r.json() if r.status_code == 200 else None

    body = await eventually(routed_external, timeout=10, interval=0.2)
    assert (body["payment_type"], body["processor"], body["connection_id"], body["reason"]) == (
        "external", "square", connection_id, "mode_decentralized")
    # 60.00 * 20 % = 12.00; fee 2.6 % + 0.10 = 1.66; net 46.34
    assert (body["commission_amount"], body["estimated_processor_fee"], body["barber_net"]) == (
        "12.00", "1.66", "46.34")
    options = (await client.get(f"{BASE}/my-options", headers=barber(b))).json()
    assert [(p["connection_id"], p["status"], p["usable"]) for p in options["processors"]] == [
        (connection_id, "active", True)]
    process = await client.post(f"{BASE}/process", headers=barber(b),
                                json={"route_id": body["route_id"], "payment_method": "cnon:card-nonce-ok"})
    # No external service runs here: unreachable, so surely nothing was charged; fallback is off.
    assert process.status_code == 503 and process.json()["code"] == "upstream_unavailable"

    # An older event arriving late must not undo the newer state.
    disconnected = new_event("connection.changed", {**active.data(), "status": "disconnected"})
    stale = msgspec.structs.replace(new_event("connection.changed", {**active.data(), "status": "active"}),
                                    occurred_at=active.occurred_at.replace(year=2020))
    await js.publish(subject, encode_event(disconnected))
    await js.publish(subject, encode_event(stale))
    await nc.close()

    # Wait for the stale event itself to be applied (it comes after the newer one), then look:
    # a poll of the route alone could land between the two events and prove nothing.
    processed = PlatformTables(t.metadata).processed_events

    async def stale_applied():
        return await scalar(db, sa.select(sa.func.count()).where(processed.c.event_id == stale.event_id))

    await eventually(stale_applied, timeout=10, interval=0.1)
    refused = await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 5, "amount": 60})
    assert refused.status_code == 422 and refused.json()["reason"] == "no_external_connection"
    status = await scalar(db, sa.select(t.processor_connections.c.status).where(
        t.processor_connections.c.connection_id == connection_id))
    assert status == "disconnected"


async def test_kill_switch(make_settings, stripe_sim):
    settings = make_settings(RouterSettings, hybrid_payments_enabled=False, log_level="error")
    async with AsyncTestClient(create_app(settings)) as off:
        b = next_barber()
        assert (await off.put(f"{BASE}/config/{b}", headers=admin(), json={"payment_mode": "decentralized"})
                ).status_code == 200
        body = (await off.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 1, "amount": 80})).json()
        assert (body["payment_type"], body["reason"]) == ("centralized", "hybrid_payments_disabled")
        options = (await off.get(f"{BASE}/my-options", headers=barber(b))).json()
        assert options["hybrid_payments_enabled"] is False and options["available_modes"] == ["centralized"]


# ---- centralized payments ---------------------------------------------------------------

async def paying_barber(client) -> int:
    b = next_barber()
    await set_config(client, b, payment_mode="centralized", commission_rate="0.15",
                     connect_account_id=f"acct_{b}")
    return b


async def sim_intents(stripe_sim) -> list[dict]:
    return (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]


async def test_centralized_payment_records_fee_destination_and_one_event(client, db, stripe_sim):
    b = await paying_barber(client)
    response = await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 10, "amount": "80.00", "payment_method": "pm_card_visa"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["payment_type"], body["processor"], body["amount"], body["commission_amount"]) == (
        "completed", "centralized", "stripe", "80.00", "12.00")
    intent = next(pi for pi in await sim_intents(stripe_sim) if pi["id"] == body["external_transaction_id"])
    assert (intent["amount"], intent["application_fee_amount"], intent["transfer_data"]["destination"],
            intent["status"]) == (8000, 1200, f"acct_{b}", "succeeded")
    payment = (await rows(db, sa.select(t.platform_payments).where(
        t.platform_payments.c.id == uuid.UUID(body["transaction_id"]))))[0]
    assert (payment["status"], payment["commission_amount"], payment["destination_account"]) == (
        "completed", Decimal("12.0000"), f"acct_{b}")
    events = await events_for(db, "transaction.recorded", "transaction_id", body["transaction_id"])
    assert len(events) == 1
    assert {k: events[0][k] for k in ("status", "amount", "commission_amount", "payment_type", "source")} == {
        "status": "completed", "amount": "80.00", "commission_amount": "12.00", "payment_type": "centralized",
        "source": "live"}
    # The same route paid again (another key, or none) charges nothing more.
    again = await client.post(f"{BASE}/process", headers=barber(b), json={
        "route_id": body["route_id"], "payment_method": "pm_card_visa"})
    assert again.json()["transaction_id"] == body["transaction_id"]
    assert sum(1 for pi in await sim_intents(stripe_sim)
               if pi["metadata"].get("route_id") == body["route_id"]) == 1


async def test_declined_card_is_a_recorded_failure_and_402(client, db):
    b = await paying_barber(client)
    response = await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 11, "amount": 25, "payment_method": "pm_card_chargeDeclined"})
    assert response.status_code == 402
    body = response.json()
    assert body["code"] == "payment_declined" and body["decline_code"] and body["transaction_id"]
    payment = (await rows(db, sa.select(t.platform_payments).where(
        t.platform_payments.c.id == uuid.UUID(body["transaction_id"]))))[0]
    assert payment["status"] == "failed" and payment["failure_code"] == body["decline_code"]
    events = await events_for(db, "transaction.recorded", "transaction_id", body["transaction_id"])
    assert [e["status"] for e in events] == ["failed"]


async def test_timeout_is_504_and_a_retry_settles_without_a_second_charge(client, db, stripe_sim):
    b = await paying_barber(client)
    headers = {**barber(b), "Idempotency-Key": f"timeout-{b}"}
    body = {"appointment_id": 12, "amount": "33.30", "payment_method": "pm_card_visa"}
    await sim_call(stripe_sim, "POST", "/_sim/faults", {"mode": "timeout", "delay_ms": 3000, "count": 1,
                                                        "path_prefix": "/v1/payment_intents"})
    try:
        first = await client.post(f"{BASE}/process", json=body, headers=headers)
    finally:
        await sim_call(stripe_sim, "POST", "/_sim/faults", {"mode": "none"})
    assert first.status_code == 504 and first.json()["code"] == "processor_timeout"
    transaction_id = first.json()["transaction_id"]
    retry = await client.post(f"{BASE}/process", json=body, headers=headers)
    assert retry.status_code == 200, retry.text
    assert retry.json()["transaction_id"] == transaction_id and retry.json()["status"] == "completed"
    charged = [pi for pi in await sim_intents(stripe_sim) if pi["metadata"].get("transaction_id") == transaction_id]
    assert len(charged) == 1
    assert len(await events_for(db, "transaction.recorded", "transaction_id", transaction_id)) == 1
    replay = await client.post(f"{BASE}/process", json=body, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == retry.json()


async def test_partial_and_full_refunds(client, db, stripe_sim):
    b = await paying_barber(client)
    paid = (await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 13, "amount": "100.00", "payment_method": "pm_card_visa"})).json()
    url = f"{BASE}/transactions/{paid['transaction_id']}/refund"
    partial = await client.post(url, headers=barber(b), json={"amount": "30.00"})
    assert partial.status_code == 200, partial.text
    assert (partial.json()["status"], partial.json()["refunded_amount"]) == ("partially_refunded", "30.00")
    too_much = await client.post(url, headers=barber(b), json={"amount": "70.01"})
    assert too_much.status_code == 422 and too_much.json()["code"] == "refund_exceeds_payment"
    assert (await client.post(url, headers=barber(b + 1), json={})).status_code == 404
    rest = await client.post(url, headers=barber(b))
    assert (rest.json()["status"], rest.json()["refund_amount"], rest.json()["refunded_amount"]) == (
        "refunded", "70.00", "100.00")
    assert (await client.post(url, headers=barber(b), json={})).status_code == 409
    statuses = [e["status"] for e in await events_for(db, "transaction.recorded", "transaction_id",
                                                      paid["transaction_id"])]
    assert statuses == ["completed", "partially_refunded", "refunded"]
    state = await sim_call(stripe_sim, "GET", "/_sim/state")
    refunds = [r for a in state["accounts"] for r in a["refunds"] if r["payment_intent"] == paid[
        "external_transaction_id"]]
    assert sorted(r["amount"] for r in refunds) == [3000, 7000]


async def test_process_of_another_barbers_route_is_404(client):
    b = await paying_barber(client)
    route = (await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 14, "amount": 9})).json()
    response = await client.post(f"{BASE}/process", headers=barber(b + 1000),
                                 json={"route_id": route["route_id"], "payment_method": "pm_card_visa"})
    assert response.status_code == 404


async def test_route_and_pay_remembers_each_answer_under_its_key(client, db, stripe_sim):
    """Route-and-pay claims its key in the statement that records the route (one round trip fewer):
    a paid answer, a decline and a refusal (no payout account: the route is kept, nothing charged)
    are each given again for the same key and body, never paid twice; another body under a used key
    is refused."""
    b = await paying_barber(client)
    owes_nothing = next_barber()  # centralized with no payout account: refused, nothing charged
    await set_config(client, owes_nothing, payment_mode="centralized")
    cases = [
        (b, "paid", {"appointment_id": 5001, "amount": "61.00", "payment_method": "pm_card_visa"}, 200),
        (b, "declined", {"appointment_id": 5002, "amount": "62.00", "payment_method": "pm_card_chargeDeclined"}, 402),
        (owes_nothing, "refused", {"appointment_id": 5003, "amount": "63.00", "payment_method": "pm_card_visa"}, 422),
    ]
    for who, name, body, status in cases:
        headers = {**barber(who), "Idempotency-Key": f"remember-{name}-{who}"}
        first = await client.post(f"{BASE}/process", headers=headers, json=body)
        again = await client.post(f"{BASE}/process", headers=headers, json=body)
        assert (first.status_code, again.status_code) == (status, status), (name, first.text)
        assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true", name
        assert "idempotent-replayed" not in first.headers
        other = await client.post(f"{BASE}/process", headers=headers, json={**body, "amount": "1.00"})
        assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused", name
    payments = await rows(db, sa.select(t.platform_payments).where(t.platform_payments.c.barber_id == b))
    assert sorted(p["status"] for p in payments) == ["completed", "failed"]
    assert len([pi for pi in await sim_intents(stripe_sim) if pi["metadata"].get("barber_id") == str(b)]) == 2
    assert await scalar(db, sa.select(sa.func.count()).where(t.routing_decisions.c.barber_id == owes_nothing)) == 1
    assert await scalar(db, sa.select(sa.func.count()).where(t.platform_payments.c.barber_id == owes_nothing)) == 0


async def test_money_is_conserved_across_many_payments(client, db, stripe_sim):
    """Every cent charged is recorded once and every commission once: sums agree three ways."""
    b = await paying_barber(client)
    amounts = [Decimal(a) for a in ("0.50", "0.99", "1.01", "9.99", "10.05", "33.33", "49.95", "66.67", "99.99",
                                     "100.00", "123.45", "250.10", "333.33", "999.99", "1234.56")]
    methods = ["pm_card_visa"] * 12 + ["pm_card_chargeDeclined"] * 3
    results = [
        await client.post(f"{BASE}/process", headers={**barber(b), "Idempotency-Key": f"cons-{b}-{i}"},
                          json={"appointment_id": 1000 + i, "amount": str(a), "payment_method": m})
        for i, (a, m) in enumerate(zip(amounts, methods, strict=True))
    ]
    assert sorted(r.status_code for r in results) == [200] * 12 + [402] * 3
    completed = [r.json() for r in results if r.status_code == 200]
    paid_amounts = sorted(Decimal(c["amount"]) for c in completed)
    assert paid_amounts == sorted(a for a, m in zip(amounts, methods) if m == "pm_card_visa")

    payments = await rows(db, sa.select(t.platform_payments).where(t.platform_payments.c.barber_id == b))
    intents = [pi for pi in await sim_intents(stripe_sim) if pi["metadata"].get("barber_id") == str(b)
               and pi["status"] == "succeeded"]
    events = [e for e in await events_for(db, "transaction.recorded", "barber_id", b) if e["status"] == "completed"]
    ok = [p for p in payments if p["status"] == "completed"]
    assert len(ok) == len(intents) == len(events) == 12
    cents = lambda d: int(d * 100)  # noqa: E731
    assert sum(cents(p["amount"]) for p in ok) == sum(pi["amount"] for pi in intents) == sum(
        cents(Decimal(e["amount"])) for e in events) == sum(cents(a) for a in paid_amounts)
    assert sum(cents(p["commission_amount"]) for p in ok) == sum(pi["application_fee_amount"] for pi in intents) == sum(
        cents(Decimal(e["commission_amount"])) for e in events)
    # Commission is exactly 15 % of each amount, half-up to the cent (integer oracle in cents).
    for p in ok:
        assert cents(p["commission_amount"]) == (cents(p["amount"]) * 15 * 2 + 100) // 200
    assert len({e["transaction_id"] for e in events}) == 12


# ---- lookups ------------------------------------------------------------------------------------

async def test_a_caller_looks_up_its_route_and_transaction(client):
    b = await paying_barber(client)
    paid = (await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 21, "amount": "40.00", "payment_method": "pm_card_visa"})).json()
    route = await client.get(f"{BASE}/routes/{paid['route_id']}", headers=barber(b))
    assert route.status_code == 200 and route.json()["amount"] == "40.00"
    await client.post(f"{BASE}/transactions/{paid['transaction_id']}/refund", headers=barber(b),
                      json={"amount": "15.00"})
    found = await client.get(f"{BASE}/transactions/{paid['transaction_id']}", headers=barber(b))
    assert found.status_code == 200
    body = found.json()
    assert (body["status"], body["amount"], body["refunded_amount"], body["commission_amount"]) == (
        "partially_refunded", "40.00", "15.00", "6.00")
    assert [(r["amount"], r["status"]) for r in body["refunds"]] == [("15.00", "succeeded")]
    assert body["processed_at"] and body["external_transaction_id"] == paid["external_transaction_id"]
    # Another barber learns nothing (404, not 403); an admin sees it.
    for path in (f"/routes/{paid['route_id']}", f"/transactions/{paid['transaction_id']}"):
        assert (await client.get(BASE + path, headers=barber(b + 1))).status_code == 404
        assert (await client.get(BASE + path, headers=admin())).status_code == 200
    # Not a platform payment: the router asks the external service, which does not run here.
    unknown = await client.get(f"{BASE}/transactions/{uuid.uuid4()}", headers=admin())
    assert unknown.status_code == 503 and unknown.json()["code"] == "upstream_unavailable"


async def test_admin_lists_payments_with_filters_and_pages(client):
    b = await paying_barber(client)
    made = []
    for i, (amount, method) in enumerate([("10.00", "pm_card_visa"), ("11.00", "pm_card_chargeDeclined"),
                                          ("12.00", "pm_card_visa"), ("13.00", "pm_card_visa"),
                                          ("14.00", "pm_card_visa")]):
        response = await client.post(f"{BASE}/process", headers=barber(b), json={
            "appointment_id": 30 + i, "amount": amount, "payment_method": method})
        made.append(response.json()["transaction_id"])
    seen, cursor = [], None
    while True:
        params = {"barber_id": b, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"{BASE}/transactions", headers=admin(), params=params)).json()
        assert len(page["items"]) <= 2
        seen += [item["transaction_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))  # newest first, each exactly once
    failed = (await client.get(f"{BASE}/transactions", headers=admin(),
                               params={"barber_id": b, "status": "failed"})).json()
    assert [item["transaction_id"] for item in failed["items"]] == [made[1]]
    future = (await client.get(f"{BASE}/transactions", headers=admin(),
                               params={"barber_id": b, "from": "2099-01-01T00:00:00Z"})).json()
    assert future == {"items": [], "next_cursor": None}
    external = (await client.get(f"{BASE}/transactions", headers=admin(),
                                 params={"barber_id": b, "payment_type": "external"})).json()
    assert external["items"] == []  # the external service keeps those
    for params, field in [({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"cursor": "nope"}, "cursor"),
                          ({"status": "lost"}, "status"), ({"from": "yesterday"}, "from"),
                          ({"from": "2026-01-01T00:00:00"}, "from"), ({"barber_id": 0}, "barber_id")]:
        response = await client.get(f"{BASE}/transactions", headers=admin(), params=params)
        assert response.status_code == 422 and field in response.text, (params, response.text)
    assert (await client.get(f"{BASE}/transactions", headers=barber(b))).status_code == 403
