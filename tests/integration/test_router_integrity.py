"""Money integrity of the router (issue 14), each defect reproduced against real Postgres, NATS and
the Stripe simulator:

7. one "stripe" circuit for the platform and every barber: circuits are per connection, and the
   platform's own circuit is apart and checked for centralized payments
8. a replayed fallback answer lied, and the platform payment recorded the external processor's fee
11. a barber could set any `connect_account_id` (where its payouts and commission debits go)
15. the connections read model ordered changes by wall clock where the connection's version exists
"""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from decimal import Decimal

import msgspec
import sqlalchemy as sa

from services.router import tables as t
from shared.events import ConnectionChanged, ProcessingFees, encode_event, new_event
from tests.integration.router_support import BASE, admin, barber, sim_call
from tests.support import eventually

_ids = itertools.count(1)


def next_barber() -> int:
    return 1_500_000 + next(_ids)


async def rows(db, query) -> list[dict]:
    async with db.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def configured(client, b: int, **config) -> None:
    response = await client.put(f"{BASE}/config/{b}", headers=admin(), json={
        "commission_rate": "0.10", "connect_account_id": f"acct_{b}", **config})
    assert response.status_code == 200, response.text


async def announce(infra, event_names, event) -> None:
    import nats

    nc = await nats.connect(infra.nats_url)
    await nc.jetstream().publish(event_names["EVENT_SUBJECT_PREFIX"] + "connection.changed", encode_event(event))
    await nc.close()


async def connected(client, infra, event_names, b: int, connection_id: int, processor: str = "stripe",
                    **extra) -> None:
    """Barber `b` gets an active connection through `connection.changed`, as the external service says."""
    await announce(infra, event_names, new_event(ConnectionChanged(
        connection_id=connection_id, barber_id=b, processor=processor, account_id=f"{processor}-{b}",
        status="active", default_currency="USD", supports_payments=True, supports_refunds=True, **extra)))

    async def routed_external():
        r = await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 1, "amount": "25.00"})
        return r.json() if r.status_code == 200 and r.json().get("payment_type") == "external" else None

    await eventually(routed_external, timeout=10)


async def intents(stripe_sim) -> list[dict]:
    return (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]


# ---- 7: a circuit is one account's --------------------------------------------------------------------

async def test_one_barbers_failing_processor_leaves_every_other_barbers_external_route(client, infra, event_names):
    """Barber A's own Stripe keeps failing (here: the external service answers nothing); its circuit
    opens and A's routes avoid it. Barber B's own Stripe is another account: B's payments still
    route to it (before, one "stripe" circuit switched external Stripe off for every barber)."""
    a, b = next_barber(), next_barber()
    await configured(client, a, payment_mode="decentralized", preferred_processor="stripe", fallback_enabled=False)
    await configured(client, b, payment_mode="decentralized", preferred_processor="stripe", fallback_enabled=True)
    for barber_id in (a, b):
        await connected(client, infra, event_names, barber_id, connection_id=barber_id)
    for n in range(5):
        failed = await client.post(f"{BASE}/process", headers=barber(a), json={
            "appointment_id": n + 1, "amount": "20.00", "payment_method": "pm_card_visa"})
        assert failed.status_code == 503, failed.text
    route_a = await client.post(f"{BASE}/route", headers=barber(a), json={"appointment_id": 9, "amount": "20.00"})
    assert (route_a.status_code, route_a.json()["reason"]) == (422, "processor_unavailable"), route_a.text
    route_b = await client.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 9, "amount": "20.00"})
    assert (route_b.json()["payment_type"], route_b.json()["connection_id"]) == ("external", b), route_b.text


async def test_the_platforms_own_circuit_is_apart_and_checked_for_centralized_payments(client, stripe_sim):
    """Five 5xx from the platform's Stripe open the platform's circuit: the next centralized payment
    is refused at once (503, nothing sent, nothing charged) instead of calling Stripe again."""
    b = next_barber()
    await configured(client, b)
    await sim_call(stripe_sim, "POST", "/_sim/faults", {"mode": "error", "status": 500, "count": 5,
                                                        "path_prefix": "/v1/payment_intents"})
    for n in range(5):
        failed = await client.post(f"{BASE}/process", headers=barber(b), json={
            "appointment_id": n + 1, "amount": "11.00", "payment_method": "pm_card_visa"})
        assert failed.status_code == 502, failed.text
    before = len(await intents(stripe_sim))
    refused = await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 7, "amount": "11.00", "payment_method": "pm_card_visa"})
    assert (refused.status_code, refused.json()["code"]) == (503, "processor_unavailable"), refused.text
    assert refused.json()["nothing_happened"] is True
    assert len(await intents(stripe_sim)) == before  # Stripe was not called
    client.app.state.router.payments.circuits.circuit("platform").record_success()  # out of the next tests' way


# ---- 8: the fallback answer, replayed, is the answer -------------------------------------------------

async def test_a_replayed_fallback_answer_says_fallback_and_the_platform_fee_is_stripes(client, db, infra,
                                                                                     event_names):
    b = next_barber()
    await configured(client, b, payment_mode="decentralized", preferred_processor="square", fallback_enabled=True)
    await connected(client, infra, event_names, b, connection_id=b, processor="square",
                    processing_fees=ProcessingFees(percent=Decimal("5.0"), fixed=Decimal("1.00")))
    headers = {**barber(b), "Idempotency-Key": f"fallback-{b}"}
    body = {"appointment_id": 5, "amount": "100.00", "payment_method": "pm_card_visa"}
    first = await client.post(f"{BASE}/process", headers=headers, json=body)
    assert first.status_code == 200 and first.json()["fallback_used"] is True, first.text
    replay = await client.post(f"{BASE}/process", headers=headers, json=body)
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.json() == first.json()
    again = await client.post(f"{BASE}/process", headers=barber(b), json={
        "route_id": first.json()["route_id"], "payment_method": "pm_card_visa"})
    assert again.json() == first.json()  # paying the route again answers the same, fallback and all
    [payment] = await rows(db, sa.select(t.platform_payments).where(
        t.platform_payments.c.id == uuid.UUID(first.json()["transaction_id"])))
    # Stripe's list price (2.9 % + 0.30), not the barber's Square fees (5 % + 1.00).
    assert payment["processor_fee"] == Decimal("3.2000")


# ---- 11: payouts go where an admin said ---------------------------------------------------------------

async def test_a_barber_cannot_point_its_payouts_at_another_account(client):
    b = next_barber()
    refused = await client.put(f"{BASE}/config", headers=barber(b), json={"connect_account_id": "acct_somebody"})
    assert refused.status_code == 403 and refused.json()["field"] == "connect_account_id", refused.text
    shown = await client.get(f"{BASE}/config", headers=barber(b))
    assert shown.json()["connect_account_id"] is None
    ok = await client.put(f"{BASE}/config/{b}", headers=admin(), json={"connect_account_id": f"acct_{b}"})
    assert ok.status_code == 200 and ok.json()["connect_account_id"] == f"acct_{b}"
    # The barber may still change everything else, and re-sending the admin's value is no change.
    mine = await client.put(f"{BASE}/config", headers=barber(b), json={
        "fallback_enabled": False, "connect_account_id": f"acct_{b}"})
    assert mine.status_code == 200, mine.text


# ---- 15: the newest version of a connection wins, whatever the clocks say ---------------------------

async def test_the_read_model_keeps_the_newest_version_whatever_the_clocks_say(client, db, infra, event_names):
    """Version 2 (active) was written by a replica whose clock runs late; version 1 (error) arrives
    after it with a later time. The connection is what version 2 says."""
    b = next_barber()
    await configured(client, b, payment_mode="decentralized", fallback_enabled=False)
    state = {"connection_id": b, "barber_id": b, "processor": "square", "account_id": "sq",
             "default_currency": "USD", "supports_payments": True, "supports_refunds": True}
    newer = new_event("connection.changed", {**state, "status": "active", "connection_version": 2})
    older = msgspec.structs.replace(
        new_event("connection.changed", {**state, "status": "error", "connection_version": 1}),
        occurred_at=newer.occurred_at + timedelta(seconds=30))
    await announce(infra, event_names, newer)
    await announce(infra, event_names, older)

    async def applied_both():
        found = await rows(db, sa.select(t.platform.processed_events).where(
            t.platform.processed_events.c.event_id.in_([newer.event_id, older.event_id])))
        return len(found) == 2

    await eventually(applied_both, timeout=10)
    [row] = await rows(db, sa.select(t.processor_connections).where(t.processor_connections.c.connection_id == b))
    assert row["status"] == "active"
