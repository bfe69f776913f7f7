"""Database plumbing shared by the services: engine, per-schema metadata, platform tables.

Each service owns one Postgres schema. The platform tables every service has (outbox,
processed events, idempotency keys) are defined once here and created by each service's
first migration in its own schema.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import asyncpg
import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

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
    """Plain asyncpg for a hot path's statements: each write whose parts must be atomic is one
    statement (a CTE) in autocommit, so it costs one round trip, with no ORM session, greenlet
    hops or per-call compilation (which measured as most of `/route`'s database cost). The SQL
    lives in each service's store module, written for asyncpg (`$n` parameters)."""

    def __init__(self, settings: BaseSettings) -> None:
        self._dsn = settings.async_database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._size = settings.db_pool_size
        self._application = settings.service_name
        self._pool: asyncpg.Pool | None = None

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

    async def fetchrow_sql(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """One statement written for asyncpg (`$n` parameters), in autocommit: a hot path's write
        whose parts must be atomic is one statement (a CTE), so it costs one round trip. Prepared
        once per connection (asyncpg's statement cache)."""
        if self._pool is None:
            raise RuntimeError("HotPath.start() was not awaited")
        return await self._pool.fetchrow(sql, *args)


    async def fetch_sql(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        if self._pool is None:
            raise RuntimeError("HotPath.start() was not awaited")
        return await self._pool.fetch(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection in a transaction, for a hot path that must hold a lock across two
        statements (the second reads what committed while the first waited). Raising inside rolls
        back; the statements are the store module's, as with `fetchrow_sql`."""
        if self._pool is None:
            raise RuntimeError("HotPath.start() was not awaited")
        async with self._pool.acquire() as connection, connection.transaction():
            yield connection


class GroupCommit:
    """Group commit for a hot path's single-row inserts. A row is written at once when fewer than
    `in_flight` writes are under way; rows that arrive meanwhile wait and go together, in one
    statement, as soon as one finishes (so an idle service adds no delay, and a busy one writes
    many rows per round trip). Each caller resumes only once the statement holding its row has
    committed, so an answer never gets ahead of its row. `sql` takes one array per column
    (`INSERT ... SELECT * FROM unnest($1::uuid[], ...) ON CONFLICT DO NOTHING RETURNING key`);
    `insert` answers whether its row went in (False: its key was there already). A failing batch
    is written again row by row, so a bad row fails only its own caller."""

    def __init__(self, hot: HotPath, sql: str, *, in_flight: int = 2, max_rows: int = 1000) -> None:
        self._hot = hot
        self._sql = sql
        self._in_flight = in_flight
        self._max_rows = max_rows
        self._pending: list[tuple[tuple, Any, asyncio.Future]] = []
        self._writing: set[asyncio.Task] = set()

    async def insert(self, row: tuple, key: Any) -> Any:
        """Resumes once the statement holding `row` committed, with what `_answer` gives it (here:
        whether it went in)."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((row, key, future))
        if len(self._writing) < self._in_flight:
            self._flush()
        return await asyncio.shield(future)  # a caller that gives up does not unwrite its row

    def _flush(self) -> None:
        batch, self._pending = self._pending[:self._max_rows], self._pending[self._max_rows:]
        if batch:
            task = asyncio.get_running_loop().create_task(self._write(batch))
            self._writing.add(task)
            task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task) -> None:
        self._writing.discard(task)
        if self._pending and len(self._writing) < self._in_flight:
            self._flush()

    async def _write(self, batch: list[tuple[tuple, Any, asyncio.Future]]) -> None:
        batch = self._admit(batch)
        try:
            rows = await self._hot.fetch_sql(self._sql, *(list(column) for column in zip(*(r for r, _, _ in batch))))
        except Exception as exc:
            if len(batch) > 1:
                await asyncio.gather(*(self._write([item]) for item in batch))
            elif not batch[0][2].done():
                batch[0][2].set_exception(exc)
            return
        self._answer(batch, rows)

    def _admit(self, batch: list[tuple[tuple, Any, asyncio.Future]]) -> list[tuple[tuple, Any, asyncio.Future]]:
        """The rows this statement takes (a subclass may keep some back for the next one, into
        `_pending`; it must take at least the first)."""
        return batch

    def _answer(self, batch: list[tuple[tuple, Any, asyncio.Future]], rows: list) -> None:
        """Resume each caller from the statement's rows: here, whether its key was inserted."""
        inserted = {row[0] for row in rows}
        for _, key, future in batch:
            if not future.done():
                future.set_result(key in inserted)


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


async def driver_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under a session, inside its transaction (for COPY and array
    statements written in SQL): what it writes commits or rolls back with the session."""
    return (await (await session.connection()).get_raw_connection()).driver_connection


class Stage:
    """A session-local staging table for a bulk write: rows are COPYed into it, then one statement
    moves them into `target` (`select` reads them back, cast). Shaped like `target`'s `columns`,
    except that its `text_columns` (numeric ones) hold exact decimal strings, cast back to numeric
    by Postgres: asyncpg's binary encoding of a `Decimal` was most of a bulk COPY's cost (5,000 rows
    with five amounts: 62-72 ms as numeric, 24-32 ms as text, the `str()` included).

    `records` turns rows of Python values (in `columns` order) into what `copy` sends."""

    def __init__(self, name: str, target: str, columns: tuple[str, ...], text_columns: tuple[str, ...]) -> None:
        unknown = set(text_columns) - set(columns)
        if unknown:
            raise ValueError(f"text columns not among the columns: {sorted(unknown)}")
        self.name = name
        self.columns = columns
        self._positions = tuple(i for i, c in enumerate(columns) if c in text_columns)
        typed = ", ".join(f"{c}::text AS {c}" if c in text_columns else c for c in columns)
        # One statement whatever was created before in this session (no ALTER on every batch).
        self.create = (f"CREATE TEMP TABLE IF NOT EXISTS {name} ON COMMIT DELETE ROWS AS "
                       f"SELECT {typed} FROM {target} WITH NO DATA")
        self.select = ", ".join(f"{c}::numeric AS {c}" if c in text_columns else c for c in columns)

    def records(self, rows: Any) -> list[tuple]:
        positions = self._positions
        out = []
        for row in rows:
            values = list(row)
            for i in positions:
                if values[i] is not None:
                    values[i] = str(values[i])
            out.append(tuple(values))
        return out

    async def copy(self, conn: asyncpg.Connection, records: list[tuple]) -> None:
        """COPY `records` (already as `records` makes them) into the stage, inside the caller's
        transaction (the stage empties at its commit)."""
        await conn.execute(self.create)
        await conn.copy_records_to_table(self.name, columns=self.columns, records=records)


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


class PlatformTables:
    """The outbox, processed-events, idempotency, dead-letter and audit tables of one service schema."""

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
        self.audit_log = sa.Table(
            "audit_log",
            metadata,
            sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
            sa.Column("actor_role", sa.Text, nullable=False),
            sa.Column("actor_id", sa.BigInteger, nullable=False),
            sa.Column("action", sa.Text, nullable=False),
            sa.Column("subject", sa.Text, nullable=False),
            sa.Column("before", JSONB),
            sa.Column("after", JSONB),
            sa.Index("audit_log_subject", "subject", "id"),
        )
        # What the replicas of one service agree on (migration v5, `create_replica_coordination_v5`).
        self.rate_limits = sa.Table(
            "rate_limits",
            metadata,
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("tat", sa.Float(precision=53), nullable=False),
            sa.Column("granted", sa.Integer, nullable=False, server_default="0"),
            prefixes=["UNLOGGED"],
        )
        self.job_schedule = sa.Table(
            "job_schedule",
            metadata,
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("runs", sa.BigInteger, nullable=False, server_default="0"),
            sa.Column("last_started_at", sa.DateTime(timezone=True)),
            sa.Column("last_holder", sa.Text),
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
