"""Database plumbing shared by the services: engine, per-schema metadata, platform tables.

Each service owns one Postgres schema. The platform tables every service has (outbox,
processed events, idempotency keys) are defined once here and created by each service's
first migration in its own schema.
"""

from __future__ import annotations

from typing import Any, TypeVar

import asyncpg
import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from shared.config import BaseSettings


def create_engine(settings: BaseSettings) -> AsyncEngine:
    return create_async_engine(
        settings.async_database_url,
        pool_size=settings.db_pool_size,
        # No overflow: connections opened past the pool are closed on return, and reconnecting
        # under load (TLS probe, auth, startup) cost more than waiting for a pooled one.
        max_overflow=0,
        pool_timeout=10,
        # No pre-ping: it costs a round trip per checkout on the hot path; asyncpg invalidates
        # broken connections on use and the pool recycles them hourly.
        pool_recycle=3600,
        connect_args={"server_settings": {"application_name": settings.service_name}},
    )


class HotPath:
    """Plain asyncpg for self-contained single-statement writes on a hot path.

    The statements are still SQLAlchemy Core (one source of truth for the SQL), compiled once to
    asyncpg's `$n` form; this skips the ORM session, greenlet hops and per-call compilation that
    measured as most of `/route`'s database cost.
    """

    def __init__(self, settings: BaseSettings) -> None:
        self._dsn = settings.async_database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._size = settings.db_pool_size
        self._application = settings.service_name
        self._pool: asyncpg.Pool | None = None
        self._compiled: dict[int, tuple[str, list[str]]] = {}

    @property
    def dsn(self) -> str:
        return self._dsn

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=self._size, init=_json_codecs, reset=_keep_session,
            server_settings={"application_name": f"{self._application}-hot"},
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def fetchrow(self, statement: sa.Executable, params: dict) -> asyncpg.Record | None:
        compiled = self._compiled.get(id(statement))
        if compiled is None:
            compiled = self._compiled[id(statement)] = _compile_for_asyncpg(statement, list(params))
        sql, order = compiled
        if self._pool is None:
            raise RuntimeError("HotPath.start() was not awaited")
        return await self._pool.fetchrow(sql, *(params[name] for name in order))


    async def fetchrow_sql(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """One statement written for asyncpg (`$n` parameters), in autocommit: a hot path's write
        whose parts must be atomic is one statement (a CTE), so it costs one round trip. Prepared
        once per connection (asyncpg's statement cache)."""
        if self._pool is None:
            raise RuntimeError("HotPath.start() was not awaited")
        return await self._pool.fetchrow(sql, *args)


async def _json_codecs(conn: asyncpg.Connection) -> None:
    """json/jsonb as Python values, as SQLAlchemy gives them, so rows read here convert alike."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, schema="pg_catalog", encoder=_encode_json, decoder=msgspec.json.decode)


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset when a connection goes back to the pool. asyncpg's default sends `RESET ALL;
    UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()`, one more round trip per statement; the hot
    path runs single autocommit statements that leave no session state to reset."""


def _compile_for_asyncpg(statement: sa.Executable, names: list[str]) -> tuple[str, list[str]]:
    from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

    bound = statement.values({name: sa.bindparam(name) for name in names})  # type: ignore[attr-defined]
    compiled = bound.compile(dialect=asyncpg_dialect.dialect())
    return str(compiled), list(compiled.positiontup or [])


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


class PlatformTables:
    """The outbox, processed-events and idempotency tables of one service schema."""

    def __new__(cls, metadata: sa.MetaData) -> PlatformTables:
        # One set per MetaData: a runtime and a test may both ask for the same schema's tables.
        existing = metadata.info.get("platform_tables")
        if existing is None:
            existing = metadata.info["platform_tables"] = super().__new__(cls)
            existing._define(metadata)
        return existing

    def _define(self, metadata: sa.MetaData) -> None:
        # The live model; the migrations that create these tables are frozen DDL in
        # `shared.migrations` (a change here needs a new migration there).
        self.metadata = metadata
        self.outbox = sa.Table(
            "outbox",
            metadata,
            sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
            sa.Column("subject", sa.Text, nullable=False),
            sa.Column("event_type", sa.Text, nullable=False),
            # The exact bytes published, so a re-publish after a crash is byte-identical.
            sa.Column("body", sa.LargeBinary, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
            sa.Column("published_at", sa.DateTime(timezone=True)),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sa.Column("last_error", sa.Text),
            sa.Index("outbox_unpublished", "id", postgresql_where=sa.text("published_at IS NULL")),
        )
        self.processed_events = sa.Table(
            "processed_events",
            metadata,
            sa.Column("consumer", sa.Text, primary_key=True),
            sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
            sa.Column("event_type", sa.Text, nullable=False),
            sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        )
        self.idempotency_keys = sa.Table(
            "idempotency_keys",
            metadata,
            sa.Column("scope", sa.Text, primary_key=True),
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("fingerprint", sa.Text, nullable=False),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("response_status", sa.Integer),
            sa.Column("response_body", sa.LargeBinary),
            sa.Column("response_media_type", sa.Text),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
            sa.Column("locked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
            sa.CheckConstraint("state in ('in_progress', 'completed')", name="idempotency_state"),
            sa.CheckConstraint("char_length(key) between 1 and 255", name="idempotency_key_length"),
            sa.Index("idempotency_keys_created", "created_at"),
        )
        self.dead_letters = sa.Table(
            "dead_letters",
            metadata,
            sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("consumer", sa.Text, nullable=False),
            sa.Column("event_id", UUID(as_uuid=True)),  # null when the message did not even decode
            sa.Column("event_type", sa.Text),
            sa.Column("subject", sa.Text, nullable=False),
            sa.Column("body", sa.LargeBinary, nullable=False),
            sa.Column("error", sa.Text, nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
            sa.Column("replayed_at", sa.DateTime(timezone=True)),
            sa.Column("discarded_at", sa.DateTime(timezone=True)),
            sa.Column("note", sa.Text),
            sa.Index("dead_letters_one_per_event", "consumer", "event_id", unique=True,
                     postgresql_where=sa.text("event_id IS NOT NULL")),
        )


# ---- typed rows -------------------------------------------------------------------------------------------
# Every store returns one frozen struct per table; these turn a statement's result into them.

R = TypeVar("R")


def one_row(result: Any, row_type: type[R]) -> R | None:
    """The first row of `result` as `row_type`, or None."""
    row = result.mappings().first()
    return None if row is None else row_type(**row)


def only_row(result: Any, row_type: type[R]) -> R:
    """The row a statement must return (an insert's or upsert's RETURNING, an update of a row that
    exists); its absence is a bug, raised as one."""
    row = result.mappings().first()
    if row is None:
        raise RuntimeError(f"expected a {row_type.__name__}, the statement returned none")
    return row_type(**row)


def all_rows(result: Any, row_type: type[R]) -> list[R]:
    return [row_type(**row) for row in result.mappings()]
