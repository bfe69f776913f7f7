"""The collections service's named queries over a unit of work's session. Rows come back as typed,
frozen structs, one per table (`CollectionRow`, `AttemptRow`, ...); values written go in as dicts of
columns. Aggregation is one set-based statement per run (`bill_unbilled`), serialised by a
transaction-level advisory lock, so two replicas running it at once bill every accrual once."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.collections import tables as t
from shared import attempts
from shared.db import all_rows as _all
from shared.db import driver_connection
from shared.db import one_row as _one
from shared.db import only_row as _only
from shared.pagination import after_cursor
from shared.scheduler import lock_key

Values = dict[str, Any]  # columns to write
bs, pm, ts, ac, pc, at = (t.barber_settings, t.payment_methods, t.transaction_states, t.accruals,
                          t.collections, t.attempts)
AGGREGATION_LOCK = lock_key("collections-aggregation")

CollectionStatus = Literal["pending", "collected", "failed", "overdue"]
AttemptStatus = Literal["pending", "succeeded", "failed"]
ChargeMethod = Literal["payment_method", "connect_debit"]
Frequency = Literal["daily", "weekly", "monthly"]


class BarberSettingsRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of collections.barber_settings (from the router's `config.changed`)."""

    barber_id: int
    commission_collection_frequency: Frequency
    auto_collection_enabled: bool
    connect_account_id: str | None
    commission_rate: Decimal
    config_version: int
    updated_at: datetime


class PaymentMethodRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of collections.payment_methods."""

    barber_id: int
    stripe_customer_id: str | None
    stripe_payment_method_id: str
    updated_at: datetime


class TransactionStateRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of collections.transaction_states: what a transaction owed at the last event applied."""

    transaction_id: str
    barber_id: int
    currency: str
    sequence: int
    status: str
    amount: Decimal
    refunded_amount: Decimal
    commission_amount: Decimal
    commission_accrued: Decimal
    commission_reversed: Decimal
    updated_at: datetime


class CollectionRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of collections.platform_collections."""

    id: uuid.UUID
    barber_id: int
    amount: Decimal
    currency: str
    collection_type: str
    status: CollectionStatus
    external_transaction_ids: list[str]
    commission_rate: Decimal | None
    due_date: date
    collection_method: ChargeMethod | None
    stripe_invoice_id: str | None
    payment_intent_id: str | None
    collected_at: datetime | None
    failed_reason: str | None
    attempts: int
    first_failed_at: datetime | None
    next_attempt_at: datetime | None
    period_end: datetime
    created_at: datetime
    updated_at: datetime
    version: int


class AttemptRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of collections.collection_attempts."""

    id: uuid.UUID
    collection_id: uuid.UUID
    attempt: int
    status: AttemptStatus
    method: ChargeMethod | None
    processor_idempotency_key: str
    payment_intent_id: str | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    next_check_at: datetime | None
    check_failures: int


# ---- barber settings and payment methods ------------------------------------------------------------

async def upsert_settings(session: AsyncSession, rows: list[Values]) -> None:
    """Barbers' settings in one statement (one row per barber); an older config never overwrites a
    newer one."""
    if not rows:
        return
    stmt = pg_insert(bs).values(sorted(rows, key=lambda r: r["barber_id"]))  # key order, as every writer
    await session.execute(stmt.on_conflict_do_update(
        index_elements=[bs.c.barber_id], set_={k: stmt.excluded[k] for k in rows[0] if k != "barber_id"},
        where=bs.c.config_version <= stmt.excluded.config_version))


async def load_settings(session: AsyncSession, barber_id: int) -> BarberSettingsRow | None:
    return _one(await session.execute(sa.select(bs).where(bs.c.barber_id == barber_id)), BarberSettingsRow)


async def load_payment_method(session: AsyncSession, barber_id: int) -> PaymentMethodRow | None:
    return _one(await session.execute(sa.select(pm).where(pm.c.barber_id == barber_id)), PaymentMethodRow)


async def upsert_payment_method(session: AsyncSession, values: Values) -> PaymentMethodRow:
    stmt = pg_insert(pm).values(**values)
    return _only(await session.execute(stmt.on_conflict_do_update(
        index_elements=[pm.c.barber_id], set_={k: v for k, v in values.items() if k != "barber_id"},
    ).returning(pm)), PaymentMethodRow)


# ---- accruals ---------------------------------------------------------------------------------------

async def lock_transaction_state(session: AsyncSession, transaction_id: str) -> TransactionStateRow | None:
    return _one(await session.execute(sa.select(ts).where(ts.c.transaction_id == transaction_id).with_for_update()),
                TransactionStateRow)


async def insert_transaction_state(session: AsyncSession, values: Values) -> bool:
    """False when a concurrent event for the same transaction inserted it first."""
    result = await session.execute(pg_insert(ts).values(**values).on_conflict_do_nothing().returning(ts.c.sequence))
    return result.first() is not None


async def update_transaction_state(session: AsyncSession, transaction_id: str, values: Values) -> None:
    await session.execute(sa.update(ts).where(ts.c.transaction_id == transaction_id).values(**values))


# The usual batch: transactions heard of for the first time. Their states are inserted already at
# the event's values and their accruals beside them, in one statement; a state that exists (or that
# a concurrent batch is inserting) is left alone and its transaction id is not returned, so that
# event goes the row-locking way (`lock_transaction_state`). Rows go in transaction id order, as
# every writer of these keys takes them, so two replicas' batches cannot deadlock.
STATE_COLUMNS = ("transaction_id", "barber_id", "currency", "sequence", "status", "amount", "refunded_amount",
                 "commission_amount", "commission_accrued", "commission_reversed", "updated_at")
_STATE_TYPES = ("text", "int", "text", "int", "text", "numeric", "numeric", "numeric", "numeric", "numeric",
                "timestamptz")
ACCRUAL_COLUMNS = ("barber_id", "transaction_id", "currency", "kind", "amount", "accrued_at", "event_id",
                   "created_at")
_ACCRUAL_TYPES = ("int", "text", "text", "text", "numeric", "timestamptz", "uuid", "timestamptz")
START_STATES = f"""
WITH started AS (
    INSERT INTO {t.SCHEMA}.transaction_states ({", ".join(STATE_COLUMNS)})
    SELECT * FROM unnest({", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_STATE_TYPES, 1))})
        AS s({", ".join(STATE_COLUMNS)})
    ORDER BY transaction_id
    ON CONFLICT (transaction_id) DO NOTHING
    RETURNING transaction_id
), accrued AS (
    INSERT INTO {t.SCHEMA}.commission_accruals ({", ".join(ACCRUAL_COLUMNS)})
    SELECT a.* FROM unnest({", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_ACCRUAL_TYPES, len(STATE_COLUMNS) + 1))})
        AS a({", ".join(ACCRUAL_COLUMNS)})
    JOIN started USING (transaction_id)
)
SELECT transaction_id FROM started"""


async def start_transaction_states(session: AsyncSession, states: list[Values], accruals: list[Values]) -> set[str]:
    """`START_STATES` in the session's transaction: the transaction ids whose state (and accruals) it
    wrote; the others already had a state."""
    if not states:
        return set()
    raw = await driver_connection(session)
    rows = await raw.fetch(START_STATES, *([s[c] for s in states] for c in STATE_COLUMNS),
                           *([a[c] for a in accruals] for c in ACCRUAL_COLUMNS))
    return {r["transaction_id"] for r in rows}


async def insert_accruals(session: AsyncSession, rows: list[Values]) -> None:
    if rows:
        await session.execute(sa.insert(ac), rows)


# ---- aggregation -------------------------------------------------------------------------------------

async def bill_unbilled(session: AsyncSession, *, ends: dict[str, datetime], now: datetime, minimum: Decimal,
                        default_frequency: str, default_auto: bool, force: bool, barber_id: int | None,
                        due: date) -> tuple[list[CollectionRow], int]:
    """The plan of `domain.plan_collections`, run set-based: lock the run, group the unbilled
    accruals before each barber's window end, create one collection per (barber, currency) at or
    above the minimum, and mark exactly the accruals that make its amount. Returns the new
    collections and how many accruals they billed."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(AGGREGATION_LOCK)))
    frequency = sa.func.coalesce(bs.c.commission_collection_frequency, default_frequency)
    end = sa.literal(now) if force else sa.case(
        (frequency == "daily", sa.literal(ends["daily"])), (frequency == "weekly", sa.literal(ends["weekly"])),
        else_=sa.literal(ends["monthly"]))
    where = [ac.c.collection_id.is_(None), ac.c.accrued_at < end]
    if barber_id is not None:  # a manual run for one barber: whatever its automatic setting
        where.append(ac.c.barber_id == barber_id)
    else:
        where.append(sa.func.coalesce(bs.c.auto_collection_enabled, default_auto))
    candidates = (sa.select(ac.c.id, ac.c.barber_id, ac.c.currency, ac.c.amount, ac.c.transaction_id,
                            end.label("period_end"))
                  .select_from(ac.outerjoin(bs, bs.c.barber_id == ac.c.barber_id)).where(*where)
                  .cte("candidates").prefix_with("MATERIALIZED"))  # one snapshot of the set, read twice
    groups = (sa.select(candidates.c.barber_id, candidates.c.currency,
                        sa.func.sum(candidates.c.amount).label("total"),
                        sa.func.max(candidates.c.period_end).label("period_end"),
                        sa.func.jsonb_agg(sa.distinct(candidates.c.transaction_id)).label("transaction_ids"),
                        sa.func.gen_random_uuid().label("collection_id"))
              .group_by(candidates.c.barber_id, candidates.c.currency)
              .having(sa.and_(sa.func.sum(candidates.c.amount) >= minimum, sa.func.sum(candidates.c.amount) > 0))
              .cte("groups").prefix_with("MATERIALIZED"))  # one uuid per group, for the insert and the update
    created = (pg_insert(pc).from_select(
        ["id", "barber_id", "amount", "currency", "collection_type", "status", "external_transaction_ids",
         "commission_rate", "due_date", "attempts", "period_end", "created_at", "updated_at", "version"],
        sa.select(groups.c.collection_id, groups.c.barber_id, groups.c.total, groups.c.currency,
                  sa.literal("commission"), sa.literal("pending"), groups.c.transaction_ids,
                  sa.select(bs.c.commission_rate).where(bs.c.barber_id == groups.c.barber_id).scalar_subquery(),
                  sa.literal(due), sa.literal(0), groups.c.period_end, sa.literal(now), sa.literal(now),
                  sa.literal(1)),
    ).returning(*pc.c).cte("created"))
    billed = (sa.update(ac).where(
        ac.c.id == candidates.c.id, candidates.c.barber_id == groups.c.barber_id,
        candidates.c.currency == groups.c.currency,
    ).values(collection_id=groups.c.collection_id).returning(ac.c.id).cte("billed"))
    rows = [dict(r) for r in (await session.execute(
        sa.select(created, sa.select(sa.func.count()).select_from(billed).scalar_subquery().label("billed_count"))
    )).mappings()]
    billed_count = rows[0].pop("billed_count") if rows else 0
    for row in rows[1:]:
        del row["billed_count"]
    return [CollectionRow(**row) for row in rows], billed_count


# ---- collections and attempts ---------------------------------------------------------------------------

async def load_collection(session: AsyncSession, collection_id: uuid.UUID, *,
                          lock: bool = False) -> CollectionRow | None:
    query = sa.select(pc).where(pc.c.id == collection_id)
    return _one(await session.execute(query.with_for_update() if lock else query), CollectionRow)


async def update_collection(session: AsyncSession, collection_id: uuid.UUID, values: Values) -> CollectionRow:
    return _only(await session.execute(sa.update(pc).where(pc.c.id == collection_id)
                                       .values(**values, version=pc.c.version + 1).returning(pc)), CollectionRow)


async def attempt_of(session: AsyncSession, collection_id: uuid.UUID, number: int) -> AttemptRow | None:
    return _one(await session.execute(sa.select(at).where(at.c.collection_id == collection_id,
                                                          at.c.attempt == number)), AttemptRow)


async def insert_attempt(session: AsyncSession, values: Values) -> AttemptRow | None:
    return _one(await session.execute(pg_insert(at).values(**values).on_conflict_do_nothing(
        constraint="attempts_once").returning(at)), AttemptRow)


async def touch_pending_attempt(session: AsyncSession, attempt_id: uuid.UUID, now: datetime) -> AttemptRow | None:
    return _one(await session.execute(sa.update(at).where(at.c.id == attempt_id, at.c.status == "pending")
                                      .values(updated_at=now).returning(at)), AttemptRow)


async def settle_attempt(session: AsyncSession, attempt_id: uuid.UUID, values: Values, *,
                         untouched_since: datetime | None = None) -> AttemptRow | None:
    where = [at.c.id == attempt_id, at.c.status == "pending"]
    if untouched_since is not None:
        where.append(at.c.updated_at < untouched_since)
    return _one(await session.execute(sa.update(at).where(*where).values(**values).returning(at)), AttemptRow)


async def note_attempt(session: AsyncSession, attempt_id: uuid.UUID, values: Values) -> AttemptRow | None:
    """What is known of a pending attempt before its outcome (how it charges, Stripe's id for it)."""
    return _one(await session.execute(sa.update(at).where(at.c.id == attempt_id, at.c.status == "pending")
                                      .values(**values).returning(at)), AttemptRow)


async def pending_attempts(session: AsyncSession, untouched_since: datetime, now: datetime,
                           limit: int) -> list[AttemptRow]:
    """Attempts nobody is driving, not backed off, oldest first."""
    return _all(await session.execute(attempts.pending(at, untouched_since, now, limit)), AttemptRow)


async def back_off_attempt(session: AsyncSession, row: AttemptRow, now: datetime) -> None:
    await attempts.back_off(session, at, row.id, row.check_failures, now)


async def check_attempt_later(session: AsyncSession, attempt_id: uuid.UUID, when: datetime) -> None:
    await attempts.check_later(session, at, attempt_id, when)


async def retries_due(session: AsyncSession, now: datetime, limit: int) -> list[CollectionRow]:
    return _all(await session.execute(sa.select(pc).where(pc.c.status == "failed", pc.c.next_attempt_at <= now)
                                      .order_by(pc.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True)),
                CollectionRow)


async def list_collections(session: AsyncSession, *, barber_id: int | None, status: str | None,
                           currency: str | None, since: datetime | None, until: datetime | None,
                           cursor: str | None, limit: int) -> list[CollectionRow]:
    where = [x for x in (
        pc.c.barber_id == barber_id if barber_id is not None else None,
        pc.c.status == status if status is not None else None,
        pc.c.currency == currency if currency is not None else None,
        pc.c.created_at >= since if since is not None else None,
        pc.c.created_at < until if until is not None else None,
        after_cursor(pc.c.created_at, pc.c.id, cursor, uuid.UUID),
    ) if x is not None]
    return _all(await session.execute(sa.select(pc).where(*where).order_by(pc.c.created_at.desc(), pc.c.id.desc())
                                      .limit(limit + 1)), CollectionRow)


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    unbilled: Decimal
    by_status: dict[str, Decimal]
    accrued: Decimal


class StatusTotal(msgspec.Struct, frozen=True, kw_only=True):
    status: CollectionStatus
    currency: str
    n: int
    amount: Decimal


async def balance(session: AsyncSession, barber_id: int, currency: str) -> Balance:
    """Unbilled accruals, and collections by status, for one barber in one currency."""
    unbilled = await session.scalar(sa.select(sa.func.coalesce(sa.func.sum(ac.c.amount), 0)).where(
        ac.c.barber_id == barber_id, ac.c.currency == currency, ac.c.collection_id.is_(None)))
    by_status = dict((await session.execute(sa.select(pc.c.status, sa.func.sum(pc.c.amount)).where(
        pc.c.barber_id == barber_id, pc.c.currency == currency).group_by(pc.c.status))).all())
    accrued = await session.scalar(sa.select(sa.func.coalesce(sa.func.sum(ac.c.amount), 0)).where(
        ac.c.barber_id == barber_id, ac.c.currency == currency))
    return Balance(unbilled=Decimal(unbilled), by_status={k: Decimal(v) for k, v in by_status.items()},
                   accrued=Decimal(accrued))


async def totals_by_status(session: AsyncSession) -> list[StatusTotal]:
    return _all(await session.execute(sa.select(pc.c.status, pc.c.currency, sa.func.count().label("n"),
                                                sa.func.sum(pc.c.amount).label("amount"))
                                      .group_by(pc.c.status, pc.c.currency)), StatusTotal)
