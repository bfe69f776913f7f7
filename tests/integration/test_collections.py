"""The collections service against real Postgres, NATS and the Stripe simulator: accruals from
`transaction.recorded` (duplicated, refunded before and after billing), windows and the minimum,
concurrent aggregation runs, collecting on the platform account, dunning to overdue, the APIs.
The clock is the test's: it walks collections through their whole schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import nats
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from services.collections import tables as ct
from services.collections.app import create_app
from services.collections.settings import CollectionsSettings
from shared.db import PlatformTables
from shared.events import ConfigChanged, TransactionRecorded, decode_event, encode_event, new_event
from tests.integration.router_support import admin, barber, sim_call
from tests.support import eventually

BASE = "/api/v1/platform-collections"
_ids = itertools.count(1)
platform = PlatformTables(ct.metadata)
# Thursday 26 November 2026, 12:00 UTC; the last complete weekly window ended Monday 23rd.
START = datetime(2026, 11, 26, 12, tzinfo=UTC)


def next_barber() -> int:
    return 600_000 + next(_ids)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
async def app(make_settings, stripe_sim, clock):
    settings = make_settings(CollectionsSettings, stripe_secret_key="sk_test_platform_collections",
                             stripe_api_base=stripe_sim, stripe_timeout=2.0, log_level="error",
                             minimum_collection_amount=Decimal("25.00"), collection_retry_days="1,3,7")
    application = create_app(settings, clock=clock)
    application.state.runtime.start_jobs = False  # the test runs every job itself, at its own time
    return application


@pytest.fixture(scope="module")
async def client(app):
    async with AsyncTestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def service(app):
    return app.state.collections


async def in_app(client, fn, *args, **kwargs):
    """Run a coroutine of the app on the app's own loop (the test client runs it in a thread)."""
    return await asyncio.to_thread(client.blocking_portal.call, lambda: fn(*args, **kwargs))


@pytest.fixture
async def js(infra):
    nc = await nats.connect(infra.nats_url)
    yield nc.jetstream()
    await nc.close()


async def publish(js, event_names, event, *, msg_id: str | None = None) -> None:
    await js.publish(event_names["EVENT_SUBJECT_PREFIX"] + event.event_type, encode_event(event),
                     headers={"Nats-Msg-Id": msg_id or str(event.event_id)})


async def applied(db, event, consumer: str = "collections-accruals") -> None:
    processed = platform.processed_events

    async def seen():
        async with db.connect() as conn:
            return await conn.scalar(sa.select(sa.func.count()).where(processed.c.event_id == event.event_id,
                                                                      processed.c.consumer == consumer))

    await eventually(seen, timeout=15, interval=0.05)


def recorded(b: int, tx: str, *, amount="100.00", commission="20.00", refunded="0.00", status="completed",
             sequence=1, payment_type="external", currency="USD", processed_at=None):
    return new_event(TransactionRecorded(
        transaction_id=tx, barber_id=b, appointment_id=1, client_id=None, payment_type=payment_type,
        processor="square", connection_id=1, external_transaction_id=f"sq_{tx}", amount=Decimal(amount),
        refunded_amount=Decimal(refunded), currency=currency, status=status, commission_rate=Decimal("0.20"),
        commission_amount=Decimal(commission), processor_fee=Decimal("3.20"),
        processed_at=processed_at or START - timedelta(days=10), sequence=sequence),
        # Heard just before the test clock's now (a reversal is dated when it is heard), whatever the
        # real time: the real clock passing START made the runs at START miss reversals "from the future".
        now=START - timedelta(minutes=1))


async def feed(js, event_names, db, *events) -> None:
    for event in events:
        await publish(js, event_names, event)
    for event in events:
        await applied(db, event)


async def dues_of(db, collection_id: str) -> list[dict]:
    found = await rows(db, sa.select(platform.outbox.c.body).where(platform.outbox.c.event_type == "collection.due")
                       .order_by(platform.outbox.c.id))
    return [p for p in (msgspec.json.decode(r["body"])["payload"] for r in found) if p["collection_id"] == collection_id]


async def consumer_idle(js, event_names, durable: str) -> None:
    """Every message the durable consumer was handed is acknowledged and none waits: whatever it
    was going to do, it has done (the way to say "nothing more happened" without a sleep)."""
    async def idle():
        info = await js.consumer_info(event_names["EVENT_STREAM"], durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(idle, timeout=15, interval=0.05)


async def rows(db, query) -> list[dict]:
    async with db.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def accrual_sum(db, b: int, *, unbilled_only: bool = False) -> Decimal:
    ac = ct.accruals
    where = [ac.c.barber_id == b] + ([ac.c.collection_id.is_(None)] if unbilled_only else [])
    async with db.connect() as conn:
        return Decimal(await conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(ac.c.amount), 0)).where(*where)))


async def books_balance(db, b: int) -> None:
    """accrued = collected + pending + failed/overdue + unbilled, summed independently of the service."""
    collections = await rows(db, sa.select(ct.collections).where(ct.collections.c.barber_id == b))
    assert await accrual_sum(db, b) == sum((c["amount"] for c in collections), Decimal(0)) + await accrual_sum(
        db, b, unbilled_only=True)
    for c in collections:  # and each collection is exactly its accruals
        members = await rows(db, sa.select(ct.accruals.c.amount).where(ct.accruals.c.collection_id == c["id"]))
        assert sum((m["amount"] for m in members), Decimal(0)) == c["amount"]


async def set_method(client, b: int, method: str) -> None:
    response = await client.put(f"{BASE}/payment-method/{b}", headers=admin(), json={"payment_method": method})
    assert response.status_code == 200, response.text


# ---- accruals -----------------------------------------------------------------------------------------

async def test_the_same_event_twice_accrues_once_and_centralized_accrues_nothing(client, db, js, event_names):
    b = next_barber()
    event = recorded(b, f"tx-{b}-1")
    await publish(js, event_names, event, msg_id="first-" + str(event.event_id))
    await publish(js, event_names, event, msg_id="again-" + str(event.event_id))  # outside the dedupe window
    central = recorded(b, f"tx-{b}-2", payment_type="centralized")
    await feed(js, event_names, db, central)
    await applied(db, event)
    await consumer_idle(js, event_names, "collections-accruals")  # the second copy was delivered and skipped
    assert await accrual_sum(db, b) == Decimal("20.00")
    balance = (await client.get(f"{BASE}/my-balance", headers=barber(b))).json()
    assert (balance["unbilled_commission"], balance["accrued_total"]) == ("20.00", "20.00")


async def test_refunds_reverse_proportionally_and_exactly_before_billing(client, db, js, event_names):
    b = next_barber()
    tx = f"tx-{b}"
    await feed(js, event_names, db, recorded(b, tx, amount="99.99", commission="10.00"))
    await feed(js, event_names, db, recorded(b, tx, amount="99.99", commission="10.00", refunded="33.33",
                                             status="partially_refunded", sequence=2))
    # 10.00 x 33.33 / 99.99 = 3.3333... -> 3.33 reversed
    assert await accrual_sum(db, b) == Decimal("6.67")
    # An older state arriving late is old news; the full refund reverses exactly the commission.
    await feed(js, event_names, db, recorded(b, tx, amount="99.99", commission="10.00", sequence=1),
               recorded(b, tx, amount="99.99", commission="10.00", refunded="99.99", status="refunded", sequence=3))
    assert await accrual_sum(db, b) == Decimal("0.00")
    kinds = [r["kind"] for r in await rows(db, sa.select(ct.accruals.c.kind).where(ct.accruals.c.barber_id == b)
                                           .order_by(ct.accruals.c.id))]
    assert kinds == ["commission", "reversal", "reversal"]


async def test_a_reversal_after_billing_is_a_credit_on_the_next_collection(client, db, js, event_names, service):
    b = next_barber()
    await set_method(client, b, "pm_card_visa")
    await feed(js, event_names, db, recorded(b, f"tx-{b}-1", commission="40.00"))
    first = await in_app(client, service.aggregation.run, barber_id=b)
    assert [c.amount for c in first.created] == ["40.00"]
    await feed(js, event_names, db, recorded(b, f"tx-{b}-1", commission="40.00", refunded="100.00",
                                             status="refunded", sequence=2))
    assert await accrual_sum(db, b, unbilled_only=True) == Decimal("-40.00")  # a credit, carried forward
    assert (await in_app(client, service.aggregation.run, barber_id=b, force=True)).created == []  # never negative
    await feed(js, event_names, db, recorded(b, f"tx-{b}-2", commission="70.00"))
    # The reversal falls in the window it was heard of (this week): this week's bill waits for it...
    assert [c.amount for c in (await in_app(client, service.aggregation.run, barber_id=b)).created] == ["70.00"]
    await feed(js, event_names, db, recorded(b, f"tx-{b}-3", commission="70.00"))
    # ...and the next collection takes the credit: 70 owed - 40 credit.
    second = await in_app(client, service.aggregation.run, barber_id=b, force=True)
    assert [c.amount for c in second.created] == ["30.00"]
    await books_balance(db, b)


# ---- aggregation -------------------------------------------------------------------------------------

async def test_windows_and_the_minimum_hold(client, db, js, event_names, service, infra):
    daily, weekly, monthly = next_barber(), next_barber(), next_barber()
    for b, frequency in ((daily, "daily"), (weekly, "weekly"), (monthly, "monthly")):
        config = new_event(ConfigChanged(
            barber_id=b, payment_mode="decentralized", preferred_processor="square", fallback_enabled=True,
            min_external_amount=None, max_platform_amount=None, split_threshold=None, commission_rate="0.20",
            commission_collection_frequency=frequency, auto_collection_enabled=True, webhook_notifications=True,
            email_notifications=True, analytics_enabled=True, connect_account_id=None, version=1))
        await publish(js, event_names, config)
        await applied(db, config, consumer="collections-settings")
        # Yesterday (Wednesday 25th), and earlier this month (Monday 2nd), and today.
        await feed(js, event_names, db,
                   recorded(b, f"tx-{b}-y", commission="30.00", processed_at=START - timedelta(days=1)),
                   recorded(b, f"tx-{b}-m", commission="30.00", processed_at=datetime(2026, 11, 2, tzinfo=UTC)),
                   recorded(b, f"tx-{b}-t", commission="30.00", processed_at=START - timedelta(hours=1)))
    small = next_barber()
    await feed(js, event_names, db, recorded(small, f"tx-{small}", commission="24.99"))
    made = (await in_app(client, service.aggregation.run, now=START)).created
    mine = {c.barber_id: c.amount for c in made if c.barber_id in (daily, weekly, monthly, small)}
    # daily: before today's midnight (yesterday + the 2nd); weekly: before Monday 23rd (the 2nd);
    # monthly: before the 1st (nothing); below the minimum: nothing.
    assert mine == {daily: "60.00", weekly: "30.00"}
    forced = (await in_app(client, service.aggregation.run, barber_id=small, force=True, now=START)).created
    assert forced == []  # force ignores the window, never the minimum
    forced = (await in_app(client, service.aggregation.run, barber_id=monthly, force=True, now=START)).created
    assert [c.amount for c in forced] == ["90.00"]
    for b in (daily, weekly, monthly, small):
        await books_balance(db, b)


async def test_two_concurrent_runs_bill_each_accrual_once(client, db, js, event_names, service):
    """The use case itself, four times at once on the app's loop (not through the test client,
    which would serialise them): four transactions on four connections. The same race through
    real servers on sockets is the next test."""
    barbers = [next_barber() for _ in range(20)]
    events = [recorded(b, f"tx-{b}-{i}", commission="15.00") for b in barbers for i in range(3)]
    await feed(js, event_names, db, *events)

    async def race():
        return await asyncio.gather(*(service.aggregation.run(force=True) for _ in range(4)))

    results = await asyncio.to_thread(client.blocking_portal.call, race)
    made = [c for result in results for c in result.created if c.barber_id in barbers]
    assert sorted(c.barber_id for c in made) == sorted(barbers)  # one collection each, in one of the runs
    assert all(c.amount == "45.00" for c in made)
    for b in barbers:
        await books_balance(db, b)
        assert await accrual_sum(db, b, unbilled_only=True) == 0


async def test_concurrent_runs_through_two_real_servers_bill_each_accrual_once(
        client, db, js, event_names, service_env, tmp_path):
    """Two collections processes on sockets, eight `POST /run` at once across them: every
    barber gets exactly one collection of all its accruals (the aggregation's lock serialises the
    runs, whichever process and connection they come from)."""
    import os

    import aiohttp

    from tests.support import free_port, running_process

    barbers = [next_barber() for _ in range(15)]
    # Paid now: the current window is open, so the processes' own scheduled run (a few seconds after
    # they start) leaves these accruals to the forced runs under test instead of racing them.
    now = datetime.now(UTC)
    await feed(js, event_names, db, *[recorded(b, f"tx-http-{b}-{i}", commission="12.00", processed_at=now)
                                      for b in barbers for i in range(3)])
    urls = []
    with contextlib.ExitStack() as stack:
        for n in range(2):
            port = free_port()
            env = {**os.environ, **service_env, "PORT": str(port), "STRIPE_SECRET_KEY": "",
                   "LOG_LEVEL": "warning"}
            stack.enter_context(running_process(["services.collections"], env,
                                                ready_url=f"http://127.0.0.1:{port}/health/ready",
                                                log=tmp_path / f"collections-{n}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http:
            async def run(url: str) -> list[dict]:
                async with http.post(f"{url}{BASE}/run", headers=admin(), json={"force": True}) as resp:
                    assert resp.status == 200, await resp.text()
                    return (await resp.json())["created"]

            results = await asyncio.gather(*(run(urls[n % 2]) for n in range(8)))
    made = [c for created in results for c in created if c["barber_id"] in barbers]
    assert sorted(c["barber_id"] for c in made) == sorted(barbers)
    assert {c["amount"] for c in made} == {"36.00"}
    for b in barbers:
        await books_balance(db, b)


async def test_the_scheduled_run_bills_under_its_job_lock(client, db, js, event_names, app):
    """As the schedule runs it: the job takes its singleton lock, then the aggregation takes its
    own transaction lock. The two once shared a name, and the first scheduled run waited on its
    own job lock forever (and every POST /run behind it)."""
    b = next_barber()
    await feed(js, event_names, db, recorded(b, f"tx-sched-{b}", commission="30.00"))
    job = app.state.runtime.jobs["aggregation"]

    async def run_job():
        return await asyncio.wait_for(job.run_once(now=START + timedelta(days=30)), timeout=15)

    assert await asyncio.to_thread(client.blocking_portal.call, run_job) is True
    assert await accrual_sum(db, b, unbilled_only=True) == 0
    await books_balance(db, b)


# ---- collecting and dunning ---------------------------------------------------------------------------

async def wait_status(client, b: int, status: str, attempts: int | None = None) -> dict:
    async def reached():
        items = (await client.get(f"{BASE}/my-collections", headers=barber(b))).json()["items"]
        ok = items and items[0]["status"] == status and (attempts is None or items[0]["attempts"] == attempts)
        return items[0] if ok else None

    return await eventually(reached, timeout=15, interval=0.1)


async def test_a_collection_is_collected_once_on_the_platform_account(client, db, js, event_names, service,
                                                                      stripe_sim):
    b = next_barber()
    await set_method(client, b, "pm_card_visa")
    await feed(js, event_names, db, recorded(b, f"tx-{b}", commission="50.00"))
    created = (await in_app(client, service.aggregation.run, barber_id=b)).created
    collected = await wait_status(client, b, "collected")
    assert (collected["amount"], collected["attempts"], collected["collection_method"]) == ("50.00", 1, "payment_method")
    intents = [pi for pi in (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
               if pi["metadata"].get("collection_id") == str(created[0].id)]
    assert len(intents) == 1 and intents[0]["amount"] == 5000 and intents[0]["status"] == "succeeded"
    # Asked again (a redelivered or replayed collection.due): nothing is charged again.
    due = [msgspec.json.decode(r["body"]) for r in await rows(db, sa.select(platform.outbox.c.body).where(
        platform.outbox.c.event_type == "collection.due"))]
    again = next(d for d in due if d["payload"]["collection_id"] == str(created[0].id))
    replayed = {**again, "event_id": str(uuid.uuid4())}
    await js.publish(event_names["EVENT_SUBJECT_PREFIX"] + "collection.due", msgspec.json.encode(replayed))
    await applied(db, decode_event(msgspec.json.encode(replayed)), consumer="collections-collecting")
    assert len([pi for pi in (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
                if pi["metadata"].get("collection_id") == str(created[0].id)]) == 1
    retry = await client.post(f"{BASE}/{created[0].id}/retry", headers=admin())
    assert retry.status_code == 409
    settled = [msgspec.json.decode(r["body"])["payload"] for r in await rows(db, sa.select(platform.outbox.c.body)
                                                                             .where(platform.outbox.c.event_type == "collection.settled"))]
    assert [s["status"] for s in settled if s["collection_id"] == str(created[0].id)] == ["collected"]
    await books_balance(db, b)


async def test_a_connect_account_is_debited_when_there_is_no_card(client, db, js, event_names, service):
    b = next_barber()
    config = new_event(ConfigChanged(
        barber_id=b, payment_mode="decentralized", preferred_processor="square", fallback_enabled=True,
        min_external_amount=None, max_platform_amount=None, split_threshold=None, commission_rate="0.20",
        commission_collection_frequency="weekly", auto_collection_enabled=True, webhook_notifications=True,
        email_notifications=True, analytics_enabled=True, connect_account_id=f"acct_{b}", version=1))
    await publish(js, event_names, config)
    await applied(db, config, consumer="collections-settings")
    await feed(js, event_names, db, recorded(b, f"tx-{b}", commission="26.00"))
    await in_app(client, service.aggregation.run, barber_id=b)
    collected = await wait_status(client, b, "collected")
    assert collected["collection_method"] == "connect_debit" and collected["payment_intent_id"].startswith("py_")


async def test_a_failing_collection_is_retried_on_schedule_then_overdue(client, db, js, event_names, service, clock):
    b = next_barber()
    await set_method(client, b, "pm_card_chargeDeclined")
    await feed(js, event_names, db, recorded(b, f"tx-{b}", commission="35.00"))
    await in_app(client, service.aggregation.run, barber_id=b)
    first = await wait_status(client, b, "failed", attempts=1)
    assert first["failed_reason"] == "generic_decline"
    first_failed = datetime.fromisoformat(first["next_attempt_at"]) - timedelta(days=1)
    try:
        for attempt, days in ((2, 1), (3, 3), (4, 7)):
            clock.now = first_failed + timedelta(days=days) - timedelta(minutes=1)
            before = (await client.get(f"{BASE}/my-collections", headers=barber(b))).json()["items"][0]
            # A minute early: not due yet, so the run (committed before it returns) asks for no attempt.
            await in_app(client, service.collecting.dunning, clock.now)
            assert [d["attempt"] for d in await dues_of(db, before["id"])] == list(range(1, attempt))
            early = (await client.get(f"{BASE}/my-collections", headers=barber(b))).json()["items"][0]
            assert (early["attempts"], early["next_attempt_at"]) == (before["attempts"], before["next_attempt_at"])
            clock.now = first_failed + timedelta(days=days, minutes=1)
            await in_app(client, service.collecting.dunning, clock.now)
            expected = "overdue" if attempt == 4 else "failed"
            await wait_status(client, b, expected, attempts=attempt)
    finally:
        clock.now = START
    final = (await client.get(f"{BASE}/my-collections", headers=barber(b))).json()["items"][0]
    assert final["next_attempt_at"] is None
    statuses = [msgspec.json.decode(r["body"])["payload"]["status"] for r in await rows(
        db, sa.select(platform.outbox.c.body).where(platform.outbox.c.event_type == "collection.settled")
        .order_by(platform.outbox.c.id)) if msgspec.json.decode(r["body"])["payload"]["barber_id"] == b]
    assert statuses == ["failed", "failed", "failed", "overdue"]
    # The barber saves a working card; an operator retries the overdue collection.
    await set_method(client, b, "pm_card_visa")
    retried = await client.post(f"{BASE}/{final['id']}/retry", headers=admin())
    assert retried.status_code == 200
    await wait_status(client, b, "collected", attempts=5)
    await books_balance(db, b)


async def test_no_payment_method_fails_into_dunning(client, db, js, event_names, service):
    b = next_barber()
    await feed(js, event_names, db, recorded(b, f"tx-{b}", commission="25.00"))
    await in_app(client, service.aggregation.run, barber_id=b)
    failed = await wait_status(client, b, "failed", attempts=1)
    assert failed["failed_reason"] == "no_payment_method" and failed["next_attempt_at"]


# ---- APIs ----------------------------------------------------------------------------------------------

async def test_barbers_see_only_their_own_and_admins_run_and_read(client):
    b = next_barber()
    for method, path in (("GET", f"{BASE}/"), ("GET", f"{BASE}/balance/{b}"), ("POST", f"{BASE}/run"),
                         ("POST", f"{BASE}/{uuid.uuid4()}/retry"), ("PUT", f"{BASE}/payment-method/{b}")):
        response = await client.request(method, path, headers=barber(b), json={} if method != "GET" else None)
        assert response.status_code == 403, (method, path)
    assert (await client.get(f"{BASE}/my-balance", headers=admin())).status_code == 403
    mine = (await client.get(f"{BASE}/my-balance?currency=eur", headers=barber(b))).json()
    assert (mine["barber_id"], mine["currency"], mine["unbilled_commission"]) == (b, "EUR", "0.00")
    assert (await client.get(f"{BASE}/my-balance?currency=XYZ", headers=barber(b))).status_code == 422
    bad = await client.put(f"{BASE}/payment-method", headers=barber(b), json={"payment_method": "card 4242"})
    assert bad.status_code == 422 and "payment_method" in bad.json()["detail"]
    page = (await client.get(f"{BASE}/?limit=1", headers=admin())).json()
    assert len(page["items"]) <= 1 and "next_cursor" in page
    assert (await client.post(f"{BASE}/run", headers=admin(), json={"force": "yes"})).status_code == 422


# ---- issue 14: attempts settle by what Stripe says; operator actions take an Idempotency-Key ------------

async def collection_intents(stripe_sim, collection_id) -> list[dict]:
    found = (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
    return [pi for pi in found if pi["metadata"].get("collection_id") == str(collection_id)]


async def test_a_processing_collection_is_settled_by_retrieving_it_not_by_sending_it_again(
        client, db, js, event_names, service, stripe_sim):
    """A bank debit sits `processing` at Stripe. Re-sending its create request with the same key
    only replays "processing" (and after Stripe's 24 h it would charge again): the attempt keeps
    Stripe's id as soon as Stripe names it, and the sweeper retrieves it, so it settles when the
    bank does, with one charge."""
    b = next_barber()
    await set_method(client, b, "pm_usBankAccount")
    await feed(js, event_names, db, recorded(b, f"tx-{b}", commission="40.00"))
    [collection] = (await in_app(client, service.aggregation.run, barber_id=b)).created

    async def processing():
        found = await collection_intents(stripe_sim, collection.id)
        return found[0] if found and found[0]["status"] == "processing" else None

    intent = await eventually(processing, timeout=15)
    await sim_call(stripe_sim, "POST", f"/_sim/payment_intents/{intent['id']}/settle", {"status": "succeeded"})
    await in_app(client, service.collecting.sweep_pending, START + timedelta(hours=1))
    collected = await wait_status(client, b, "collected")
    assert collected["payment_intent_id"] == intent["id"]
    assert [pi["status"] for pi in await collection_intents(stripe_sim, collection.id)] == ["succeeded"]
    [attempt] = await rows(db, sa.select(ct.attempts).where(ct.attempts.c.collection_id == collection.id))
    assert (attempt["status"], attempt["payment_intent_id"]) == ("succeeded", intent["id"])
    await books_balance(db, b)


async def test_run_and_retry_honour_an_idempotency_key(client, db, js, event_names, service):
    b = next_barber()
    await feed(js, event_names, db, recorded(b, f"tx-{b}", commission="30.00"))
    headers = {**admin(), "Idempotency-Key": f"run-{b}"}
    first = await client.post(f"{BASE}/run", headers=headers, json={"barber_id": b, "force": True})
    assert first.status_code == 200 and len(first.json()["created"]) == 1, first.text
    again = await client.post(f"{BASE}/run", headers=headers, json={"barber_id": b, "force": True})
    assert again.headers.get("idempotent-replayed") == "true" and again.json() == first.json()
    reused = await client.post(f"{BASE}/run", headers=headers, json={"barber_id": b, "force": False})
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    failed = await wait_status(client, b, "failed", attempts=1)  # no payment method yet
    retry_headers = {**admin(), "Idempotency-Key": f"retry-{b}"}
    retried = await client.post(f"{BASE}/{failed['id']}/retry", headers=retry_headers)
    assert retried.status_code == 200, retried.text
    replayed = await client.post(f"{BASE}/{failed['id']}/retry", headers=retry_headers)
    assert replayed.headers.get("idempotent-replayed") == "true" and replayed.json() == retried.json()
    # Each operator action is audited once, with what it made; the replays added nothing.
    trail = (await client.get(f"{BASE}/operations/audit", params={"subject": f"barber:{b}"},
                              headers=admin())).json()["items"]
    assert [(e["action"], e["actor_role"]) for e in trail] == [("collections.run", "admin")]
    assert trail[0]["after"]["created"] == [first.json()["created"][0]["id"]]
    assert trail[0]["before"] == {"barber_id": b, "force": True}
    retry_trail = (await client.get(f"{BASE}/operations/audit", params={"subject": f"collection:{failed['id']}"},
                                    headers=admin())).json()["items"]
    assert [e["action"] for e in retry_trail] == ["collection.retry"]
