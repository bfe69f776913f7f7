"""The router's named queries: every statement the use cases run, over a unit of work's session.

Use cases say *what* (`lock_payment`, `settle_attempt`); this module says *how* in SQL. Rows come
back as typed, frozen structs, one per table (`ConfigRow`, `ConnectionRow`, `DecisionRow`,
`PaymentRow`, `RefundRow`); values written go in as dicts of columns. Writes that settle something
are conditional (`WHERE status = 'pending'`), so whoever settles first wins and a late writer learns
it from the empty result.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.router import tables as t
from services.router.domain import Frequency, PaymentMode, PaymentType, Processor
from shared import attempts
from shared.db import GroupCommit, HotPath
from shared.db import all_rows as _all
from shared.db import one_row as _one
from shared.db import only_row as _only
from shared.idempotency import Claim, ClaimTaken
from shared.lifecycle import PaymentStatus, RefundStatus
from shared.pagination import after_cursor

Values = dict[str, Any]  # columns to write
c = t.hybrid_payment_configs
pc = t.processor_connections
rd = t.routing_decisions
p = t.platform_payments
r = t.platform_refunds

# Built once: the `/route` hot path only binds parameters to it.
INSERT_DECISION = pg_insert(rd).on_conflict_do_nothing().returning(rd.c.route_id)

_DECISION_COLUMNS = ("route_id", "barber_id", "appointment_id", "client_id", "amount", "currency", "payment_type",
                     "processor", "connection_id", "commission_rate", "commission_amount",
                     "estimated_processor_fee", "barber_net", "reason", "fallback_used", "decided_at")
_N_DECISION = len(_DECISION_COLUMNS)  # $16 is decided_at

# Route-and-pay's first statement (atomic by itself): claim the Idempotency-Key (a deferred claim,
# `shared.idempotency`), record the decision, read the barber's payout account as it is now, and
# open the pending attempt with its processor key. With the key taken, nothing is written; `decided`
# is false when the route id was recorded before (a retry: the caller takes the general path); no
# payout account: the decision is recorded, no attempt (the caller answers 422, as the general path
# does). Written for the requests under way at once (`OpenRoutesAndAttempts`): one array per column
# (the decision's, then the attempt's id, payment method and processor key, then the claim's scope,
# key and fingerprint, NULL without one), one row back per input row. A batch never holds two rows
# of one Idempotency-Key (the batcher defers the second), so each key's claim names its row.
_OPEN_TYPES = ("uuid", "integer", "bigint", "bigint", "numeric", "text", "text", "text", "integer", "numeric",
               "numeric", "numeric", "numeric", "text", "boolean", "timestamptz",
               "uuid", "text", "text", "text", "text", "text")
_OPEN_INPUT = (*_DECISION_COLUMNS, "payment_id", "payment_method", "processor_key", "claim_scope", "claim_key",
               "claim_fingerprint")
OPEN_ROUTES_AND_ATTEMPTS = f"""
WITH input AS (
    SELECT * FROM unnest({", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_OPEN_TYPES, 1))})
        AS i({", ".join(_OPEN_INPUT)})
), claim AS (
    INSERT INTO {t.SCHEMA}.idempotency_keys (scope, key, fingerprint, state, created_at, locked_at)
    SELECT claim_scope, claim_key, claim_fingerprint, 'in_progress', decided_at, decided_at
    FROM input WHERE claim_scope IS NOT NULL ORDER BY claim_scope, claim_key
    ON CONFLICT DO NOTHING
    RETURNING scope, key
), decision AS (
    INSERT INTO {t.SCHEMA}.routing_decisions ({", ".join(_DECISION_COLUMNS)})
    SELECT {", ".join(f"i.{c}" for c in _DECISION_COLUMNS)} FROM input AS i
    WHERE i.claim_scope IS NULL OR EXISTS (SELECT 1 FROM claim AS c WHERE c.scope = i.claim_scope AND c.key = i.claim_key)
    ORDER BY i.route_id
    ON CONFLICT DO NOTHING
    RETURNING *
), attempt AS (
    INSERT INTO {t.SCHEMA}.platform_payments (id, route_id, barber_id, appointment_id, client_id, amount, currency,
        commission_rate, commission_amount, processor_fee, refunded_amount, destination_account, payment_method,
        status, processor_idempotency_key, created_at, updated_at, version)
    SELECT i.payment_id, d.route_id, d.barber_id, d.appointment_id, d.client_id, d.amount, d.currency,
        d.commission_rate, d.commission_amount, d.estimated_processor_fee, 0, cfg.connect_account_id,
        i.payment_method, 'pending', i.processor_key, d.decided_at, d.decided_at, 1
    FROM decision AS d JOIN input AS i USING (route_id)
    JOIN {t.SCHEMA}.hybrid_payment_configs AS cfg ON cfg.barber_id = d.barber_id AND cfg.connect_account_id <> ''
    ORDER BY i.payment_id
    RETURNING *
)
SELECT i.route_id AS opened_for, c.key IS NOT NULL AS claimed, d.route_id IS NOT NULL AS decided, a.*
FROM input AS i
LEFT JOIN claim AS c ON c.scope = i.claim_scope AND c.key = i.claim_key
LEFT JOIN decision AS d ON d.route_id = i.route_id
LEFT JOIN attempt AS a ON a.route_id = i.route_id
"""

# `/route`'s decisions, group-committed (`shared.db.GroupCommit`): one array per column.
_DECISION_TYPES = ("uuid", "integer", "bigint", "bigint", "numeric", "text", "text", "text", "integer", "numeric",
                   "numeric", "numeric", "numeric", "text", "boolean", "timestamptz")
INSERT_DECISIONS = f"""
INSERT INTO {t.SCHEMA}.routing_decisions ({", ".join(_DECISION_COLUMNS)})
SELECT * FROM unnest({", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_DECISION_TYPES, 1))})
ON CONFLICT DO NOTHING
RETURNING route_id
"""


def decision_tuple(row: DecisionRow) -> tuple:
    """A decision as `INSERT_DECISIONS` takes it, column by column."""
    return tuple(getattr(row, name) for name in _DECISION_COLUMNS)


# Settle fresh attempts, each with its event and its remembered answer, in one statement, for the
# attempts of concurrent requests at once (`shared.db.GroupCommit`: one array per column, the
# response as JSON text). The caller built the event and the answer from the row it opened plus
# these values; `opened_version` guards that prediction: if anyone touched the row since, nothing is
# written for it and the general path settles. Returns the id of each attempt it settled.
SETTLE_FRESH_BATCH = f"""
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::timestamptz[], $9::int[], $10::uuid[], $11::text[], $12::text[], $13::bytea[],
                         $14::text[], $15::text[], $16::bytea[])
        AS i(id, status, intent_id, charge_id, failure_code, failure_reason, response, at, opened_version,
             event_id, subject, event_type, body, scope, key, answer)
), settled AS (
    UPDATE {t.SCHEMA}.platform_payments AS p
    SET status = i.status, stripe_payment_intent_id = i.intent_id, stripe_charge_id = i.charge_id,
        failure_code = i.failure_code, failure_reason = i.failure_reason, processor_response = i.response::jsonb,
        processed_at = i.at, updated_at = i.at, version = p.version + 1
    FROM input AS i
    WHERE p.id = i.id AND p.status = 'pending' AND p.version = i.opened_version
    RETURNING p.id
), event AS (
    INSERT INTO {t.SCHEMA}.outbox (event_id, subject, event_type, body)
    SELECT i.event_id, i.subject, i.event_type, i.body FROM input AS i JOIN settled USING (id) ORDER BY i.id
), answer AS (
    UPDATE {t.SCHEMA}.idempotency_keys AS k
    SET state = 'completed', response_status = 200, response_body = i.answer, response_media_type = 'application/json'
    FROM input AS i JOIN settled USING (id)
    WHERE k.scope = i.scope AND k.key = i.key
)
SELECT id FROM settled
"""

# What an external route is being paid through: the barber's processor, or the platform (it fell back).
Channel = Literal["external", "platform"]


class ConfigRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of router.hybrid_payment_configs, or the platform defaults of a barber without one
    (`routing.default_config_row`: version 0, and no id or times, for it was never saved)."""

    id: int | None
    barber_id: int
    payment_mode: PaymentMode
    preferred_processor: Processor | None
    fallback_enabled: bool
    min_external_amount: Decimal | None
    max_platform_amount: Decimal | None
    split_threshold: Decimal | None
    threshold_currency: str
    commission_rate: Decimal
    commission_collection_frequency: Frequency
    auto_collection_enabled: bool
    webhook_notifications: bool
    email_notifications: bool
    analytics_enabled: bool
    connect_account_id: str | None
    effective_from: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    version: int


class ConnectionRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of router.processor_connections (the read model of `connection.changed`)."""

    connection_id: int
    barber_id: int
    processor: Processor
    account_id: str
    # As the external service published it (its connection status, or `disabled`): the router
    # stores it unchecked and only takes `active` as usable.
    status: str
    default_currency: str
    supports_payments: bool
    supports_refunds: bool
    fee_percent: Decimal | None
    fee_fixed: Decimal | None
    connected_at: datetime
    event_occurred_at: datetime
    updated_at: datetime
    version: int | None


class DecisionRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of router.routing_decisions."""

    route_id: uuid.UUID
    barber_id: int
    appointment_id: int
    client_id: int | None
    amount: Decimal
    currency: str
    payment_type: PaymentType
    processor: Processor
    connection_id: int | None
    commission_rate: Decimal
    commission_amount: Decimal
    estimated_processor_fee: Decimal
    barber_net: Decimal
    reason: str
    fallback_used: bool
    decided_at: datetime
    channel: Channel | None
    channel_lease_until: datetime | None
    fallback_reason: str | None
    fallback_transaction_id: uuid.UUID | None


class PaymentRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of router.platform_payments."""

    id: uuid.UUID
    route_id: uuid.UUID
    barber_id: int
    appointment_id: int
    client_id: int | None
    amount: Decimal
    currency: str
    commission_rate: Decimal
    commission_amount: Decimal
    processor_fee: Decimal
    refunded_amount: Decimal
    destination_account: str
    payment_method: str
    status: PaymentStatus
    processor_idempotency_key: str
    stripe_payment_intent_id: str | None
    stripe_charge_id: str | None
    failure_code: str | None
    failure_reason: str | None
    processor_response: dict[str, Any] | None
    processed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int
    next_check_at: datetime | None
    check_failures: int


class RefundRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of router.platform_refunds."""

    id: uuid.UUID
    payment_id: uuid.UUID
    amount: Decimal
    status: RefundStatus
    processor_idempotency_key: str
    stripe_refund_id: str | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    next_check_at: datetime | None
    check_failures: int


# ---- configs ---------------------------------------------------------------------------------------

async def load_config(session: AsyncSession, barber_id: int, *, lock: bool = False) -> ConfigRow | None:
    query = sa.select(c).where(c.c.barber_id == barber_id)
    return _one(await session.execute(query.with_for_update() if lock else query), ConfigRow)


async def insert_config(session: AsyncSession, values: Values) -> ConfigRow | None:
    """The barber's first row, or None when a concurrent writer inserted it first."""
    return _one(await session.execute(
        pg_insert(c).values(**values).on_conflict_do_nothing(index_elements=[c.c.barber_id]).returning(c)), ConfigRow)


async def update_config(session: AsyncSession, barber_id: int, version: int, values: Values) -> ConfigRow:
    """Under the row's lock, at the version read under it: there is always the one row to update."""
    return _only(await session.execute(
        sa.update(c).where(c.c.barber_id == barber_id, c.c.version == version)
        .values(**values, version=c.c.version + 1).returning(c)), ConfigRow)


async def list_configs(session: AsyncSession, *, payment_mode: str | None, processor: str | None,
                       fallback_enabled: bool | None, cursor: str | None, limit: int) -> list[ConfigRow]:
    """Barbers with a config row, newest first; `limit + 1` rows so the caller knows whether there
    is a next page. `processor` matches the preferred processor."""
    where = [clause for clause in (
        c.c.payment_mode == payment_mode if payment_mode is not None else None,
        c.c.preferred_processor == processor if processor is not None else None,
        c.c.fallback_enabled == fallback_enabled if fallback_enabled is not None else None,
        after_cursor(c.c.created_at, c.c.barber_id, cursor, int),
    ) if clause is not None]
    return _all(await session.execute(
        sa.select(c).where(*where).order_by(c.c.created_at.desc(), c.c.barber_id.desc()).limit(limit + 1)), ConfigRow)


# ---- connections read model --------------------------------------------------------------------------

async def load_connections(session: AsyncSession, barber_id: int) -> list[ConnectionRow]:
    return _all(await session.execute(sa.select(pc).where(pc.c.barber_id == barber_id)
                                      .order_by(pc.c.connected_at, pc.c.connection_id)), ConnectionRow)


async def upsert_connection(session: AsyncSession, values: Values) -> None:
    """Insert or update; an older state never overwrites a newer one: by the connection's version
    where both have one (replicas' clocks may disagree), else by the event's time."""
    stmt = pg_insert(pc).values(**values)
    update = {k: v for k, v in values.items() if k not in ("connection_id", "connected_at")}
    newer = sa.case(
        (sa.and_(pc.c.version.is_not(None), stmt.excluded.version.is_not(None)), pc.c.version <= stmt.excluded.version),
        else_=pc.c.event_occurred_at <= stmt.excluded.event_occurred_at)
    await session.execute(stmt.on_conflict_do_update(index_elements=[pc.c.connection_id], set_=update, where=newer))


# ---- routing decisions -------------------------------------------------------------------------------

def decision_values(row: DecisionRow) -> Values:
    """The columns a new decision is inserted with."""
    return {name: getattr(row, name) for name in _DECISION_COLUMNS}


class OpenRoutesAndAttempts(GroupCommit):
    """`OPEN_ROUTES_AND_ATTEMPTS` for the route-and-pay requests under way at once: one statement
    for all (`GroupCommit`: at once when idle, else together with those that arrived meanwhile),
    each request resuming with its own row once the statement committed. Two requests under one
    Idempotency-Key never share a statement: the later one waits for the next."""

    def __init__(self, hot: HotPath) -> None:
        super().__init__(hot, OPEN_ROUTES_AND_ATTEMPTS)

    async def open(self, row: tuple) -> dict:
        return await self.insert(row, row[0])

    def _admit(self, batch: list[tuple[tuple, Any, asyncio.Future]]) -> list[tuple[tuple, Any, asyncio.Future]]:
        keys: set[tuple] = set()
        now, later = [], []
        for item in batch:
            claim_key = item[0][-3:-1]  # (scope, key), or (None, None) without a claim
            if claim_key[0] is not None and claim_key in keys:
                later.append(item)
            else:
                keys.add(claim_key)
                now.append(item)
        self._pending[:0] = later
        return now

    def _answer(self, batch: list[tuple[tuple, Any, asyncio.Future]], rows: list) -> None:
        by_route = {row["opened_for"]: row for row in rows}
        for _, route_id, future in batch:
            if not future.done():
                future.set_result(dict(by_route[route_id]))


async def open_route_and_attempt(opens: OpenRoutesAndAttempts, decision: DecisionRow, payment_id: uuid.UUID,
                                 payment_method: str, claim: Claim | None) -> tuple[bool, PaymentRow | None]:
    """`OPEN_ROUTES_AND_ATTEMPTS`, group-committed: (recorded now, the attempt opened or None). An
    unheld `claim` is claimed by the same statement (then held), or `ClaimTaken` is raised, nothing
    written."""
    values = decision_values(decision)
    deferred = claim if claim is not None and not claim.held else None
    key = (deferred.scope, deferred.key, deferred.fingerprint) if deferred else (None, None, None)
    attempt = await opens.open((*(values[name] for name in _DECISION_COLUMNS), payment_id, payment_method,
                                f"hp-pay-{payment_id}", *key))
    del attempt["opened_for"]
    claimed, decided = attempt.pop("claimed"), attempt.pop("decided")
    if deferred is not None:
        if not claimed:
            raise ClaimTaken
        deferred.held = True
    if not decided:
        return False, None
    return True, PaymentRow(**attempt) if attempt["id"] is not None else None


def settle_fresh_tuple(row: PaymentRow, opened_version: int, event: tuple[uuid.UUID, str, str, bytes],
                       answer: tuple[str, str, bytes] | None) -> tuple:
    """A fresh attempt's settlement as `SETTLE_FRESH_BATCH` takes it, column by column."""
    scope, key, body = answer if answer is not None else (None, None, None)
    response = None if row.processor_response is None else msgspec.json.encode(row.processor_response).decode()
    return (row.id, row.status, row.stripe_payment_intent_id, row.stripe_charge_id, row.failure_code,
            row.failure_reason, response, row.processed_at, opened_version, *event, scope, key, body)


async def insert_decision(session: AsyncSession, decision: Values) -> bool:
    return (await session.execute(INSERT_DECISION, decision)).first() is not None


async def load_decision(session: AsyncSession, route_id: uuid.UUID, *, lock: bool = False) -> DecisionRow | None:
    query = sa.select(rd).where(rd.c.route_id == route_id)
    return _one(await session.execute(query.with_for_update() if lock else query), DecisionRow)


async def set_channel(session: AsyncSession, route_id: uuid.UUID, values: Values) -> None:
    await session.execute(sa.update(rd).where(rd.c.route_id == route_id).values(**values))


# ---- payments ------------------------------------------------------------------------------------------

async def live_attempt(session: AsyncSession, route_id: uuid.UUID) -> PaymentRow | None:
    """The route's attempt that is in flight or took money (at most one: a unique index says so)."""
    return _one(await session.execute(
        sa.select(p).where(p.c.route_id == route_id, p.c.status.not_in(("failed", "canceled")))), PaymentRow)


async def insert_attempt(session: AsyncSession, values: Values) -> PaymentRow:
    return _only(await session.execute(sa.insert(p).values(**values).returning(p)), PaymentRow)


async def load_payment(session: AsyncSession, payment_id: uuid.UUID, *, lock: bool = False) -> PaymentRow | None:
    query = sa.select(p).where(p.c.id == payment_id)
    return _one(await session.execute(query.with_for_update() if lock else query), PaymentRow)


async def touch_pending_payment(session: AsyncSession, payment_id: uuid.UUID, now: datetime) -> PaymentRow | None:
    """Take the lease of a pending attempt before calling the processor (None: it is settled)."""
    return _one(await session.execute(
        sa.update(p).where(p.c.id == payment_id, p.c.status == "pending")
        .values(updated_at=now).returning(p)), PaymentRow)


async def settle_attempt(session: AsyncSession, payment_id: uuid.UUID, values: Values, *,
                         untouched_since: datetime | None = None) -> PaymentRow | None:
    """Move a pending attempt to its outcome; None when someone settled (or touched) it first."""
    where = [p.c.id == payment_id, p.c.status == "pending"]
    if untouched_since is not None:  # the sweeper: only attempts nobody is driving right now
        where.append(p.c.updated_at < untouched_since)
    return _one(await session.execute(
        sa.update(p).where(*where).values(**values, version=p.c.version + 1).returning(p)), PaymentRow)


async def record_refunded(session: AsyncSession, payment_id: uuid.UUID, refunded_amount: Decimal,
                          status: PaymentStatus, now: datetime) -> PaymentRow:
    """On the payment locked by the caller."""
    return _only(await session.execute(
        sa.update(p).where(p.c.id == payment_id)
        .values(refunded_amount=refunded_amount, status=status, updated_at=now, version=p.c.version + 1)
        .returning(p)), PaymentRow)


async def pending_attempts(session: AsyncSession, untouched_since: datetime, now: datetime,
                           limit: int) -> list[PaymentRow]:
    """Attempts nobody came back for, not backed off, oldest first."""
    return _all(await session.execute(attempts.pending(p, untouched_since, now, limit)), PaymentRow)


async def back_off_payment(session: AsyncSession, row: PaymentRow, now: datetime) -> None:
    await attempts.back_off(session, p, row.id, row.check_failures, now)


async def check_payment_later(session: AsyncSession, payment_id: uuid.UUID, when: datetime) -> None:
    await attempts.check_later(session, p, payment_id, when)


async def list_payments(session: AsyncSession, *, barber_id: int | None, status: str | None,
                        payment_type: str | None, since: datetime | None, until: datetime | None,
                        cursor: str | None, limit: int) -> list[PaymentRow]:
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
    return _all(await session.execute(
        sa.select(p).where(*where).order_by(p.c.created_at.desc(), p.c.id.desc()).limit(limit + 1)), PaymentRow)


# ---- refunds -------------------------------------------------------------------------------------------

async def pending_refund_total(session: AsyncSession, payment_id: uuid.UUID) -> Decimal:
    return await session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(r.c.amount), 0))
        .where(r.c.payment_id == payment_id, r.c.status == "pending"))


async def load_refund(session: AsyncSession, refund_id: uuid.UUID) -> RefundRow | None:
    return _one(await session.execute(sa.select(r).where(r.c.id == refund_id)), RefundRow)


async def refunds_of(session: AsyncSession, payment_id: uuid.UUID) -> list[RefundRow]:
    return _all(await session.execute(
        sa.select(r).where(r.c.payment_id == payment_id).order_by(r.c.created_at)), RefundRow)


async def insert_refund(session: AsyncSession, values: Values) -> RefundRow:
    return _only(await session.execute(sa.insert(r).values(**values).returning(r)), RefundRow)


async def touch_pending_refund(session: AsyncSession, refund_id: uuid.UUID, now: datetime) -> RefundRow | None:
    return _one(await session.execute(
        sa.update(r).where(r.c.id == refund_id, r.c.status == "pending").values(updated_at=now).returning(r)),
        RefundRow)


async def settle_refund(session: AsyncSession, refund_id: uuid.UUID, values: Values, *,
                        untouched_since: datetime | None = None) -> RefundRow | None:
    where = [r.c.id == refund_id, r.c.status == "pending"]
    if untouched_since is not None:
        where.append(r.c.updated_at < untouched_since)
    return _one(await session.execute(sa.update(r).where(*where).values(**values).returning(r)), RefundRow)


async def pending_refunds(session: AsyncSession, untouched_since: datetime, now: datetime,
                          limit: int) -> list[RefundRow]:
    """Refunds nobody came back for, not backed off, oldest first."""
    return _all(await session.execute(attempts.pending(r, untouched_since, now, limit)), RefundRow)


async def back_off_refund(session: AsyncSession, row: RefundRow, now: datetime) -> None:
    await attempts.back_off(session, r, row.id, row.check_failures, now)


async def check_refund_later(session: AsyncSession, refund_id: uuid.UUID, when: datetime) -> None:
    await attempts.check_later(session, r, refund_id, when)
