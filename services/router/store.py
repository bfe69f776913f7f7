"""The router's named queries: every statement the use cases run, over a unit of work's session.

Use cases say *what* (`lock_payment`, `settle_attempt`); this module says *how* in SQL. Rows come
back as plain dicts. Writes that settle something are conditional (`WHERE status = 'pending'`), so
whoever settles first wins and a late writer learns it from the empty result.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.router import tables as t
from shared import attempts
from shared.pagination import after_cursor

Row = dict[str, Any]
c = t.hybrid_payment_configs
pc = t.processor_connections
rd = t.routing_decisions
p = t.platform_payments
r = t.platform_refunds

# Built once: the `/route` hot path only binds parameters to it.
INSERT_DECISION = pg_insert(rd).on_conflict_do_nothing().returning(rd.c.route_id)


def _one(result) -> Row | None:
    row = result.mappings().first()
    return dict(row) if row is not None else None


# ---- configs ---------------------------------------------------------------------------------------

async def load_config(session: AsyncSession, barber_id: int, *, lock: bool = False) -> Row | None:
    query = sa.select(c).where(c.c.barber_id == barber_id)
    return _one(await session.execute(query.with_for_update() if lock else query))


async def insert_config(session: AsyncSession, values: Row) -> Row | None:
    """The barber's first row, or None when a concurrent writer inserted it first."""
    return _one(await session.execute(
        pg_insert(c).values(**values).on_conflict_do_nothing(index_elements=[c.c.barber_id]).returning(c)))


async def update_config(session: AsyncSession, barber_id: int, version: int, values: Row) -> Row:
    return _one(await session.execute(
        sa.update(c).where(c.c.barber_id == barber_id, c.c.version == version)
        .values(**values, version=c.c.version + 1).returning(c)))  # type: ignore[return-value]


# ---- connections read model --------------------------------------------------------------------------

async def load_connections(session: AsyncSession, barber_id: int) -> list[Row]:
    rows = await session.execute(sa.select(pc).where(pc.c.barber_id == barber_id)
                                 .order_by(pc.c.connected_at, pc.c.connection_id))
    return [dict(row) for row in rows.mappings()]


async def upsert_connection(session: AsyncSession, values: Row) -> None:
    """Insert or update; an older state never overwrites a newer one: by the connection's version
    where both have one (replicas' clocks may disagree), else by the event's time."""
    stmt = pg_insert(pc).values(**values)
    update = {k: v for k, v in values.items() if k not in ("connection_id", "connected_at")}
    newer = sa.case(
        (sa.and_(pc.c.version.is_not(None), stmt.excluded.version.is_not(None)), pc.c.version <= stmt.excluded.version),
        else_=pc.c.event_occurred_at <= stmt.excluded.event_occurred_at)
    await session.execute(stmt.on_conflict_do_update(index_elements=[pc.c.connection_id], set_=update, where=newer))


# ---- routing decisions -------------------------------------------------------------------------------

async def insert_decision(session: AsyncSession, decision: Row) -> bool:
    return (await session.execute(INSERT_DECISION, decision)).first() is not None


async def load_decision(session: AsyncSession, route_id: uuid.UUID, *, lock: bool = False) -> Row | None:
    query = sa.select(rd).where(rd.c.route_id == route_id)
    return _one(await session.execute(query.with_for_update() if lock else query))


async def set_channel(session: AsyncSession, route_id: uuid.UUID, values: Row) -> None:
    await session.execute(sa.update(rd).where(rd.c.route_id == route_id).values(**values))


# ---- payments ------------------------------------------------------------------------------------------

async def live_attempt(session: AsyncSession, route_id: uuid.UUID) -> Row | None:
    """The route's attempt that is in flight or took money (at most one: a unique index says so)."""
    return _one(await session.execute(
        sa.select(p).where(p.c.route_id == route_id, p.c.status.not_in(("failed", "canceled")))))


async def insert_attempt(session: AsyncSession, values: Row) -> Row:
    return _one(await session.execute(sa.insert(p).values(**values).returning(p)))  # type: ignore[return-value]


async def load_payment(session: AsyncSession, payment_id: uuid.UUID, *, lock: bool = False) -> Row | None:
    query = sa.select(p).where(p.c.id == payment_id)
    return _one(await session.execute(query.with_for_update() if lock else query))


async def touch_pending_payment(session: AsyncSession, payment_id: uuid.UUID, now: datetime) -> Row | None:
    """Take the lease of a pending attempt before calling the processor (None: it is settled)."""
    return _one(await session.execute(
        sa.update(p).where(p.c.id == payment_id, p.c.status == "pending")
        .values(updated_at=now).returning(p)))


async def settle_attempt(session: AsyncSession, payment_id: uuid.UUID, values: Row, *,
                         untouched_since: datetime | None = None) -> Row | None:
    """Move a pending attempt to its outcome; None when someone settled (or touched) it first."""
    where = [p.c.id == payment_id, p.c.status == "pending"]
    if untouched_since is not None:  # the sweeper: only attempts nobody is driving right now
        where.append(p.c.updated_at < untouched_since)
    return _one(await session.execute(
        sa.update(p).where(*where).values(**values, version=p.c.version + 1).returning(p)))


async def record_refunded(session: AsyncSession, payment_id: uuid.UUID, refunded_amount: Decimal, status: str,
                          now: datetime) -> Row:
    return _one(await session.execute(
        sa.update(p).where(p.c.id == payment_id)
        .values(refunded_amount=refunded_amount, status=status, updated_at=now, version=p.c.version + 1)
        .returning(p)))  # type: ignore[return-value]


async def pending_attempts(session: AsyncSession, untouched_since: datetime, now: datetime, limit: int) -> list[Row]:
    """Attempts nobody came back for, not backed off, oldest first."""
    rows = await session.execute(
        sa.select(p).where(p.c.status == "pending", p.c.updated_at < untouched_since, attempts.due(p, now))
        .order_by(attempts.sweep_order(p)).limit(limit))
    return [dict(row) for row in rows.mappings()]


async def back_off_payment(session: AsyncSession, row: Row, now: datetime) -> None:
    await attempts.back_off(session, p, row["id"], row["check_failures"], now)


async def check_payment_later(session: AsyncSession, payment_id: uuid.UUID, when: datetime) -> None:
    await attempts.check_later(session, p, payment_id, when)


async def list_payments(session: AsyncSession, *, barber_id: int | None, status: str | None,
                        payment_type: str | None, since: datetime | None, until: datetime | None,
                        cursor: str | None, limit: int) -> list[Row]:
    """Newest first; `limit + 1` rows so the caller knows whether there is a next page."""
    if payment_type == "external":
        return []  # external payments are the external service's records
    where = [clause for clause in (
        p.c.barber_id == barber_id if barber_id is not None else None,
        p.c.status == status if status is not None else None,
        p.c.created_at >= since if since is not None else None,
        p.c.created_at < until if until is not None else None,
        after_cursor(p.c.created_at, p.c.id, cursor, uuid.UUID),
    ) if clause is not None]
    rows = await session.execute(
        sa.select(p).where(*where).order_by(p.c.created_at.desc(), p.c.id.desc()).limit(limit + 1))
    return [dict(row) for row in rows.mappings()]


# ---- refunds -------------------------------------------------------------------------------------------

async def pending_refund_total(session: AsyncSession, payment_id: uuid.UUID) -> Decimal:
    return await session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(r.c.amount), 0))
        .where(r.c.payment_id == payment_id, r.c.status == "pending"))


async def load_refund(session: AsyncSession, refund_id: uuid.UUID) -> Row | None:
    return _one(await session.execute(sa.select(r).where(r.c.id == refund_id)))


async def refunds_of(session: AsyncSession, payment_id: uuid.UUID) -> list[Row]:
    rows = await session.execute(sa.select(r).where(r.c.payment_id == payment_id).order_by(r.c.created_at))
    return [dict(row) for row in rows.mappings()]


async def insert_refund(session: AsyncSession, values: Row) -> Row:
    return _one(await session.execute(sa.insert(r).values(**values).returning(r)))  # type: ignore[return-value]


async def touch_pending_refund(session: AsyncSession, refund_id: uuid.UUID, now: datetime) -> Row | None:
    return _one(await session.execute(
        sa.update(r).where(r.c.id == refund_id, r.c.status == "pending").values(updated_at=now).returning(r)))


async def settle_refund(session: AsyncSession, refund_id: uuid.UUID, values: Row, *,
                        untouched_since: datetime | None = None) -> Row | None:
    where = [r.c.id == refund_id, r.c.status == "pending"]
    if untouched_since is not None:
        where.append(r.c.updated_at < untouched_since)
    return _one(await session.execute(sa.update(r).where(*where).values(**values).returning(r)))


async def pending_refunds(session: AsyncSession, untouched_since: datetime, now: datetime, limit: int) -> list[Row]:
    """Refunds nobody came back for, not backed off, oldest first."""
    rows = await session.execute(
        sa.select(r).where(r.c.status == "pending", r.c.updated_at < untouched_since, attempts.due(r, now))
        .order_by(attempts.sweep_order(r)).limit(limit))
    return [dict(row) for row in rows.mappings()]


async def back_off_refund(session: AsyncSession, row: Row, now: datetime) -> None:
    await attempts.back_off(session, r, row["id"], row["check_failures"], now)


async def check_refund_later(session: AsyncSession, refund_id: uuid.UUID, when: datetime) -> None:
    await attempts.check_later(session, r, refund_id, when)
