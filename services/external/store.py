"""The external service's named queries: every statement its use cases run, over a unit of work's
session. Rows come back as typed, frozen structs, one per table (`ConnectionRow`, `TransactionRow`,
`RefundRow`, `UnattributedRow`); values written go in as dicts of columns. Writes that settle
something are conditional, so whoever settles first wins."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.external import tables as t
from shared import attempts
from shared.db import HotPath
from shared.db import all_rows as _all
from shared.db import one_row as _one
from shared.db import only_row as _only
from shared.outbox import OUTBOX_COLUMNS
from shared.pagination import after_cursor
from shared.processors.base import ProcessorName

Values = dict[str, Any]  # columns to write
c = t.connections
tx = t.transactions
rf = t.refunds
we = t.webhook_events
br = t.barber_rates
ua = t.unattributed_payments
rr = t.reconciliation_runs

ConnectionStatus = Literal["pending", "active", "error", "disconnected"]
TransactionStatus = Literal["pending", "completed", "failed", "canceled", "refunded", "partially_refunded"]
RefundStatus = Literal["pending", "succeeded", "failed"]


class ConnectionRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of external.payment_processor_connections."""

    id: int
    barber_id: int
    processor_type: ProcessorName
    account_id: str
    account_name: str | None
    status: ConnectionStatus
    status_reason: str | None
    connection_data: dict[str, Any]
    credentials: str  # ciphertext
    webhook_url: str | None
    webhook_secret: str | None  # ciphertext
    webhook_endpoint_id: str | None
    supports_payments: bool
    supports_refunds: bool
    supports_recurring: bool
    default_currency: str
    processing_fees: dict[str, Any] | None
    last_sync_at: datetime | None
    last_transaction_at: datetime | None
    total_transactions: int
    total_volume: Decimal
    published_status: str | None
    processor_account: str | None
    connected_at: datetime
    disconnected_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int


class TransactionRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of external.external_transactions."""

    id: uuid.UUID
    connection_id: int
    processor_type: ProcessorName
    external_transaction_id: str | None
    amount: Decimal
    refunded_amount: Decimal
    currency: str
    status: TransactionStatus
    barber_id: int
    appointment_id: int | None
    client_id: int | None
    route_id: uuid.UUID | None
    external_customer_id: str | None
    external_metadata: dict[str, Any] | None
    processor_fees: Decimal
    commission_rate: Decimal
    commission_amount: Decimal
    payment_method: str | None
    processor_idempotency_key: str | None
    origin: str
    failure_code: str | None
    failure_reason: str | None
    reconciled_at: datetime | None
    reconciliation_status: str | None
    processed_at: datetime | None
    flagged: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    next_check_at: datetime | None
    check_failures: int


class RefundRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of external.external_refunds."""

    id: uuid.UUID
    transaction_id: uuid.UUID | None
    processor_type: ProcessorName
    connection_id: int | None
    processor_payment_id: str | None
    processor_refund_id: str | None
    amount: Decimal
    currency: str
    status: RefundStatus
    processor_idempotency_key: str | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    next_check_at: datetime | None
    check_failures: int


class UnattributedRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of external.unattributed_payments."""

    id: int
    processor_type: ProcessorName
    processor_account: str
    external_transaction_id: str
    amount: Decimal
    currency: str
    status: TransactionStatus
    connection_ids: list[int]
    heard_from: str
    first_heard_at: datetime
    last_heard_at: datetime
    attributed_to: int | None
    transaction_id: uuid.UUID | None
    attributed_at: datetime | None


class IntegrityCount(msgspec.Struct, frozen=True, kw_only=True):
    """Per processor: flagged double charges not refunded yet, and unattributed payments waiting."""

    processor: str
    double_charges: int
    unattributed: int


# ---- connections -----------------------------------------------------------------------------------

async def insert_connection(session: AsyncSession, values: Values) -> ConnectionRow | None:
    """The new connection, or None when the barber already has one for this processor account."""
    return _one(await session.execute(pg_insert(c).values(**values).on_conflict_do_nothing(
        constraint="connections_one_per_account").returning(c)), ConnectionRow)


async def load_connection(session: AsyncSession, connection_id: int, *, lock: bool = False) -> ConnectionRow | None:
    query = sa.select(c).where(c.c.id == connection_id)
    return _one(await session.execute(query.with_for_update() if lock else query), ConnectionRow)


async def update_connection(session: AsyncSession, connection_id: int, values: Values) -> ConnectionRow:
    return _only(await session.execute(sa.update(c).where(c.c.id == connection_id)
                                       .values(**values, version=c.c.version + 1).returning(c)), ConnectionRow)


async def list_connections(session: AsyncSession, *, barber_id: int | None, cursor: str | None,
                           limit: int) -> list[ConnectionRow]:
    where = [x for x in (c.c.barber_id == barber_id if barber_id is not None else None,
                         after_cursor(c.c.created_at, c.c.id, cursor, int)) if x is not None]
    return _all(await session.execute(sa.select(c).where(*where).order_by(c.c.created_at.desc(), c.c.id.desc())
                                      .limit(limit + 1)), ConnectionRow)


_LAST_WEBHOOKS = sa.text(f"""
SELECT ids.id, (SELECT max(w.received_at) FROM {t.SCHEMA}.webhook_events w WHERE w.connection_id = ids.id)
FROM unnest(CAST(:ids AS integer[])) AS ids(id)
""")


async def last_webhooks(session: AsyncSession, connection_ids: list[int]) -> dict[int, datetime]:
    """The newest notice each connection received (one index probe each)."""
    if not connection_ids:
        return {}
    rows = await session.execute(_LAST_WEBHOOKS, {"ids": connection_ids})
    return {connection_id: at for connection_id, at in rows if at is not None}


async def account_connections(session: AsyncSession, processor: str,
                              processor_account: str) -> list[ConnectionRow]:
    """Every connection (not disconnected) to one processor account, oldest first."""
    return _all(await session.execute(sa.select(c).where(
        c.c.processor_type == processor, c.c.processor_account == processor_account,
        c.c.status != "disconnected").order_by(c.c.id)), ConnectionRow)


async def active_connections(session: AsyncSession) -> list[ConnectionRow]:
    return _all(await session.execute(sa.select(c).where(c.c.status == "active").order_by(c.c.id)), ConnectionRow)


async def connections_to_republish(session: AsyncSession) -> list[ConnectionRow]:
    return _all(await session.execute(sa.select(c).where(c.c.status != "disconnected").order_by(c.c.id)),
                ConnectionRow)


async def refresh_connection_totals(session: AsyncSession) -> int:
    """The seed's per-connection counters, recounted from the transactions in one statement (kept
    off the payment path: a counter on the connection row would serialise all its payments)."""
    paid = (sa.select(tx.c.connection_id, sa.func.count().label("n"), sa.func.sum(tx.c.amount).label("volume"),
                      sa.func.max(sa.func.coalesce(tx.c.processed_at, tx.c.created_at)).label("last"))
            .where(tx.c.status.in_(("completed", "partially_refunded", "refunded")))
            .group_by(tx.c.connection_id).subquery())
    result = await session.execute(sa.update(c).where(
        c.c.id == paid.c.connection_id,
        sa.tuple_(c.c.total_transactions, c.c.total_volume).is_distinct_from(sa.tuple_(paid.c.n, paid.c.volume)),
    ).values(total_transactions=paid.c.n, total_volume=paid.c.volume, last_transaction_at=paid.c.last))
    return result.rowcount or 0


async def integrity_counts(session: AsyncSession) -> list[IntegrityCount]:
    """Per processor: flagged double charges not refunded yet, and unattributed payments waiting."""
    flagged = (sa.select(tx.c.processor_type.label("processor"), sa.func.count().label("double_charges"),
                         sa.literal(0).label("unattributed"))
               .where(tx.c.flagged == "double_charge", tx.c.status != "refunded").group_by(tx.c.processor_type))
    waiting = (sa.select(ua.c.processor_type.label("processor"), sa.literal(0).label("double_charges"),
                         sa.func.count().label("unattributed"))
               .where(ua.c.attributed_to.is_(None)).group_by(ua.c.processor_type))
    both = sa.union_all(flagged, waiting).subquery()
    result = await session.execute(sa.select(
        both.c.processor, sa.func.sum(both.c.double_charges).label("double_charges"),
        sa.func.sum(both.c.unattributed).label("unattributed")).group_by(both.c.processor))
    # sum() of counts is numeric in Postgres: whole numbers, as ints.
    return [IntegrityCount(processor=r.processor, double_charges=int(r.double_charges),
                           unattributed=int(r.unattributed)) for r in result]


# ---- transactions ------------------------------------------------------------------------------------

def payment_lock_name(processor: str, processor_payment_id: str) -> str:
    """What every report about one processor payment (and its refunds) locks, hashed to an
    advisory lock key (`lock_processor_payment`, `LOCK_AND_RATE`)."""
    return f"{processor}:{processor_payment_id}"


async def lock_processor_payment(session: AsyncSession, processor: str, processor_payment_id: str) -> None:
    """Serialise every report about one processor payment (and its refunds) in this transaction."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(
        sa.func.hashtextextended(sa.literal(payment_lock_name(processor, processor_payment_id)), 0))))


async def load_transaction(session: AsyncSession, transaction_id: uuid.UUID, *,
                           lock: bool = False) -> TransactionRow | None:
    query = sa.select(tx).where(tx.c.id == transaction_id)
    return _one(await session.execute(query.with_for_update() if lock else query), TransactionRow)


async def transaction_by_processor_id(session: AsyncSession, processor: str, processor_payment_id: str, *,
                                      lock: bool = False) -> TransactionRow | None:
    return _one(await session.execute(_BY_PROCESSOR_ID_LOCKED if lock else _BY_PROCESSOR_ID,
                                      {"processor": processor, "processor_payment_id": processor_payment_id}),
                TransactionRow)


async def live_attempt(session: AsyncSession, route_id: uuid.UUID) -> TransactionRow | None:
    return _one(await session.execute(sa.select(tx).where(tx.c.route_id == route_id, tx.c.flagged.is_(None),
                                                          tx.c.status.not_in(("failed", "canceled")))),
                TransactionRow)


async def other_live_attempt(session: AsyncSession, route_id: uuid.UUID,
                             transaction_id: uuid.UUID) -> TransactionRow | None:
    """The route's live attempt other than this one (the one the unique index admits)."""
    return _one(await session.execute(sa.select(tx).where(
        tx.c.route_id == route_id, tx.c.id != transaction_id, tx.c.status.not_in(("failed", "canceled")),
        tx.c.flagged.is_(None))), TransactionRow)


async def insert_live_attempt(session: AsyncSession, values: Values) -> TransactionRow | None:
    """Our new attempt for a route, or None when another live one exists (a concurrent request)."""
    return _one(await session.execute(pg_insert(tx).values(**values).on_conflict_do_nothing(
        index_elements=[tx.c.route_id],
        # Literal SQL, not bound values: Postgres matches ON CONFLICT to the partial index by its
        # predicate, which a generic plan with parameters cannot prove (it fails after 5 runs).
        index_where=sa.text("route_id IS NOT NULL AND status NOT IN ('failed', 'canceled') AND flagged IS NULL")
    ).returning(tx)), TransactionRow)


async def settle_unsent(session: AsyncSession, transaction_id: uuid.UUID, code: str, reason: str,
                        now: datetime) -> TransactionRow | None:
    """A pending attempt the processor never took (refused connection, not found later): failed."""
    return _one(await session.execute(sa.update(tx).where(tx.c.id == transaction_id, tx.c.status == "pending").values(
        status="failed", failure_code=code, failure_reason=reason, processed_at=now, updated_at=now,
        version=tx.c.version + 1).returning(tx)), TransactionRow)


async def touch_pending(session: AsyncSession, transaction_id: uuid.UUID, now: datetime) -> TransactionRow | None:
    return _one(await session.execute(sa.update(tx).where(tx.c.id == transaction_id, tx.c.status == "pending")
                                      .values(updated_at=now).returning(tx)), TransactionRow)


async def update_transaction(session: AsyncSession, transaction_id: uuid.UUID, values: Values, *,
                             bump: bool = True) -> TransactionRow:
    extra = {"version": tx.c.version + 1} if bump else {}
    return _only(await session.execute(sa.update(tx).where(tx.c.id == transaction_id)
                                       .values(**values, **extra).returning(tx)), TransactionRow)


async def pending_attempts(session: AsyncSession, untouched_since: datetime, now: datetime,
                           limit: int) -> list[TransactionRow]:
    """Our attempts nobody came back for, not backed off, oldest first."""
    return _all(await session.execute(attempts.pending(tx, untouched_since, now, limit, tx.c.origin == "api")),
                TransactionRow)


async def back_off_attempt(session: AsyncSession, row: TransactionRow, now: datetime) -> None:
    await attempts.back_off(session, tx, row.id, row.check_failures, now)


async def check_attempt_later(session: AsyncSession, transaction_id: uuid.UUID, when: datetime) -> None:
    await attempts.check_later(session, tx, transaction_id, when)


async def transactions_in_window(session: AsyncSession, connection_id: int, since: datetime,
                                 until: datetime) -> list[TransactionRow]:
    return _all(await session.execute(sa.select(tx).where(
        tx.c.connection_id == connection_id, tx.c.external_transaction_id.is_not(None),
        sa.func.coalesce(tx.c.processed_at, tx.c.created_at) >= since,
        sa.func.coalesce(tx.c.processed_at, tx.c.created_at) < until)), TransactionRow)


async def mark_reconciled(session: AsyncSession, transaction_id: uuid.UUID, status: str, now: datetime) -> None:
    await session.execute(sa.update(tx).where(tx.c.id == transaction_id)
                          .values(reconciliation_status=status, reconciled_at=now))


async def mark_many_reconciled(session: AsyncSession, statuses: dict[uuid.UUID, str], now: datetime) -> None:
    """`mark_reconciled` for many rows: one statement per verdict."""
    by_status: dict[str, list[uuid.UUID]] = {}
    for transaction_id, status in statuses.items():
        by_status.setdefault(status, []).append(transaction_id)
    for status, ids in by_status.items():
        await session.execute(sa.update(tx).where(tx.c.id.in_(ids)).values(reconciliation_status=status,
                                                                           reconciled_at=now))


async def list_transactions(session: AsyncSession, *, barber_id: int | None, status: str | None,
                            processor: str | None, external_transaction_id: str | None, since: datetime | None,
                            until: datetime | None, cursor: str | None, limit: int) -> list[TransactionRow]:
    where = [x for x in (
        tx.c.barber_id == barber_id if barber_id is not None else None,
        tx.c.status == status if status is not None else None,
        tx.c.processor_type == processor if processor is not None else None,
        tx.c.external_transaction_id == external_transaction_id if external_transaction_id is not None else None,
        tx.c.created_at >= since if since is not None else None,
        tx.c.created_at < until if until is not None else None,
        after_cursor(tx.c.created_at, tx.c.id, cursor, uuid.UUID),
    ) if x is not None]
    return _all(await session.execute(sa.select(tx).where(*where).order_by(tx.c.created_at.desc(), tx.c.id.desc())
                                      .limit(limit + 1)), TransactionRow)


# ---- refunds -------------------------------------------------------------------------------------------

async def load_refund(session: AsyncSession, refund_id: uuid.UUID) -> RefundRow | None:
    return _one(await session.execute(sa.select(rf).where(rf.c.id == refund_id)), RefundRow)


async def refund_by_processor_id(session: AsyncSession, processor: str,
                                 processor_refund_id: str) -> RefundRow | None:
    return _one(await session.execute(sa.select(rf).where(rf.c.processor_type == processor,
                                                          rf.c.processor_refund_id == processor_refund_id)),
                RefundRow)


async def insert_refund(session: AsyncSession, values: Values) -> RefundRow:
    return _only(await session.execute(sa.insert(rf).values(**values).returning(rf)), RefundRow)


async def update_refund(session: AsyncSession, refund_id: uuid.UUID, values: Values) -> RefundRow:
    return _only(await session.execute(sa.update(rf).where(rf.c.id == refund_id).values(**values).returning(rf)),
                 RefundRow)


async def refund_totals(session: AsyncSession, transaction_id: uuid.UUID) -> tuple[Decimal, Decimal]:
    """(succeeded, pending) refund totals of a transaction."""
    row = (await session.execute(sa.select(
        sa.func.coalesce(sa.func.sum(rf.c.amount).filter(rf.c.status == "succeeded"), 0),
        sa.func.coalesce(sa.func.sum(rf.c.amount).filter(rf.c.status == "pending"), 0),
    ).where(rf.c.transaction_id == transaction_id))).one()
    return Decimal(row[0]), Decimal(row[1])


async def adopt_orphan_refunds(session: AsyncSession, processor: str, processor_payment_id: str,
                               transaction_id: uuid.UUID, processor_account: str | None) -> int:
    """Refunds that arrived before their payment now belong to it: only those heard through a
    connection to the payment's own processor account (never by processor and payment id alone)."""
    if processor_account is None:
        return 0
    heard_by = sa.select(c.c.id).where(c.c.processor_type == processor, c.c.processor_account == processor_account)
    result = await session.execute(sa.update(rf).where(
        rf.c.transaction_id.is_(None), rf.c.processor_type == processor,
        rf.c.processor_payment_id == processor_payment_id, rf.c.connection_id.in_(heard_by.scalar_subquery()),
    ).values(transaction_id=transaction_id))
    return result.rowcount or 0


async def pending_refunds(session: AsyncSession, untouched_since: datetime, now: datetime,
                          limit: int) -> list[RefundRow]:
    """Our refunds nobody came back for, not backed off, oldest first."""
    return _all(await session.execute(attempts.pending(
        rf, untouched_since, now, limit, rf.c.processor_idempotency_key.is_not(None), rf.c.transaction_id.is_not(None))
    ), RefundRow)


async def back_off_refund(session: AsyncSession, row: RefundRow, now: datetime) -> None:
    await attempts.back_off(session, rf, row.id, row.check_failures, now)


async def check_refund_later(session: AsyncSession, refund_id: uuid.UUID, when: datetime) -> None:
    await attempts.check_later(session, rf, refund_id, when)


async def touch_pending_refund(session: AsyncSession, refund_id: uuid.UUID, now: datetime) -> RefundRow | None:
    return _one(await session.execute(sa.update(rf).where(rf.c.id == refund_id, rf.c.status == "pending")
                                      .values(updated_at=now).returning(rf)), RefundRow)


# ---- webhooks and rates ------------------------------------------------------------------------------

# Built once: webhooks come in bursts, and building a statement per call (and its cache key)
# measured as a large part of a webhook's cost.
_CLAIM_EVENT = pg_insert(we).on_conflict_do_nothing(constraint="webhook_events_once_per_connection").returning(
    we.c.id)
_BY_PROCESSOR_ID = sa.select(tx).where(tx.c.processor_type == sa.bindparam("processor"),
                                       tx.c.external_transaction_id == sa.bindparam("processor_payment_id"))
_BY_PROCESSOR_ID_LOCKED = _BY_PROCESSOR_ID.with_for_update()
_LEARN = pg_insert(tx).on_conflict_do_nothing(
    index_elements=[tx.c.processor_type, tx.c.external_transaction_id],
    index_where=tx.c.external_transaction_id.is_not(None)).returning(tx)


async def claim_webhook_event(session: AsyncSession, values: Values) -> int | None:
    """Record a processor event id for this connection; its row id, or None when it was taken
    before (a redelivery)."""
    return (await session.execute(_CLAIM_EVENT, values)).scalar()


async def set_webhook_outcome(session: AsyncSession, row_id: int, outcome: str) -> None:
    await session.execute(sa.update(we).where(we.c.id == row_id).values(outcome=outcome))


# ---- payments nobody can be sure whose they are ---------------------------------------------------------

async def hold_unattributed(session: AsyncSession, values: Values, now: datetime) -> UnattributedRow:
    """Keep (or refresh) a payment of a shared account that nobody started, until an operator says."""
    stmt = pg_insert(ua).values(**values, first_heard_at=now, last_heard_at=now)
    return _only(await session.execute(stmt.on_conflict_do_update(
        constraint="unattributed_once",
        set_={"amount": stmt.excluded.amount, "status": stmt.excluded.status, "last_heard_at": now,
              "connection_ids": stmt.excluded.connection_ids}).returning(ua)), UnattributedRow)


async def load_unattributed(session: AsyncSession, unattributed_id: int, *,
                            lock: bool = False) -> UnattributedRow | None:
    query = sa.select(ua).where(ua.c.id == unattributed_id)
    return _one(await session.execute(query.with_for_update() if lock else query), UnattributedRow)


async def resolve_unattributed(session: AsyncSession, unattributed_id: int, connection_id: int,
                               transaction_id: uuid.UUID, now: datetime) -> None:
    await session.execute(sa.update(ua).where(ua.c.id == unattributed_id).values(
        attributed_to=connection_id, transaction_id=transaction_id, attributed_at=now))


async def list_unattributed(session: AsyncSession, *, waiting_only: bool, cursor: str | None,
                            limit: int) -> list[UnattributedRow]:
    where = [x for x in (ua.c.attributed_to.is_(None) if waiting_only else None,
                         after_cursor(ua.c.first_heard_at, ua.c.id, cursor, int)) if x is not None]
    return _all(await session.execute(sa.select(ua).where(*where)
                                      .order_by(ua.c.first_heard_at.desc(), ua.c.id.desc()).limit(limit + 1)),
                UnattributedRow)


async def insert_reconciliation_run(session: AsyncSession, values: Values) -> int:
    return (await session.execute(sa.insert(rr).values(**values).returning(rr.c.id))).scalar_one()


async def list_reconciliation_runs(session: AsyncSession, *, connection_id: int | None, cursor: str | None,
                                   limit: int) -> list[dict]:
    """Newest first; a run for all connections counts for each one."""
    where = [x for x in (
        sa.or_(rr.c.connection_id == connection_id, rr.c.connection_id.is_(None)) if connection_id else None,
        after_cursor(rr.c.as_of, rr.c.id, cursor, int)) if x is not None]
    rows = await session.execute(sa.select(rr).where(*where).order_by(rr.c.as_of.desc(), rr.c.id.desc())
                                 .limit(limit + 1))
    return [{str(k): v for k, v in r.items()} for r in rows.mappings()]


async def list_webhook_events(session: AsyncSession, *, connection_id: int | None, outcome: str | None,
                              cursor: str | None, limit: int) -> list[dict]:
    """Notices verified and claimed (bad signatures and unknown connections are refused before any
    row is written; they are counted in `webhooks_received_total`), newest first."""
    where = [x for x in (
        we.c.connection_id == connection_id if connection_id else None,
        we.c.outcome == outcome if outcome else None,
        after_cursor(we.c.received_at, we.c.id, cursor, int)) if x is not None]
    rows = await session.execute(
        sa.select(we, c.c.barber_id).join(c, c.c.id == we.c.connection_id, isouter=True).where(*where)
        .order_by(we.c.received_at.desc(), we.c.id.desc()).limit(limit + 1))
    return [{str(k): v for k, v in r.items()} for r in rows.mappings()]


# ---- a webhook's fresh payment in one short transaction (services/external/webhooks.py) ------------------

LEARNED_COLUMNS = (
    "id", "connection_id", "processor_type", "external_transaction_id", "amount", "refunded_amount", "currency",
    "status", "barber_id", "external_metadata", "commission_rate", "commission_amount", "processor_fees", "origin",
    "failure_code", "failure_reason", "processed_at", "created_at", "updated_at", "version",
)
# What the table gives a learned row that `LEARNED_COLUMNS` leaves out (its defaults).
LEARNED_DEFAULTS: Values = dict(
    appointment_id=None, client_id=None, route_id=None, external_customer_id=None, payment_method=None,
    processor_idempotency_key=None, reconciled_at=None, reconciliation_status=None, flagged=None,
    next_check_at=None, check_failures=0)
_CLAIM_COLUMNS = ("processor_type", "event_id", "connection_id", "event_type", "understood", "received_at")
# The lock every report of one processor payment takes (`lock_processor_payment`), and the barber's rate.
LOCK_AND_RATE = f"""
SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0)) AS locked,
       (SELECT commission_rate FROM {t.SCHEMA}.barber_rates WHERE barber_id = $2) AS rate
"""
# Parameter positions of LEARN_FRESH: the row's columns, then our reference and the processor
# account, then the claim's columns, then the outbox row's.
_ARG = {name: f"${i}" for i, name in enumerate(
    (*LEARNED_COLUMNS, "reference", "processor_account", *(f"claim_{c}" for c in _CLAIM_COLUMNS),
     *(f"event_{c}" for c in OUTBOX_COLUMNS)), start=1)}
# Run after LOCK_AND_RATE in the same transaction, so it sees every report that committed before the
# lock was granted. It writes the payment, the claim and the event only when the ledger would have
# learned the payment with nothing else to do: no row has it (by the processor's id or our reference),
# no other barber connected the account (attribution), no refund of it waits to be adopted.
# Otherwise it writes nothing and the ledger decides.
LEARN_FRESH = f"""
WITH known AS (
    SELECT 1 FROM {t.SCHEMA}.external_transactions
    WHERE (processor_type = {_ARG["processor_type"]} AND external_transaction_id = {_ARG["external_transaction_id"]})
       OR id = {_ARG["reference"]}::uuid
), shared AS (
    SELECT 1 FROM {t.SCHEMA}.payment_processor_connections
    WHERE {_ARG["processor_account"]}::text IS NOT NULL AND processor_type = {_ARG["processor_type"]}
      AND processor_account = {_ARG["processor_account"]}::text AND status <> 'disconnected'
      AND barber_id <> {_ARG["barber_id"]}
), waiting AS (
    SELECT 1 FROM {t.SCHEMA}.external_refunds
    WHERE transaction_id IS NULL AND processor_type = {_ARG["processor_type"]}
      AND processor_payment_id = {_ARG["external_transaction_id"]}
), learned AS (
    INSERT INTO {t.SCHEMA}.external_transactions ({", ".join(LEARNED_COLUMNS)})
    SELECT {", ".join(_ARG[c] for c in LEARNED_COLUMNS)}
    WHERE NOT EXISTS (SELECT 1 FROM known) AND NOT EXISTS (SELECT 1 FROM shared)
      AND NOT EXISTS (SELECT 1 FROM waiting)
    ON CONFLICT (processor_type, external_transaction_id) WHERE external_transaction_id IS NOT NULL DO NOTHING
    RETURNING id
), claimed AS (
    INSERT INTO {t.SCHEMA}.webhook_events ({", ".join(_CLAIM_COLUMNS)}, outcome)
    SELECT {", ".join(_ARG[f"claim_{c}"] for c in _CLAIM_COLUMNS)}, 'applied' FROM learned
    ON CONFLICT ON CONSTRAINT webhook_events_once_per_connection DO NOTHING
    RETURNING id
), event AS (
    INSERT INTO {t.SCHEMA}.outbox ({", ".join(OUTBOX_COLUMNS)})
    SELECT {", ".join(_ARG[f"event_{c}"] for c in OUTBOX_COLUMNS)} FROM learned
    WHERE {_ARG["event_event_id"]}::uuid IS NOT NULL
)
SELECT (SELECT count(*) FROM learned) AS learned, (SELECT count(*) FROM claimed) AS claimed
"""
EVENT_SEEN = f"SELECT 1 FROM {t.SCHEMA}.webhook_events WHERE connection_id = $1 AND event_id = $2"


async def event_seen(hot: HotPath, connection_id: int, event_id: str) -> bool:
    """Whether this connection applied the event already: one autocommit statement, asked before
    the processor is."""
    return await hot.fetchrow_sql(EVENT_SEEN, connection_id, event_id) is not None


async def lock_and_rate(conn: asyncpg.Connection, processor: str, processor_payment_id: str,
                        barber_id: int) -> Decimal | None:
    """Take the processor payment's lock for this transaction; the barber's commission rate."""
    row = await conn.fetchrow(LOCK_AND_RATE, payment_lock_name(processor, processor_payment_id), barber_id)
    return row["rate"] if row is not None else None


async def learn_fresh(conn: asyncpg.Connection, values: Values, reference: uuid.UUID | None,
                      processor_account: str | None, claim: Values,
                      event: tuple[Any, str, str, bytes] | None) -> bool:
    """`LEARN_FRESH`: True when it wrote the payment, the claim and the event (all three)."""
    row = await conn.fetchrow(
        LEARN_FRESH, *(values[k] for k in LEARNED_COLUMNS), reference, processor_account,
        *(claim[k] for k in _CLAIM_COLUMNS), *(event or (None, None, None, None)))
    return row is not None and row["learned"] == 1 and row["claimed"] == 1


async def insert_learned_transaction(session: AsyncSession, values: Values) -> TransactionRow | None:
    """A payment we learn of; None when a concurrent report inserted it first."""
    return _one(await session.execute(_LEARN, values), TransactionRow)


async def barber_rate(session: AsyncSession, barber_id: int) -> Decimal | None:
    return await session.scalar(sa.select(br.c.commission_rate).where(br.c.barber_id == barber_id))


async def upsert_barber_rate(session: AsyncSession, barber_id: int, rate: Decimal, version: int,
                             now: datetime) -> None:
    stmt = pg_insert(br).values(barber_id=barber_id, commission_rate=rate, config_version=version, updated_at=now)
    await session.execute(stmt.on_conflict_do_update(
        index_elements=[br.c.barber_id], set_={"commission_rate": rate, "config_version": version, "updated_at": now},
        where=br.c.config_version <= stmt.excluded.config_version))
