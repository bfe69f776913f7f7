"""Transactional outbox: the unit of work that writes changes and their events together, and
the relay that publishes committed events to JetStream.

A change and its event are one database transaction. The relay publishes each committed row
with `Nats-Msg-Id` = `event_id` and only then marks it published, so a crash in between
re-publishes a byte-identical message that JetStream's duplicate window drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import UTC, datetime
from typing import Any, Self

import asyncpg
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import PlatformTables
from shared.events import Event, EventPayload, encode_event, new_event
from shared.messaging import NatsLink
from shared.migrations import outbox_channel
from shared.scheduler import lock_key
from shared.observability import OUTBOX_PUBLISH_ERRORS, OUTBOX_PUBLISHED

log = structlog.get_logger("outbox")


OUTBOX_COLUMNS = ("event_id", "subject", "event_type", "body")


def outbox_row(event: Event, subject_prefix: str) -> tuple[Any, str, str, bytes]:
    """An event as an outbox row (`OUTBOX_COLUMNS`), for a hot path that writes it in its own
    statement: the row `UnitOfWork.commit` would write."""
    return event.event_id, subject_prefix + event.event_type, event.event_type, encode_event(event)


@functools.cache
def _claim_events_sql(table: sa.Table) -> sa.TextClause:
    return sa.text(
        f"INSERT INTO {table.fullname} (consumer, event_id, event_type) "
        "SELECT :consumer, e.id, e.type FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[])) AS e(id, type) "
        "ON CONFLICT DO NOTHING RETURNING event_id")


class UnitOfWork:
    """One database transaction; the only holder of an `AsyncSession` in a request or consumer."""

    def __init__(
        self,
        sessions: async_sessionmaker,
        tables: PlatformTables,
        *,
        subject_prefix: str = "",
        relay: OutboxRelay | None = None,
    ) -> None:
        self._sessions = sessions
        self.tables = tables
        self._prefix = subject_prefix
        self._relay = relay
        self._events: list[Event] = []
        self._pending_updates: list[Any] = []
        self._after_commit: list[Any] = []
        self._committed = False
        self.session: AsyncSession

    async def __aenter__(self) -> Self:
        self.session = self._sessions()
        await self.session.begin()
        self._events = []
        self._pending_updates = []
        self._after_commit = []
        self._committed = False
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if not self._committed:
                await self.session.rollback()
        finally:
            await self.session.close()

    def emit(self, payload: EventPayload | str, data: dict[str, Any] | None = None) -> Event:
        """Queue an event (a typed payload from `shared.events`); it is written to the outbox in
        this transaction's commit. (`emit("type", {...})` is for tests and tools.)"""
        event = new_event(payload, data)
        self._events.append(event)
        return event

    def after_commit(self, callback: Any) -> None:
        """Run `callback()` once this transaction has committed (cache invalidation, signals)."""
        self._after_commit.append(callback)

    def on_commit_write(self, statement: Any) -> None:
        """Queue a statement to run just before commit (idempotency records use this)."""
        self._pending_updates.append(statement)

    async def commit(self) -> None:
        if self._events:
            await self.session.execute(
                sa.insert(self.tables.outbox),
                [dict(zip(OUTBOX_COLUMNS, outbox_row(e, self._prefix), strict=True)) for e in self._events],
            )
        for statement in self._pending_updates:
            await self.session.execute(statement)
        await self.session.commit()
        self._committed = True
        if self._events and self._relay is not None:
            self._relay.notify()
        for callback in self._after_commit:
            callback()

    async def claim_event(self, consumer: str, event: Event) -> bool:
        """Record that `consumer` applies `event`; False if it already did (then skip it)."""
        table = self.tables.processed_events
        result = await self.session.execute(
            pg_insert(table)
            .values(consumer=consumer, event_id=event.event_id, event_type=event.event_type)
            .on_conflict_do_nothing()
            .returning(table.c.event_id)
        )
        return result.first() is not None

    async def claim_events(self, consumer: str, events: list[Event]) -> set:
        """`claim_event` for many events in one statement: the ids not applied before. The ids go
        in as arrays, so the statement's text is the same for any batch (SQLAlchemy compiled a
        multi-row VALUES afresh for each batch size: a tenth of a consumer's Python)."""
        if not events:
            return set()
        result = await self.session.execute(_claim_events_sql(self.tables.processed_events), dict(
            consumer=consumer, ids=[e.event_id for e in events], types=[e.event_type for e in events]))
        return set(result.scalars())

    async def park_event(self, *, consumer: str, event: Event | None, subject: str, body: bytes, error: str,
                         attempts: int) -> None:
        """Keep a message that cannot be applied (see `shared.consumer`); one row per event."""
        table = self.tables.dead_letters
        stmt = pg_insert(table).values(
            consumer=consumer, event_id=event.event_id if event else None,
            event_type=event.event_type if event else None, subject=subject, body=body, error=error,
            attempts=attempts,
        )
        await self.session.execute(stmt.on_conflict_do_update(
            index_elements=[table.c.consumer, table.c.event_id],
            index_where=table.c.event_id.is_not(None),
            set_={"error": stmt.excluded.error, "attempts": stmt.excluded.attempts, "parked_at": sa.func.now(),
                  "replayed_at": None},
        ))

    @property
    def events(self) -> list[Event]:
        return list(self._events)


class OutboxRelay:
    """Publishes committed outbox rows, sent in id order.

    One relay per service leads at a time, whatever the number of workers and replicas: the one
    that holds the service's relay lock (a session advisory lock on a connection of its own, freed
    by Postgres when that connection or its process dies). The leader LISTENs on the outbox's
    channel, which every commit that adds outbox rows notifies (`shared.migrations`
    `create_outbox_notify_v3`), so it wakes on commits in any process; the poll is a safety net.
    The others stand by and try the lock again every `standby_interval`. Publishing itself stays
    safe with several (rows are claimed `FOR UPDATE SKIP LOCKED`; `Nats-Msg-Id` deduplicates).

    A row whose publish is not acknowledged stays unpublished and goes out again later, after
    rows sent behind it: consumers order a transaction's states by `sequence`, not by arrival."""

    def __init__(
        self,
        sessions: async_sessionmaker,
        tables: PlatformTables,
        link: NatsLink,
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        ack_timeout: float = 5.0,
        dsn: str | None = None,
        standby_interval: float = 1.0,
        coalesce: float = 0.010,
    ) -> None:
        self._sessions = sessions
        self._outbox = tables.outbox
        self._link = link
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._ack_timeout = ack_timeout
        self._dsn = dsn
        self._standby_interval = standby_interval
        self._coalesce = coalesce
        schema = tables.outbox.schema or "public"
        self.channel = outbox_channel(schema)
        self._select_sql = (f"SELECT id, event_id, subject, body FROM {schema}.outbox WHERE published_at IS NULL "
                            "ORDER BY id LIMIT $1")
        self._mark_sql = f"UPDATE {schema}.outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
        self._failed_sql = f"UPDATE {schema}.outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1"
        self.lock_key = lock_key(f"relay:{schema}")
        self.leading = False
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        """Ask the loop to finish its batch and stop; cancel only if it does not.

        (Cancelling alone was not enough: on Python 3.11 `wait_for` can swallow a cancellation
        that lands as the wake-up event fires, and the relay then ran on, hanging shutdown.)
        """
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        self._stopped.set()
        done, _ = await asyncio.wait({self._task}, timeout=3.0)
        if not done:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2.0)
        self._task = None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def run(self) -> None:
        if self._dsn is None:  # no leadership (tests that drive one relay by hand): relay from here
            await self._relay(None)
            return
        conn = None
        while not self._stopping:
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self._dsn, server_settings={"application_name": "outbox-relay"})
                # Standing by costs one tiny query a turn on a connection kept open.
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_key):
                    await conn.add_listener(self.channel, self._on_notice)
                    self.leading = True
                    log.info("outbox_relay_leading", channel=self.channel)
                    await self._relay(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: stand by, then try again
                log.warning("outbox_relay_leadership_lost", error=str(exc) or type(exc).__name__)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
                conn = None
            finally:
                if self.leading and conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):  # hand over at once, not when the socket closes
                        await asyncio.wait_for(conn.fetchval("SELECT pg_advisory_unlock($1)", self.lock_key), 2.0)
                        await conn.remove_listener(self.channel, self._on_notice)
                self.leading = False
            if not self._stopping:  # commits here do not shorten the wait: only the leader relays them
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), self._standby_interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)

    def _on_notice(self, *_: object) -> None:
        self._wake.set()

    async def _relay(self, leader: asyncpg.Connection | None) -> None:
        """Publish until stopped (or, as leader, until the lock's connection is lost)."""
        backoff = 0.1
        while not self._stopping:
            if leader is not None and leader.is_closed():
                raise ConnectionError("the relay lock's connection closed")
            self._wake.clear()
            if self._link.js is None:  # NATS not reachable yet: events wait in the outbox
                await self._sleep(self._poll_interval)
                continue
            try:
                count = await self.publish_pending(leader)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox_relay_error", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if count >= self._batch_size or self._stopping:
                continue
            await self._sleep(self._poll_interval)
            if self._wake.is_set() and self._coalesce:
                # Woken by a commit: let the commits landing right behind it join this batch (one
                # batch is two statements and one JetStream round trip, however many rows it has).
                # 10 ms, not 2: socket writes are what a route-and-pay costs most on this machine
                # (py-spy --native: 40 % of the router's GIL time in write()), and fewer batches
                # gave +5 % payments/s for at most 10 ms more event lag (tests/load/README.md).
                await asyncio.sleep(self._coalesce)

    async def publish_pending(self, leader: asyncpg.Connection | None = None) -> int:
        """Publish one batch; returns how many rows were published. The leader reads and marks on
        its own connection (two statements; it is the only relay, so nothing to lock); without
        one, rows are claimed `FOR UPDATE SKIP LOCKED` in a transaction."""
        js = self._link.js
        if js is None:
            return 0
        if leader is not None:
            rows = await leader.fetch(self._select_sql, self._batch_size)
            published, failure = await self._send(js, rows)
            if published:
                await leader.execute(self._mark_sql, published)
            if failure is not None:
                await leader.execute(self._failed_sql, failure[0], failure[1])
        else:
            outbox = self._outbox
            async with self._sessions() as session, session.begin():
                rows = (
                    await session.execute(
                        sa.select(outbox.c.id, outbox.c.event_id, outbox.c.subject, outbox.c.body)
                        .where(outbox.c.published_at.is_(None))
                        .order_by(outbox.c.id)
                        .limit(self._batch_size)
                        .with_for_update(skip_locked=True)
                    )
                ).mappings().all()
                published, failure = await self._send(js, rows)
                await self._mark_published(session, published)
                if failure is not None:
                    await session.execute(
                        sa.update(outbox)
                        .where(outbox.c.id == failure[0])
                        .values(attempts=outbox.c.attempts + 1, last_error=failure[1])
                    )
        if failure is not None:
            OUTBOX_PUBLISH_ERRORS.inc()
        OUTBOX_PUBLISHED.inc(len(published))
        if failure is not None:
            raise RuntimeError(f"publish failed: {failure[1]}")
        return len(published)

    async def _send(self, js: Any, rows: Any) -> tuple[list[int], tuple[int, str] | None]:
        """Publish rows; the ids acknowledged, and the first failure (id, why)."""
        # Pipelined: every message of the batch is sent (in id order) before any ack is awaited,
        # so a batch costs one round trip to JetStream, not one per event.
        sent: list[tuple[Any, asyncio.Future]] = []
        failure: tuple[int, str] | None = None
        for row in rows:
            try:
                sent.append((row, await js.publish_async(
                    row["subject"], row["body"], stream=self._link.stream,
                    headers={"Nats-Msg-Id": str(row["event_id"])}, wait_stall=self._ack_timeout)))
            except Exception as exc:  # the connection went: what was sent may still be acked
                failure = (row["id"], str(exc) or type(exc).__name__)
                break
        acks = await asyncio.gather(*(asyncio.wait_for(future, self._ack_timeout) for _, future in sent),
                                    return_exceptions=True)
        published: list[int] = []
        for (row, _), ack in zip(sent, acks, strict=True):
            if isinstance(ack, BaseException):  # not acked: published again later (deduplicated by id)
                failure = failure or (row["id"], str(ack) or type(ack).__name__)
                continue
            published.append(row["id"])
            if ack.duplicate:
                log.info("outbox_duplicate_dropped", event_id=str(row["event_id"]))
        return published, failure

    async def _mark_published(self, session: AsyncSession, ids: list[int]) -> None:
        if ids:
            await session.execute(
                sa.update(self._outbox).where(self._outbox.c.id.in_(ids)).values(published_at=datetime.now(UTC))
            )
