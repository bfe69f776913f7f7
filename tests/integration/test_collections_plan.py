"""The aggregation statement (`store.bill_unbilled`, set-based SQL) makes exactly the collections
that `domain.plan_collections` (the plain-Python specification the property tests check) plans,
over many random books: mixed frequencies and currencies, credits, automatic collection on and off,
windows, the minimum, `force` and one-barber runs. Each case runs on a scratch database that holds
only its own accruals."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from services.collections import store
from services.collections import tables as ct
from services.collections.domain import (
    Accrual,
    BarberSettings,
    due_date,
    plan_collections,
    window_ends,
)
from shared.migrations import upgrade
from tests.conftest import RUN_ID
from tools.devinfra import create_database, drop_database

NOW = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)  # a Thursday


@pytest.fixture(scope="module")
def scratch_url(infra):
    name = f"hp_plan_{RUN_ID}"
    create_database(infra.postgres_url, name)
    url = infra.database_url(name)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade, "collections", url).result()
    yield url
    drop_database(infra.postgres_url, name)


@pytest.fixture(scope="module")
async def scratch(scratch_url):
    engine = create_async_engine(scratch_url)
    yield engine
    await engine.dispose()


def random_books(rnd: random.Random) -> tuple[list[dict], dict[int, BarberSettings]]:
    barbers = list(range(1, rnd.randint(2, 12)))
    settings = {b: BarberSettings(rnd.choice(["daily", "weekly", "monthly"]), rnd.random() < 0.8)
                for b in barbers if rnd.random() < 0.7}  # the rest have no settings: the default
    # Half of them a few minutes either side of a window boundary (or of now), where mistakes show.
    boundaries = [*window_ends(NOW).values(), NOW]
    accruals = []
    # Accruals as transactions make them: a commission, and reversals that never take back more than
    # the commission of their own transaction (the database refuses that), each at its own time.
    left: dict[str, Decimal] = {}  # what a transaction's reversals may still take back
    for i in range(rnd.randint(0, 120)):
        if rnd.random() < 0.5:
            at = rnd.choice(boundaries) + timedelta(minutes=rnd.randint(-90, 90))
        else:  # from 45 days before now to a few hours after
            at = NOW - timedelta(minutes=rnd.randint(-600, 45 * 24 * 60))
        barber, currency = rnd.choice(barbers), rnd.choice(["USD", "USD", "EUR", "JPY"])
        owing = [tx for tx, amount in left.items() if amount > 0 and tx.startswith(f"tx-{barber}-{currency}-")]
        if owing and rnd.random() < 0.3:
            tx = rnd.choice(owing)
            amount = -min(left[tx], Decimal(rnd.randint(1, 1500)).scaleb(-2))
        else:
            tx, amount = f"tx-{barber}-{currency}-{i}", Decimal(rnd.randint(1, 4000)).scaleb(-2)
        left[tx] = left.get(tx, Decimal(0)) + amount
        accruals.append(dict(
            barber_id=barber, transaction_id=tx, currency=currency, kind="commission" if amount > 0 else "reversal",
            amount=amount, event_id=uuid.uuid4(), created_at=NOW, accrued_at=at))
    if accruals and rnd.random() < 0.3:  # one barber's credit cancelling its commission exactly: a zero total
        pick = rnd.choice(accruals)
        prefix = f"tx-{pick['barber_id']}-{pick['currency']}-"
        for tx, amount in list(left.items()):  # every transaction of it refunded in full, long ago
            if tx.startswith(prefix) and amount > 0:
                accruals.append({**pick, "transaction_id": tx, "kind": "reversal", "amount": -amount,
                                 "event_id": uuid.uuid4(), "accrued_at": NOW - timedelta(days=40)})
                left[tx] = Decimal(0)
    return accruals, settings


@pytest.mark.parametrize("seed", range(150))
async def test_the_sql_plan_is_the_domain_plan(scratch, seed):
    rnd = random.Random(seed)
    accruals, settings = random_books(rnd)
    default = BarberSettings(rnd.choice(["daily", "weekly", "monthly"]), rnd.random() < 0.7)
    minimum = Decimal(rnd.choice([0, 1, 10, 25, 25, 100]))
    force = rnd.random() < 0.3
    only = rnd.choice([None, None, 1, 2])
    if accruals and rnd.random() < 0.25:  # a minimum exactly at one group's total: the edge must hold
        force, pick = True, rnd.choice(accruals)
        minimum = sum((a["amount"] for a in accruals if (a["barber_id"], a["currency"]) == (
            pick["barber_id"], pick["currency"]) and a["accrued_at"] < NOW), Decimal(0))
    async with scratch.begin() as conn:
        await conn.execute(sa.text("TRUNCATE collections.commission_accruals, collections.platform_collections, "
                                   "collections.barber_settings CASCADE"))
        if settings:
            await conn.execute(sa.insert(ct.barber_settings), [dict(
                barber_id=b, commission_collection_frequency=s.frequency, auto_collection_enabled=s.auto_collection,
                commission_rate=Decimal("0.10"), config_version=1, updated_at=NOW) for b, s in settings.items()])
        ids = []
        if accruals:
            ids = list((await conn.execute(sa.insert(ct.accruals).returning(ct.accruals.c.id), accruals)).scalars())
        session = AsyncSession(bind=conn)
        created, _ = await store.bill_unbilled(
            session, ends=window_ends(NOW), now=NOW, minimum=minimum, default_frequency=default.frequency,
            default_auto=default.auto_collection, force=force, barber_id=only, due=due_date(NOW))
        billed = {r.id: r.collection_id for r in await conn.execute(
            sa.select(ct.accruals.c.id, ct.accruals.c.collection_id).where(ct.accruals.c.collection_id.isnot(None)))}
    planned = plan_collections(
        [Accrual(id=i, barber_id=a["barber_id"], currency=a["currency"], amount=a["amount"],
                 accrued_at=a["accrued_at"], transaction_id=a["transaction_id"]) for i, a in zip(ids, accruals)],
        settings, default, NOW, minimum, force=force, barber_id=only)
    by_collection: dict[uuid.UUID, set[int]] = {}
    for accrual_id, collection_id in billed.items():
        by_collection.setdefault(collection_id, set()).add(accrual_id)
    made = sorted((r.barber_id, r.currency, r.amount, frozenset(by_collection.get(r.id, ())),
                   frozenset(r.external_transaction_ids)) for r in created)
    expected = sorted((p.barber_id, p.currency, p.amount, frozenset(p.accrual_ids), frozenset(p.transaction_ids))
                      for p in planned)
    assert made == expected
    # And the books: what was billed is exactly what the collections hold.
    assert sum((r.amount for r in created), Decimal(0)) == sum(
        (a["amount"] for i, a in zip(ids, accruals) if i in billed), Decimal(0))

