"""Two replicas of the router as real server processes on their own sockets, sharing Postgres and
NATS: what each replica does must hold for the pair (issue 17, "More than one of each").

Each test fails when the shared mechanism it is about is taken away: per-process rate-limit
buckets let the pair take twice the budget; a config change without the cross-replica hint
leaves the other replica on its cached config for up to a minute; a job scheduled per process
runs twice per interval; gauges refreshed by one replica only are missing from the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from services.router import tables as t
from shared.config import normalise_database_url
from shared.db import PlatformTables
from tests.conftest import RUN_ID
from tests.integration.router_support import BASE, admin, barber
from tests.support import eventually, free_port, running_process, scratch_database

_ids = itertools.count(1)
platform = PlatformTables(t.metadata)
LIMIT = 12  # requests a minute per caller, for the pair
SWEEP_INTERVAL = 1.0


def next_barber() -> int:
    return 1_800_000 + next(_ids)


@pytest.fixture(scope="module")
def replicas_database(infra):
    """A database of the pair's own: the job schedule counted here carries no due time left by
    in-process routers of earlier modules (whose sweep interval is a minute)."""
    with scratch_database(infra, f"hp_replicas_int_{RUN_ID}") as url:
        yield url


@pytest.fixture
async def router_db(replicas_database):
    engine = create_async_engine(normalise_database_url(replicas_database))
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
def replicas(service_env, replicas_database, stripe_sim, tmp_path_factory):
    """Base URLs of two router processes with the same settings (as `make run REPLICAS=2` starts)."""
    logs = tmp_path_factory.mktemp("replicas")
    urls = []
    with contextlib.ExitStack() as stack:
        for n in (1, 2):
            port = free_port()
            env = {**os.environ, **service_env, "DATABASE_URL": replicas_database, "PORT": str(port), "STRIPE_SECRET_KEY": "sk_test_platform_replicas",
                   "STRIPE_API_BASE": stripe_sim, "LOG_LEVEL": "warning", "RATE_LIMIT_PER_MINUTE": str(LIMIT),
                   "SWEEP_INTERVAL": str(SWEEP_INTERVAL), "WEB_CONCURRENCY": "1"}
            url = f"http://127.0.0.1:{port}"
            stack.enter_context(running_process(["services.router"], env, ready_url=url + "/health/ready",
                                                log=logs / f"router-{n}.log"))
            urls.append(url)
        yield urls


async def call(session: aiohttp.ClientSession, url: str, method: str, path: str, headers: dict,
               json=None) -> tuple[int, dict, dict]:
    async with session.request(method, url + BASE + path, headers=headers, json=json) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def test_every_replica_exports_the_pipeline_gauges(replicas):
    """The gauges read from the database are refreshed by every replica, so a scrape of either
    shows them (refreshed by one leader only, the other replica would export nothing for an
    interval and more). First in the module: each replica's first refresh comes within 10 s of
    its start (shared.scheduler), a once-per-interval job's second run not before 13.5 s."""
    async def exported(url: str):
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
            text = await resp.text()
        return [line for line in text.splitlines() if line.startswith('outbox_backlog{service="router"}')]

    for url in replicas:
        assert await eventually(lambda url=url: exported(url), timeout=11), url


async def test_a_callers_requests_over_both_replicas_share_one_budget(replicas):
    """LIMIT requests a minute for the caller, wherever they land: alternating over the two
    replicas, exactly LIMIT of 2 * LIMIT go through (the test takes a second or two, in which
    the budget refills by well under one request), the rest are 429 with Retry-After."""
    b = next_barber()
    async with aiohttp.ClientSession() as session:
        answers = []
        for i in range(2 * LIMIT):
            status, headers, body = await call(session, replicas[i % 2], "GET", "/config", barber(b))
            answers.append((status, headers.get("Retry-After"), body.get("code")))
    allowed = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert len(allowed) == LIMIT, answers
    assert all(status == 429 and code == "rate_limited" and int(retry) >= 1 for status, retry, code in refused)
    # Both replicas refused some: the budget is one, not one each.
    assert {i % 2 for i, a in enumerate(answers) if a[0] == 429} == {0, 1}


async def test_a_burst_over_both_replicas_at_once_gets_exactly_the_budget(replicas):
    """3 * LIMIT requests of one caller released together, half to each replica: the replicas
    batch concurrent requests into one statement each (a caller may have several in a batch), and
    the two statements race on the caller's cell; exactly LIMIT go through."""
    b = next_barber()
    gate = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(i: int) -> int:
            await gate.wait()
            return (await call(session, replicas[i % 2], "GET", "/config", barber(b)))[0]

        tasks = [asyncio.create_task(one(i)) for i in range(3 * LIMIT)]
        await asyncio.sleep(0.05)
        gate.set()
        statuses = await asyncio.gather(*tasks)
    assert sorted(statuses) == [200] * LIMIT + [429] * (2 * LIMIT), statuses


async def test_limits_are_per_caller_and_admins_are_not_limited(replicas):
    b, other = next_barber(), next_barber()
    async with aiohttp.ClientSession() as session:
        for i in range(LIMIT):
            assert (await call(session, replicas[i % 2], "GET", "/config", barber(b)))[0] == 200
        assert (await call(session, replicas[0], "GET", "/config", barber(b)))[0] == 429
        assert (await call(session, replicas[1], "GET", "/config", barber(other)))[0] == 200
        for i in range(LIMIT + 2):
            assert (await call(session, replicas[i % 2], "GET", f"/config/{b}", admin()))[0] == 200


async def test_a_config_change_through_one_replica_changes_the_next_route_on_the_other(replicas):
    """Replica B has the barber's config cached (it just routed with it); the change is made
    through replica A, and the very next route B decides uses it. Done several times in a row,
    both ways, so a hint that merely tends to arrive in time would show."""
    b = next_barber()
    route = {"appointment_id": 1, "amount": "100.00"}
    async with aiohttp.ClientSession() as session:
        for n, rate in enumerate(["0.10", "0.25", "0.15", "0.30", "0.05", "0.20"]):
            writer, reader = replicas[n % 2], replicas[(n + 1) % 2]
            status, _, before = await call(session, reader, "POST", "/route", admin(), {**route, "barber_id": b})
            assert status == 200, before
            status, _, saved = await call(session, writer, "PUT", f"/config/{b}", admin(), {"commission_rate": rate})
            assert status == 200 and saved["commission_rate"] == rate, saved
            status, _, after = await call(session, reader, "POST", "/route", admin(), {**route, "barber_id": b})
            assert status == 200 and after["commission_rate"] == rate, (rate, before, after)


async def test_a_scheduled_job_runs_once_per_interval_across_replicas(replicas, router_db):
    """The pending sweeper of both replicas (every SWEEP_INTERVAL) ran, counted in job_schedule,
    about once per interval for the pair: each replica on its own would be twice that."""
    schedule = platform.job_schedule

    async def runs() -> int:
        async with router_db.connect() as conn:
            return await conn.scalar(sa.select(schedule.c.runs).where(schedule.c.name == "router-pending-sweeper")) or 0

    await eventually(runs, timeout=15)
    first, started = await runs(), time.monotonic()
    await asyncio.sleep(6 * SWEEP_INTERVAL)
    ran, elapsed = await runs() - first, time.monotonic() - started
    # At most one run per 0.9 interval (shared.scheduler.DUE_SHARE), plus one at the edge.
    assert 1 <= ran <= elapsed / (0.9 * SWEEP_INTERVAL) + 1, (ran, elapsed)
    async with router_db.connect() as conn:
        holders = set((await conn.execute(sa.text(
            "select last_holder from router.job_schedule where name = 'router-pending-sweeper'"))).scalars())
    assert holders  # someone holds the record of the last run
