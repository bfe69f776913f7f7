"""Two replicas of every service behind the gateway (`make run REPLICAS=2`), and one replica of
each killed (SIGKILL) in the middle of the money-conservation scenario; `make run` restarts them,
as systemd or a Deployment would. Clients retry what did not finish with the same
Idempotency-Key, as a client of a payments API must. Then, from the test's own ledger and the
databases:

- analytics and collections show every barber exactly what was paid (nothing lost, nothing
  applied twice), and forced collection conserves every cent;
- no payment was charged twice: each processor simulator holds exactly one successful charge per
  payment the gateway answered as completed;
- no job ran twice: every periodic job ran at most once per interval across both replicas
  (`job_schedule`), and every outbox row was published.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from shared.auth import issue_token
from shared.config import normalise_database_url
from tests.e2e.ledger import (
    AN,
    Barber,
    RetryingCall,
    analytics_shows,
    call,
    cents,
    collect,
    collections_accrued,
    pay,
    set_up,
)
from tests.conftest import RUN_ID
from tests.run_support import make_run
from tests.support import eventually, scratch_database

SERVICES = ("router", "external", "collections", "analytics")
JOB_INTERVAL = 2.0  # the sweepers' interval in this run, so that "once per interval" is tested often
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def suite(service_env, infra, tmp_path_factory):
    # A database of its own: the job schedule counted below must not carry the due times that other
    # suites of this test run (with their own, longer, intervals) left in the shared one.
    with scratch_database(infra, f"hp_replicas_{RUN_ID}", migrated=False) as url:
        yield from _suite({**service_env, "DATABASE_URL": url}, tmp_path_factory)


def _suite(service_env, tmp_path_factory):
    env = {**service_env, "WEB_CONCURRENCY": "1", "SWEEP_INTERVAL": str(JOB_INTERVAL),
           "DUNNING_INTERVAL": str(JOB_INTERVAL), "STATS_INTERVAL": str(JOB_INTERVAL),
           # A request killed with its replica holds its key this long; the client's retry then runs it.
           "IDEMPOTENCY_CLAIM_TIMEOUT": "3", "EXTERNAL_TIMEOUT": "5"}
    with make_run(env, tmp_path_factory.mktemp("replicas"), replicas=2) as running:
        assert running.state["replicas"] == 2
        yield running


def team() -> list[Barber]:
    base = 982_000 + next(_ids) * 20
    plans = {
        "centralized": [("45.00", True, None), ("80.00", True, "30.00"), ("25.00", False, None), ("61.00", True, None)],
        "stripe": [("120.00", True, None), ("60.00", True, "all"), ("15.00", False, None), ("33.33", True, None)],
        "square": [("200.00", True, None), ("99.99", True, "33.33"), ("12.00", False, None), ("18.50", True, None)],
        "paypal": [("150.00", True, None), ("75.50", True, "20.00"), ("40.00", False, None), ("64.10", True, None)],
    }
    barbers = []
    for n in range(2):  # two of each, so that both replicas of each service are busy
        barbers += [
            Barber(base + 10 * n + 1, "centralized", None, "0.20", plans["centralized"]),
            Barber(base + 10 * n + 2, "decentralized", "stripe", "0.10", plans["stripe"]),
            Barber(base + 10 * n + 3, "decentralized", "square", "0.15", plans["square"]),
            Barber(base + 10 * n + 4, "decentralized", "paypal", "0.125", plans["paypal"]),
            Barber(base + 10 * n + 5, "hybrid", "square", "0.20",
                   [("30.00", True, None), ("70.00", True, None), ("90.00", True, "45.00"), ("20.00", False, None)]),
        ]
    return barbers


def kill_one_replica_of_each(state: dict) -> dict[str, int]:
    """SIGKILL the second replica of every service (its whole process group); their pids."""
    killed = {}
    for service in SERVICES:
        pid = state["children"][f"{service}-2"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        killed[service] = pid
    return killed


async def job_runs(engine) -> dict[str, int]:
    runs = {}
    async with engine.connect() as conn:
        for service in SERVICES:
            for name, count in (await conn.execute(sa.text(f"select name, runs from {service}.job_schedule"))).all():
                runs[name] = count
    return runs


async def test_two_replicas_with_one_of_each_killed_conserve_money(suite, service_env):
    state, urls = suite.state, suite.state["urls"]
    secret = state["jwt_secret"]
    admin = {"Authorization": f"Bearer {issue_token(secret, 1000, 'admin')}"}
    barbers = team()
    engine = create_async_engine(normalise_database_url(state["database_url"]))
    try:
        async with aiohttp.ClientSession(base_url=urls["gateway"]) as http, aiohttp.ClientSession() as raw:
            for b in barbers:
                await set_up(http, admin, b, secret)
            runs_before, started = await job_runs(engine), time.monotonic()

            killed_at: list[float] = []

            async def killer() -> dict[str, int]:
                await asyncio.sleep(1.5)  # payments of every barber are under way
                killed_at.append(time.monotonic())
                return kill_one_replica_of_each(state)

            # Every barber pays at once (so both replicas of each service have requests in flight
            # when one dies), retrying what did not finish.
            killed, *_ = await asyncio.gather(killer(), *(pay(http, b, secret, call=RetryingCall()) for b in barbers))
            assert time.monotonic() > killed_at[0] + 1, "the payments were over before the replicas died"

            # make run restarted each killed replica (a new pid) and it is ready again.
            await restarted(suite, {f"{s}-2": pid for s, pid in killed.items()})

            days = around_today()
            await books_shown(http, admin, barbers, days)
            await charged_once_each(raw, urls, barbers)
            await declines_as_at_the_processors(http, raw, admin, urls, barbers, days)
            elapsed = time.monotonic() - started
            runs_after = await job_runs(engine)
            for b in barbers:
                await collect(http, admin, b, days)

        # No job ran twice: across both replicas (and the restarts), at most one run per 0.9 interval.
        for name in ("router-pending-sweeper", "external-pending-sweeper", "collections-pending-sweeper",
                     "collections-dunning", "external-connection-totals"):
            ran = runs_after.get(name, 0) - runs_before.get(name, 0)
            assert 1 <= ran <= elapsed / (0.9 * JOB_INTERVAL) + 1, (name, ran, elapsed)

        # Nothing left unpublished in any outbox.
        await eventually(lambda: outboxes_empty(engine), timeout=30, interval=0.5)
    finally:
        await engine.dispose()


async def test_sigterm_on_a_replica_under_load_loses_nothing(suite):
    """Graceful hand-over: SIGTERM to the first replica of every service while barbers pay. It
    finishes what it took (every client gets its final answer on the first try: no retry here),
    the gateway sends the rest to the other replica, `make run` starts it again, and nothing is
    lost: analytics and collections show exactly what was paid, every outbox row is published, and
    the jobs go on running (their advisory locks were released)."""
    state, urls = suite.state, suite.state["urls"]
    secret = state["jwt_secret"]
    admin = {"Authorization": f"Bearer {issue_token(secret, 1000, 'admin')}"}
    barbers = team()
    engine = create_async_engine(normalise_database_url(state["database_url"]))
    try:
        async with aiohttp.ClientSession(base_url=urls["gateway"]) as http:
            for b in barbers:
                await set_up(http, admin, b, secret)
            before = await job_runs(engine)
            stopped = {}

            async def terminator() -> None:
                await asyncio.sleep(1.0)
                for service in SERVICES:
                    stopped[service] = suite.current_state()["children"][service]
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(stopped[service], signal.SIGTERM)

            await asyncio.gather(terminator(), *(pay(http, b, secret) for b in barbers))  # plain calls: no retry

            await restarted(suite, stopped)
            await books_shown(http, admin, barbers, around_today())

        await eventually(lambda: outboxes_empty(engine), timeout=30, interval=0.5)

        async def jobs_went_on():
            after = await job_runs(engine)
            return all(after.get(name, 0) > before.get(name, 0) for name in
                       ("router-pending-sweeper", "external-pending-sweeper", "collections-pending-sweeper"))

        await eventually(jobs_went_on, timeout=3 * JOB_INTERVAL + 10, interval=0.5)
    finally:
        await engine.dispose()


async def restarted(suite, old_pids: dict[str, int]) -> None:
    """`make run` started each of these children again (a new pid), and every replica is ready."""
    def all_new():
        now = suite.current_state()["children"]
        return all(now[name] != pid for name, pid in old_pids.items())

    await eventually(all_new, timeout=30, interval=0.5)

    async def all_ready():
        async with aiohttp.ClientSession() as raw, raw.get(suite.state["urls"]["gateway"] + "/health/ready") as resp:
            checks = await resp.json()
        return all(statuses == [200, 200] for statuses in checks.values())

    await eventually(all_ready, timeout=60, interval=0.5)


def around_today() -> dict[str, str]:
    """Every payment was made just now: a range of today and its neighbours holds them all."""
    today = datetime.now(UTC).date()
    return {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}


async def books_shown(http, admin: dict, barbers: list[Barber], days: dict) -> None:
    for b in barbers:
        await analytics_shows(http, admin, b, days)
        await collections_accrued(http, admin, b)


async def outboxes_empty(engine) -> bool:
    async with engine.connect() as conn:
        left = [await conn.scalar(sa.text(f"select count(*) from {s}.outbox where published_at is null"))
                for s in SERVICES]
    return sum(left) == 0


async def charged_once_each(raw: aiohttp.ClientSession, urls: dict, barbers: list[Barber]) -> None:
    """Each simulator holds one successful charge per payment the gateway answered completed, and
    the sums agree: a charge made by a killed replica and made again by the retry would show here."""
    completed = {tid: entry for b in barbers for tid, entry in b.books.open.items() if entry[2] != "declined"}
    expected_total = sum(amount for amount, _, _ in completed.values())
    expected_count = len(completed)

    async def listing(url: str, key: str) -> list[dict]:
        async with raw.get(url) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        return body[key] if isinstance(body, dict) else body

    # The simulators are this run's own (make run started them): every charge in them is this test's.
    stripe = [pi for pi in await listing(urls["stripe-sim"] + "/_sim/payment_intents", "data")
              if pi["status"] == "succeeded"]
    square = [p for p in await listing(urls["square-sim"] + "/_sim/payments", "payments")
              if p["status"] == "COMPLETED"]
    paypal = [c for c in await listing(urls["paypal-sim"] + "/_sim/captures", "data")
              if c["status"] in ("COMPLETED", "REFUNDED", "PARTIALLY_REFUNDED")]
    count = len(stripe) + len(square) + len(paypal)
    total = (sum(pi["amount"] for pi in stripe) + sum(p["amount_money"]["amount"] for p in square)
             + sum(cents(c["amount"]["value"]) for c in paypal))
    assert (count, total) == (expected_count, expected_total), (count, total, expected_count, expected_total)


async def declines_as_at_the_processors(http, raw, admin: dict, urls: dict, barbers: list[Barber], days: dict) -> None:
    """Analytics counts exactly the declines the processors saw: a declined request retried after
    its replica died may have been declined twice, and then both are on record, no more."""
    async def listing(url: str, key: str) -> list[dict]:
        async with raw.get(url) as resp:
            return (await resp.json())[key]

    declined = (
        sum(pi["status"] != "succeeded" for pi in await listing(urls["stripe-sim"] + "/_sim/payment_intents", "data"))
        + sum(p["status"] == "FAILED" for p in await listing(urls["square-sim"] + "/_sim/payments", "payments"))
        # A declined PayPal payment is an order whose capture was refused (no capture is made).
        + sum(order["payment_source"]["token"]["id"] == "paypal-declined"
              for account in await listing(urls["paypal-sim"] + "/_sim/state", "accounts")
              for order in account["orders"]))
    failed = 0
    for b in barbers:
        status, board = await call(http, "GET", f"{AN}/dashboard", admin, params={"barber_id": b.id, **days})
        assert status == 200, board
        failed += board["totals"]["failed_count"]
    assert failed == declined, (failed, declined)
    assert sum(b.books.failed for b in barbers) <= declined <= sum(
        b.books.failed + b.books.declines_maybe_twice for b in barbers)
