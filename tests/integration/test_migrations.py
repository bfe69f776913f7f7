"""Each service's migrations go up to head, down to base and up again on a real Postgres,
each in its own schema with its own version table."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest

from shared.migrations import SERVICES, downgrade, upgrade
from tools.devinfra import create_database, drop_database


@pytest.fixture
def scratch_database(infra):
    name = f"hp_migr_{uuid.uuid4().hex[:10]}"
    create_database(infra.postgres_url, name)
    yield infra.database_url(name)
    drop_database(infra.postgres_url, name)


async def tables_of(url: str, schema: str) -> set[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("select tablename from pg_tables where schemaname = $1", schema)
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


@pytest.mark.parametrize("service", SERVICES)
async def test_up_down_up(scratch_database, service):
    with ThreadPoolExecutor(1) as pool:  # Alembic's env runs its own event loop
        pool.submit(upgrade, service, scratch_database).result()
        at_head = await tables_of(scratch_database, service)
        assert {"alembic_version", "outbox", "processed_events", "idempotency_keys"} <= at_head
        pool.submit(downgrade, service, scratch_database).result()
        assert await tables_of(scratch_database, service) == {"alembic_version"}
        pool.submit(upgrade, service, scratch_database).result()
        assert await tables_of(scratch_database, service) == at_head
    for other in set(SERVICES) - {service}:  # a service touches its own schema only
        assert await tables_of(scratch_database, other) == set()


def _drift(connection, schema: str, metadata) -> list:
    """What Alembic's autogenerate would change to make the migrated schema match `tables.py`."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def include_object(obj, name, type_, reflected, compare_to) -> bool:
        if type_ == "table":
            return obj.schema == schema and name != "alembic_version"
        return True

    context = MigrationContext.configure(connection, opts={
        "include_schemas": True, "include_object": include_object, "compare_type": True,
        "version_table_schema": schema,
    })
    return compare_metadata(context, metadata)


@pytest.mark.filterwarnings("ignore:Can't validate argument 'dialect_options'")  # partial-index reflection
@pytest.mark.parametrize("service", SERVICES)
async def test_the_migrated_schema_matches_the_tables_module(database_url, service):
    """A change to `tables.py` without its migration (or the reverse) fails here."""
    import importlib

    from sqlalchemy.ext.asyncio import create_async_engine

    from shared.config import normalise_database_url

    tables = importlib.import_module(f"services.{service}.tables")
    engine = create_async_engine(normalise_database_url(database_url))
    try:
        async with engine.connect() as conn:
            drift = await conn.run_sync(_drift, tables.SCHEMA, tables.metadata)
    finally:
        await engine.dispose()
    assert drift == [], f"{service}: tables.py and the migrations disagree: {drift}"


async def test_a_service_refuses_to_start_on_a_schema_not_at_head(scratch_database, make_settings):
    """An old schema (a deploy before its migration, a restore of an older backup) or none at all:
    the service stops at start with what to run, instead of failing in the middle of requests."""
    from litestar.testing import AsyncTestClient

    from services.router.app import create_app
    from services.router.settings import RouterSettings
    from shared.migrations import head_revision

    settings = make_settings(RouterSettings, database_url=scratch_database, log_level="error")

    async def start_failure() -> str:
        try:
            async with AsyncTestClient(create_app(settings)):
                return ""
        except BaseException as exc:  # the test client wraps it in an ExceptionGroup
            while isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]
            return f"{type(exc).__name__}: {exc}"

    assert re.search("SchemaNotAtHead: .*not migrated.*make migrate", await start_failure())
    with ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade, "router", scratch_database, "rou0004").result()
    assert f"at rou0004, this code needs {head_revision('router')}" in await start_failure()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade, "router", scratch_database).result()
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/health/ready")).status_code == 200
