"""Integration fixtures: the `platform_test` schema and a per-test JetStream stream (platform
tests), and the router in-process with the Stripe simulator as a process of its own."""

from __future__ import annotations

import itertools

import aiohttp
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import create_async_engine

from services.router.app import create_app
from services.router.settings import RouterSettings
from shared.config import normalise_database_url
from shared.db import session_factory
from shared.messaging import NatsLink
from shared.migrations import create_outbox_notify_v3
from tests.integration.platform_support import SCHEMA, metadata

_stream_numbers = itertools.count(1)


class _Op:
    """What a migration helper needs of alembic's `op`, on a plain connection."""

    def __init__(self, connection) -> None:
        self.connection = connection

    def execute(self, sql: str) -> None:
        self.connection.exec_driver_sql(sql)


@pytest.fixture(scope="session")
async def platform_engine(database_url):
    engine = create_async_engine(normalise_database_url(database_url))
    async with engine.begin() as conn:
        await conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(lambda sync: create_outbox_notify_v3(_Op(sync), SCHEMA))
    yield engine
    await engine.dispose()


@pytest.fixture
async def sessions(platform_engine):
    return session_factory(platform_engine)


@pytest.fixture
async def link(infra, event_names):
    """A NATS link on a stream of this test's own, so message counts are this test's alone."""
    n = next(_stream_numbers)
    stream = f"{event_names['EVENT_STREAM']}_{n}"
    prefix = f"{event_names['EVENT_SUBJECT_PREFIX']}s{n}."
    nats_link = NatsLink(infra.nats_url, stream=stream, subject_prefix=prefix, name=f"test-{n}")
    await nats_link.start(wait=5)
    assert nats_link.connected
    yield nats_link
    js = nats_link.js
    await js.delete_stream(stream)
    await nats_link.close()


# ---- the router in-process, with the Stripe simulator as its own process ----------------------------

ROUTER_SIM_KEY = "sk_test_platform_account"


@pytest.fixture
async def control(sim):
    """A plain aiohttp session on the module's own simulator (`sim`), for its /_sim controls and
    raw calls to its API."""
    async with aiohttp.ClientSession(base_url=sim.url) as session:
        yield session


@pytest.fixture(scope="module")
async def router_db(database_url):
    engine = create_async_engine(normalise_database_url(database_url))
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def router_app(make_settings, stripe_sim):
    settings = make_settings(RouterSettings, stripe_secret_key=ROUTER_SIM_KEY, stripe_api_base=stripe_sim,
                             stripe_timeout=1.0, log_level="error", external_service_url="http://127.0.0.1:1")
    return create_app(settings)


@pytest.fixture(scope="module")
async def router_client(router_app):
    async with AsyncTestClient(router_app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def client(router_client):
    """The router's test client (modules with a client of their own override this name)."""
    return router_client


@pytest.fixture(scope="module")
def db(router_db):
    return router_db
