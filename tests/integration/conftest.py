"""Fixtures for the platform tests: the `platform_test` schema and a per-test JetStream stream."""

from __future__ import annotations

import itertools

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from shared.config import normalise_database_url
from shared.db import session_factory
from shared.messaging import NatsLink
from tests.integration.platform_support import SCHEMA, metadata

_stream_numbers = itertools.count(1)


@pytest.fixture(scope="session")
async def platform_engine(database_url):
    engine = create_async_engine(normalise_database_url(database_url))
    async with engine.begin() as conn:
        await conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        await conn.run_sync(metadata.create_all)
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
