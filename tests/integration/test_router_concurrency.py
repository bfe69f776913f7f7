"""Races against the router as a real server process on a socket (the in-process test client
serves one request at a time, so it races nothing). Each test here fails when the lock or
constraint it is about is removed (the router README lists which guards which).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from decimal import Decimal

import aiohttp
import msgspec
import pytest
import sqlalchemy as sa

from services.router import tables as t
from shared.db import PlatformTables
from tests.integration.router_support import BASE, admin, barber, sim_call
from tests.support import free_port, running_process

_ids = itertools.count(1)
outbox = PlatformTables(t.metadata).outbox


def next_barber() -> int:
    return 700_000 + next(_ids)


@pytest.fixture(scope="module")
def router_url(service_env, stripe_sim, tmp_path_factory):
    port = free_port()
    env = {**os.environ, **service_env, "PORT": str(port), "STRIPE_SECRET_KEY": "sk_test_platform_race",
           "STRIPE_API_BASE": stripe_sim, "STRIPE_TIMEOUT": "5", "LOG_LEVEL": "warning",
           "RATE_LIMIT_PER_MINUTE": "100000"}
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("router") / "router.log"
    with running_process(["services.router"], env, ready_url=url + "/health/ready", log=log):
        yield url


@pytest.fixture
async def http(router_url):
    async with aiohttp.ClientSession(base_url=router_url) as session:
        yield session


async def call(http, method: str, path: str, headers: dict, json=None) -> tuple[int, dict]:
    async with http.request(method, BASE + path, headers=headers, json=json) as resp:
        return resp.status, await resp.json(content_type=None)


async def at_once(n: int, make) -> list[tuple[int, dict]]:
    """`n` requests released together, each on its own connection."""
    gate = asyncio.Event()

    async def one(i: int):
        await gate.wait()
        return await make(i)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.05)
    gate.set()
    return await asyncio.gather(*tasks)


async def rows(db, query) -> list[dict]:
    async with db.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def paying_barber(http) -> int:
    b = next_barber()
    status, body = await call(http, "PUT", f"/config/{b}", admin(),
                              {"commission_rate": "0.10", "connect_account_id": f"acct_{b}"})
    assert status == 200, body
    return b


# ---- configs ---------------------------------------------------------------------------------------

async def test_racing_first_config_writes_all_apply_in_turn(http, db):
    """Eight first writes for a barber without a row: none may fail on the unique key (defect 5)."""
    b = next_barber()
    results = await at_once(8, lambda i: call(http, "PUT", f"/config/{b}", admin(),
                                              {"split_threshold": f"{10 + i}.00", "payment_mode": "hybrid"}))
    assert [s for s, _ in results] == [200] * 8, results
    assert sorted(body["version"] for _, body in results) == list(range(1, 9))
    stored = await rows(db, sa.select(t.hybrid_payment_configs).where(t.hybrid_payment_configs.c.barber_id == b))
    assert len(stored) == 1 and stored[0]["version"] == 8
    events = [msgspec.json.decode(r["body"])["payload"] for r in await rows(
        db, sa.select(outbox.c.body).where(outbox.c.event_type == "config.changed"))]
    assert sorted(e["version"] for e in events if e["barber_id"] == b) == list(range(1, 9))


async def test_racing_first_writes_with_expected_version_zero_let_one_win(http):
    b = next_barber()
    results = await at_once(6, lambda i: call(http, "PUT", f"/config/{b}", admin(),
                                              {"split_threshold": f"{10 + i}.00", "expected_version": 0}))
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] + [409] * 5, results
    assert all(body["code"] == "version_conflict" for s, body in results if s == 409)


async def test_concurrent_config_writers_serialise_on_the_version(http):
    b = next_barber()
    assert (await call(http, "PUT", f"/config/{b}", admin(), {"payment_mode": "hybrid"}))[0] == 200
    results = await at_once(5, lambda i: call(http, "PUT", f"/config/{b}", admin(),
                                              {"split_threshold": str(10 + i), "expected_version": 1}))
    assert sorted(s for s, _ in results) == [200, 409, 409, 409, 409]


# ---- idempotency ---------------------------------------------------------------------------------

async def test_same_key_route_races_make_one_decision(http, db):
    b = next_barber()
    headers = {**barber(b), "Idempotency-Key": f"race-{b}"}
    results = await at_once(8, lambda i: call(http, "POST", "/route", headers, {"appointment_id": 1, "amount": "42.00"}))
    assert {s for s, _ in results} <= {200, 409} and 200 in {s for s, _ in results}, results
    assert len({body["route_id"] for s, body in results if s == 200}) == 1
    assert all(body["code"] == "idempotency_in_progress" for s, body in results if s == 409)
    count = await rows(db, sa.select(sa.func.count().label("n")).where(t.routing_decisions.c.barber_id == b))
    assert count[0]["n"] == 1


async def test_same_key_route_and_pay_races_charge_once(http, db, stripe_sim):
    b = await paying_barber(http)
    headers = {**barber(b), "Idempotency-Key": f"pay-race-{b}"}
    body = {"appointment_id": 7, "amount": "55.00", "payment_method": "pm_card_visa"}
    results = await at_once(8, lambda i: call(http, "POST", "/process", headers, body))
    assert {s for s, _ in results} <= {200, 409}, results
    intents = [pi for pi in (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
               if pi["metadata"].get("barber_id") == str(b)]
    assert len(intents) == 1 and intents[0]["status"] == "succeeded"
    payments = await rows(db, sa.select(t.platform_payments).where(t.platform_payments.c.barber_id == b))
    assert [p["status"] for p in payments] == ["completed"]


# ---- payments and refunds ------------------------------------------------------------------------

async def test_concurrent_payments_of_one_route_charge_once(http, db, stripe_sim):
    """Different keys (or none) on one route: the route lock and the one-live-attempt index."""
    b = await paying_barber(http)
    status, route = await call(http, "POST", "/route", barber(b), {"appointment_id": 8, "amount": "30.00"})
    assert status == 200
    results = await at_once(8, lambda i: call(http, "POST", "/process", {**barber(b), "Idempotency-Key": f"k{i}-{b}"},
                                              {"route_id": route["route_id"], "payment_method": "pm_card_visa"}))
    assert [s for s, _ in results] == [200] * 8, results
    assert len({body["transaction_id"] for _, body in results}) == 1
    intents = [pi for pi in (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
               if pi["metadata"].get("route_id") == route["route_id"]]
    assert len(intents) == 1


async def test_concurrent_payments_settle_together_each_once_with_its_event_and_answer(http, db, stripe_sim):
    """Route-and-pay settlements of concurrent requests are group-committed: several attempts share
    one statement (their outbox rows one transaction's start time: `now()`), and still each payment is settled once,
    with exactly one `transaction.recorded` of its own and its answer remembered under its key."""
    barbers = [await paying_barber(http) for _ in range(6)]
    amounts = {i: Decimal(10 + i) + Decimal("0.25") for i in range(60)}

    def pay(i: int):
        return call(http, "POST", "/process", {**barber(barbers[i % 6]), "Idempotency-Key": f"together-{i}-{barbers[0]}"},
                    {"appointment_id": 100 + i, "amount": str(amounts[i]), "payment_method": "pm_card_visa"})

    results = await at_once(60, pay)
    assert [s for s, _ in results] == [200] * 60, results
    ids = [body["transaction_id"] for _, body in results]
    assert len(set(ids)) == 60
    payments = await rows(db, sa.select(t.platform_payments).where(t.platform_payments.c.barber_id.in_(barbers)))
    assert sorted((p["status"], p["amount"]) for p in payments) == sorted(("completed", a) for a in amounts.values())
    # (Not xmin: the relay's update marking rows published replaces it.)
    events = await rows(db, sa.select(outbox.c.body, outbox.c.created_at.label("xid"))
                        .where(outbox.c.event_type == "transaction.recorded"))
    mine = [(msgspec.json.decode(e["body"])["payload"], e["xid"]) for e in events]
    mine = [(payload, xid) for payload, xid in mine if payload["barber_id"] in barbers]
    assert sorted(payload["transaction_id"] for payload, _ in mine) == sorted(ids)  # one each
    assert sum(Decimal(payload["amount"]) for payload, _ in mine) == sum(amounts.values())
    per_statement = {}
    for _, xid in mine:
        per_statement[xid] = per_statement.get(xid, 0) + 1
    assert max(per_statement.values()) >= 2, per_statement  # grouped, not one statement each
    again = await asyncio.gather(*(pay(i) for i in range(60)))  # every key answers as it did
    assert [(s, body["transaction_id"]) for s, body in again] == [(200, i) for i in ids]


async def test_one_key_with_different_bodies_at_once_charges_once_among_other_payments(http, db, stripe_sim):
    """Route-and-pay's first statements are group-committed too. Twelve requests under one key, each
    with another amount (so each would make another route), released together with twenty other
    payments: only one of the twelve is charged, the rest answer 409/422, whichever statements
    they shared (the batcher never lets two rows of one key into one statement)."""
    one, others = await paying_barber(http), await paying_barber(http)
    key = f"one-key-{one}"

    def pay(i: int):
        if i < 12:
            return call(http, "POST", "/process", {**barber(one), "Idempotency-Key": key},
                        {"appointment_id": 300, "amount": f"{20 + i}.00", "payment_method": "pm_card_visa"})
        return call(http, "POST", "/process", {**barber(others), "Idempotency-Key": f"other-{i}-{others}"},
                    {"appointment_id": 300 + i, "amount": "15.00", "payment_method": "pm_card_visa"})

    results = await at_once(32, pay)
    assert [s for s, _ in results[12:]] == [200] * 20, results[12:]
    mine = [s for s, _ in results[:12]]
    assert mine.count(200) <= 1 and set(mine) <= {200, 409, 422}, results[:12]
    payments = await rows(db, sa.select(t.platform_payments).where(t.platform_payments.c.barber_id == one))
    assert len(payments) == 1, payments
    intents = [pi for pi in (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
               if pi["metadata"].get("barber_id") == str(one)]
    assert len(intents) == 1
    decisions = await rows(db, sa.select(t.routing_decisions.c.route_id).where(t.routing_decisions.c.barber_id == one))
    assert len(decisions) == 1


async def _paid(http, b: int, amount: str) -> dict:
    status, body = await call(http, "POST", "/process", barber(b),
                              {"appointment_id": 9, "amount": amount, "payment_method": "pm_card_visa"})
    assert status == 200, body
    return body


async def test_concurrent_partial_refunds_add_up_and_end_refunded(http, db, stripe_sim):
    """30.00 and 70.00 at once on 100.00, both slow at Stripe so they settle together (defect 2)."""
    b = await paying_barber(http)
    paid = await _paid(http, b, "100.00")
    await sim_call(stripe_sim, "POST", "/_sim/faults", {"mode": "slow", "delay_ms": 400, "count": 2,
                                                        "path_prefix": "/v1/refunds"})
    url = f"/transactions/{paid['transaction_id']}/refund"
    results = await at_once(2, lambda i: call(http, "POST", url, barber(b), {"amount": ["30.00", "70.00"][i]}))
    assert [s for s, _ in results] == [200, 200], results
    _, final = await call(http, "GET", f"/transactions/{paid['transaction_id']}", barber(b))
    assert (final["status"], final["refunded_amount"]) == ("refunded", "100.00")
    events = [msgspec.json.decode(r["body"])["payload"] for r in await rows(
        db, sa.select(outbox.c.body).where(outbox.c.event_type == "transaction.recorded").order_by(outbox.c.id))]
    mine = [e for e in events if e["transaction_id"] == paid["transaction_id"]]
    assert [e["status"] for e in mine] == ["completed", "partially_refunded", "refunded"]
    assert [e["sequence"] for e in mine] == sorted({e["sequence"] for e in mine})
    assert sorted(Decimal(e["refund_amount"]) for e in mine[1:]) == [Decimal("30.00"), Decimal("70.00")]


async def test_concurrent_refunds_never_exceed_the_payment(http, db, stripe_sim):
    b = await paying_barber(http)
    paid = await _paid(http, b, "100.00")
    url = f"/transactions/{paid['transaction_id']}/refund"
    results = await at_once(4, lambda i: call(http, "POST", url, barber(b), {"amount": "40.00"}))
    statuses = sorted(s for s, _ in results)
    assert statuses == [200, 200, 422, 422], results
    stored = await rows(db, sa.select(t.platform_refunds).where(
        t.platform_refunds.c.payment_id == uuid.UUID(paid["transaction_id"])))
    assert sorted(r["status"] for r in stored) == ["succeeded", "succeeded"]
