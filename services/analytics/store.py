"""The analytics service's named queries over a unit of work's session. Rows come back as typed,
frozen structs (`FactRow`, `CollectionFactRow`, and one per summing query); values written go in as
dicts of columns. Rollups change only by adding deltas (`add_to_daily_payments`), in a fixed key order, so
replicas applying events at once never deadlock on the shared all-barbers rows."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics import tables as t
from services.analytics.domain import ALL_BARBERS, MEASURES, Measures, RollupKey
from shared.db import HotPath
from shared.db import all_rows as _all
from shared.db import Stage, driver_connection
from shared.db import one_row as _one

Values = dict[str, Any]  # columns to write
tf, dp, cf, dc = t.transaction_facts, t.daily_payments, t.collection_facts, t.daily_collections
CollectionStatus = Literal["pending", "collected", "failed", "overdue"]


class FactRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of analytics.transaction_facts: the latest state of one transaction."""

    transaction_id: str
    barber_id: int
    appointment_id: int | None
    client_id: int | None
    payment_type: Literal["centralized", "external"]
    processor: str
    connection_id: int | None
    external_transaction_id: str | None
    currency: str
    status: Literal["pending", "completed", "failed", "canceled", "refunded", "partially_refunded"]
    amount: Decimal
    refunded_amount: Decimal
    commission_rate: Decimal
    commission_amount: Decimal
    processor_fee: Decimal
    processed_at: datetime
    day: date
    sequence: int
    source: Literal["live", "legacy"]
    updated_at: datetime
    event_at: datetime


class CollectionFactRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of analytics.collection_facts: the latest state of one platform collection."""

    collection_id: uuid.UUID
    barber_id: int
    currency: str
    amount: Decimal
    status: CollectionStatus
    failed_reason: str | None
    collected_at: datetime | None
    changed_at: datetime


class RollupSums(msgspec.Struct, frozen=True, kw_only=True):
    """Rollup measures summed over a group (a day and kind, or a kind and currency)."""

    day: date | None = None
    payment_type: str
    processor: str
    currency: str | None = None
    transaction_count: int
    completed_count: int
    failed_count: int
    gross_volume: Decimal
    refunded_amount: Decimal
    commission: Decimal
    processor_fees: Decimal
    barber_net: Decimal

    def measures(self) -> Measures:
        return Measures(**{m: getattr(self, m) for m in MEASURES})


class CommissionRow(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    owed: Decimal
    collected: Decimal


class StatusTotal(msgspec.Struct, frozen=True, kw_only=True):
    status: CollectionStatus
    currency: str
    n: int
    amount: Decimal


_LOCK_FACTS = ("SELECT count(pg_advisory_xact_lock(hashtextextended('analytics-fact:' || id, 0))) "
               "FROM unnest($1::text[]) AS id")
COUNTS = ("transaction_count", "completed_count", "failed_count")


def _sums() -> list:
    """Each measure summed (counts stay integers: sum(bigint) is numeric in Postgres)."""
    return [(sa.cast(sa.func.sum(dp.c[m]), sa.BigInteger) if m in COUNTS else sa.func.sum(dp.c[m])).label(m)
            for m in MEASURES]


# ---- transaction facts and their rollups -----------------------------------------------------------------

async def lock_facts(session: AsyncSession, transaction_ids: list[str]) -> dict[str, FactRow]:
    """The transactions' facts, with every other writer of them held off until commit: advisory
    locks (so facts not inserted yet are serialised too), taken in one order so that two replicas
    locking overlapping batches cannot deadlock."""
    ids = sorted(set(transaction_ids))  # unnest keeps the array's order: the locks are taken in it
    # On the session's own asyncpg connection, inside its transaction, as the live consumer's
    # statements all are: through the ORM, building and binding them was most of analytics' CPU at
    # 400 payments/s (tests/load/README.md). Two statements: the second's snapshot must be taken
    # after the locks are held, to read what their last holder committed.
    raw = await driver_connection(session)
    await raw.fetchval(_LOCK_FACTS, ids)
    return {r["transaction_id"]: FactRow(**r) for r in await raw.fetch(_FACTS_OF, ids)}


FACT_COLUMNS = tuple(FactRow.__struct_fields__)
_FACTS_OF = (f"SELECT {', '.join(FACT_COLUMNS)} FROM {t.SCHEMA}.transaction_facts "
             "WHERE transaction_id = ANY($1::text[])")


def _upsert(table: str, columns: tuple[str, ...], rows: str, key: tuple[str, ...], update: str) -> str:
    """`INSERT ... <rows> ON CONFLICT (key) DO UPDATE SET update` into analytics' `table`; `update`
    names the row already there `held`."""
    return (f"INSERT INTO {t.SCHEMA}.{table} AS held "
            f"({', '.join(columns)}) {rows} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {update}")


def _values(columns: tuple[str, ...]) -> str:
    """One row of parameters, for `executemany` (one prepared statement, one round trip)."""
    return f"VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))})"


_FACTS_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in FACT_COLUMNS if c != "transaction_id")
# Big batches (the legacy import's `transaction.imported`, 10,000 payments a transaction) are
# COPYed into a temporary table and upserted from it in one statement: a row-by-row upsert spent
# most of the catch-up after a 1,000,000-payment import in Postgres's per-row execution. Small
# batches (the live consumer's) go as one `executemany`.
# Their amounts travel as exact text (`shared.db.Stage`).
COPY_FROM = 200
_FACTS_STAGE = Stage("facts_in", f"{t.SCHEMA}.transaction_facts", FACT_COLUMNS,
                     ("amount", "refunded_amount", "commission_rate", "commission_amount", "processor_fee"))
_SAVE_FACTS = _upsert("transaction_facts", FACT_COLUMNS, _values(FACT_COLUMNS), ("transaction_id",), _FACTS_SET)
_FACTS_FROM_STAGE = _upsert(
    "transaction_facts", FACT_COLUMNS,
    f"SELECT {_FACTS_STAGE.select} FROM facts_in ORDER BY transaction_id", ("transaction_id",), _FACTS_SET)


async def save_facts(session: AsyncSession, rows: list[FactRow]) -> None:
    records = [msgspec.structs.astuple(r) for r in sorted(rows, key=lambda r: r.transaction_id)]
    if not records:
        return
    # The session's own connection, inside its transaction: what it writes commits or rolls back with it.
    raw = await driver_connection(session)
    if len(records) < COPY_FROM:
        await raw.executemany(_SAVE_FACTS, records)
        return
    await _FACTS_STAGE.copy(raw, _FACTS_STAGE.records(records))
    await raw.execute(_FACTS_FROM_STAGE)


ROLLUP_KEY = ("day", "barber_id", "payment_type", "processor", "currency", "source")
_ROLLUP_COLUMNS = ROLLUP_KEY + MEASURES
_ROLLUPS_ADD = ", ".join(f"{m} = held.{m} + EXCLUDED.{m}" for m in MEASURES)
_ROLLUPS_STAGE = Stage("rollups_in", f"{t.SCHEMA}.daily_payments", _ROLLUP_COLUMNS,
                       ("gross_volume", "refunded_amount", "commission", "processor_fees", "barber_net"))
_ROLLUPS_FROM_STAGE = _upsert(
    "daily_payments", _ROLLUP_COLUMNS,
    f"SELECT {_ROLLUPS_STAGE.select} FROM rollups_in ORDER BY {', '.join(ROLLUP_KEY)}", ROLLUP_KEY, _ROLLUPS_ADD)
_ADD_TO_ROLLUPS = _upsert("daily_payments", _ROLLUP_COLUMNS, _values(_ROLLUP_COLUMNS), ROLLUP_KEY, _ROLLUPS_ADD)


async def add_to_daily_payments(session: AsyncSession, deltas: dict[RollupKey, Measures]) -> None:
    """Add each delta to its rollup row, in key order (see the module's note on deadlocks); a big
    batch's (the legacy import's) through a COPY and one statement, as `save_facts` does."""
    ordered = sorted(deltas.items())
    if not ordered:
        return
    records = [(*key, *(getattr(d, m) for m in MEASURES)) for key, d in ordered]
    raw = await driver_connection(session)
    if len(ordered) >= COPY_FROM:
        await _ROLLUPS_STAGE.copy(raw, _ROLLUPS_STAGE.records(records))
        await raw.execute(_ROLLUPS_FROM_STAGE)
    else:
        await raw.executemany(_ADD_TO_ROLLUPS, records)


async def daily_payments(session: AsyncSession, *, barber_id: int, currency: str, start: date, end: date,
                         source: str | None) -> list[RollupSums]:
    """The rollup rows of one scope (a barber, or 0 for all) and currency over [start, end],
    summed over sources unless one is asked for."""
    where = [dp.c.barber_id == barber_id, dp.c.currency == currency, dp.c.day.between(start, end)]
    if source is not None:
        where.append(dp.c.source == source)
    query = (sa.select(dp.c.day, dp.c.payment_type, dp.c.processor, *_sums())
             .where(*where).group_by(dp.c.day, dp.c.payment_type, dp.c.processor))
    return _all(await session.execute(query), RollupSums)


async def external_commission_until(session: AsyncSession, *, barber_id: int, currency: str, end: date) -> Decimal:
    """The commission kept on barbers' own processors up to `end`: what collections is owed."""
    return await session.scalar(sa.select(sa.func.coalesce(sa.func.sum(dp.c.commission), 0)).where(
        dp.c.barber_id == barber_id, dp.c.currency == currency, dp.c.payment_type == "external", dp.c.day <= end))


# The barber's payments that took the money since $3: when, what they kept, who paid. A year of a
# busy barber is tens of thousands of rows: read on asyncpg (`HotPath`), not through the ORM, whose
# per-row work was most of the insights' time (tests/load/console.py: ~300 ms for 49,000 rows).
BARBER_VISITS = f"""
SELECT processed_at, amount - refunded_amount AS revenue, client_id
FROM {t.SCHEMA}.transaction_facts
WHERE barber_id = $1 AND currency = $2 AND processed_at > $3
  AND status IN ('completed', 'partially_refunded', 'refunded')
"""


async def barber_visits(hot: HotPath, barber_id: int, currency: str, since: datetime) -> list[tuple]:
    """(processed_at, revenue, client_id) of each payment, in no particular order."""
    return [tuple(r) for r in await hot.fetch_sql(BARBER_VISITS, barber_id, currency, since)]


# ---- collections ---------------------------------------------------------------------------------------

async def lock_collection(session: AsyncSession, collection_id: uuid.UUID) -> CollectionFactRow | None:
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(
        sa.func.hashtextextended(sa.literal(f"analytics-collection:{collection_id}"), 0))))
    return _one(await session.execute(sa.select(cf).where(cf.c.collection_id == collection_id)), CollectionFactRow)


async def save_collection(session: AsyncSession, values: Values) -> None:
    stmt = pg_insert(cf).values(**values)
    await session.execute(stmt.on_conflict_do_update(
        index_elements=[cf.c.collection_id], set_={k: stmt.excluded[k] for k in values if k != "collection_id"}))


async def add_collected(session: AsyncSession, *, day: date, barber_id: int, currency: str, amount: Decimal) -> None:
    rows = [dict(day=day, barber_id=b, currency=currency, collected_count=1, collected_amount=amount)
            for b in sorted({ALL_BARBERS, barber_id})]
    stmt = pg_insert(dc).values(rows)
    await session.execute(stmt.on_conflict_do_update(
        index_elements=[dc.c.day, dc.c.barber_id, dc.c.currency],
        set_={"collected_count": dc.c.collected_count + 1,
              "collected_amount": dc.c.collected_amount + stmt.excluded.collected_amount}))


async def collected_between(session: AsyncSession, *, barber_id: int, currency: str, start: date | None,
                            end: date) -> Decimal:
    where = [dc.c.barber_id == barber_id, dc.c.currency == currency, dc.c.day <= end]
    if start is not None:
        where.append(dc.c.day >= start)
    return await session.scalar(sa.select(sa.func.coalesce(sa.func.sum(dc.c.collected_amount), 0)).where(*where))


# ---- metrics -----------------------------------------------------------------------------------------------

async def platform_since(session: AsyncSession, since: date) -> list[RollupSums]:
    """All barbers' rollups since `since`, per payment type, processor and currency."""
    return _all(await session.execute(
        sa.select(dp.c.payment_type, dp.c.processor, dp.c.currency, *_sums())
        .where(dp.c.barber_id == ALL_BARBERS, dp.c.day >= since)
        .group_by(dp.c.payment_type, dp.c.processor, dp.c.currency)), RollupSums)


async def commission_by_currency(session: AsyncSession) -> list[CommissionRow]:
    """Per currency, all time: external commission kept, and commission collected."""
    owed = (sa.select(dp.c.currency, sa.func.sum(dp.c.commission).label("owed"))
            .where(dp.c.barber_id == ALL_BARBERS, dp.c.payment_type == "external").group_by(dp.c.currency)
            .subquery())
    paid = (sa.select(dc.c.currency, sa.func.sum(dc.c.collected_amount).label("collected"))
            .where(dc.c.barber_id == ALL_BARBERS).group_by(dc.c.currency).subquery())
    return _all(await session.execute(
        sa.select(sa.func.coalesce(owed.c.currency, paid.c.currency).label("currency"),
                  sa.func.coalesce(owed.c.owed, 0).label("owed"),
                  sa.func.coalesce(paid.c.collected, 0).label("collected"))
        .select_from(owed.join(paid, owed.c.currency == paid.c.currency, full=True))), CommissionRow)


async def collections_by_status(session: AsyncSession) -> list[StatusTotal]:
    return _all(await session.execute(
        sa.select(cf.c.status, cf.c.currency, sa.func.count().label("n"), sa.func.sum(cf.c.amount).label("amount"))
        .group_by(cf.c.status, cf.c.currency)), StatusTotal)
