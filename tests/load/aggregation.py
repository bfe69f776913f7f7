"""Benchmark: one collections aggregation run over many unbilled accruals (set-based, so its cost
should grow with the rows, not with round trips).

    .venv/bin/python -m tests.load.aggregation --accruals 100000 --barbers 10000

It makes a scratch database on the local Postgres (or DATABASE_URL's server), migrates the
collections schema, loads the accruals with COPY, times `store.bill_unbilled` (the statement the
schedule and `POST /run` use) over several runs on fresh copies, checks the books balance, and drops
the database. Figures go to stdout and `.run/aggregation-results.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

from services.collections import store
from services.collections.domain import due_date, window_ends
from shared.config import normalise_database_url
from shared.migrations import upgrade
from tools.devinfra import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


async def load(dsn: str, accruals: int, barbers: int, seed: int) -> None:
    rnd = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE collections.commission_accruals, collections.platform_collections CASCADE")
        rows = []
        for i in range(accruals):
            barber = 1 + i % barbers
            cents = rnd.randint(50, 5000) if rnd.random() > 0.1 else -rnd.randint(50, 1000)
            rows.append((barber, f"tx-{i}", "USD", "commission" if cents > 0 else "reversal",
                         Decimal(cents).scaleb(-2), NOW - timedelta(days=rnd.randint(8, 60)), uuid.uuid4(), NOW))
        await conn.copy_records_to_table(
            "commission_accruals", schema_name="collections", records=rows,
            columns=["barber_id", "transaction_id", "currency", "kind", "amount", "accrued_at", "event_id",
                     "created_at"])
        await conn.execute("ANALYZE collections.commission_accruals")
    finally:
        await conn.close()


async def one_run(url: str) -> tuple[float, int, int]:
    engine = create_async_engine(normalise_database_url(url))
    try:
        async with engine.begin() as conn:
            from sqlalchemy.ext.asyncio import AsyncSession

            session = AsyncSession(bind=conn)
            started = time.perf_counter()
            rows, billed = await store.bill_unbilled(
                session, ends=window_ends(NOW), now=NOW, minimum=Decimal("25.00"), default_frequency="weekly",
                default_auto=True, force=False, barber_id=None, due=due_date(NOW))
            elapsed = time.perf_counter() - started
        return elapsed, len(rows), billed
    finally:
        await engine.dispose()


async def books(dsn: str) -> tuple[Decimal, Decimal, Decimal]:
    conn = await asyncpg.connect(dsn)
    try:
        accrued = await conn.fetchval("SELECT coalesce(sum(amount), 0) FROM collections.commission_accruals")
        collected = await conn.fetchval("SELECT coalesce(sum(amount), 0) FROM collections.platform_collections")
        unbilled = await conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM collections.commission_accruals WHERE collection_id IS NULL")
        return accrued, collected, unbilled
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.aggregation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accruals", type=int, default=100_000)
    parser.add_argument("--barbers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--server", default=os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args(argv)
    name = f"hp_aggregation_{uuid.uuid4().hex[:8]}"
    create_database(args.server, name)
    url = args.server.rsplit("/", 1)[0] + "/" + name
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    try:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(upgrade, "collections", url).result()
        timings = []
        for run in range(args.runs):
            asyncio.run(load(dsn, args.accruals, args.barbers, seed=run))
            elapsed, collections, billed = asyncio.run(one_run(url))
            accrued, collected, unbilled = asyncio.run(books(dsn))
            assert accrued == collected + unbilled, (accrued, collected, unbilled)
            timings.append(elapsed)
            print(f"run {run + 1}: {elapsed * 1000:.0f} ms, {collections} collections, {billed} accruals billed, "
                  f"books balance ({accrued} = {collected} + {unbilled})")
        result = {"accruals": args.accruals, "barbers": args.barbers, "runs_ms": [round(t * 1000) for t in timings],
                  "median_ms": round(statistics.median(timings) * 1000), "min_ms": round(min(timings) * 1000)}
        print(json.dumps(result))
        (ROOT / ".run").mkdir(exist_ok=True)
        (ROOT / ".run" / "aggregation-results.json").write_text(json.dumps(result, indent=2))
    finally:
        drop_database(args.server, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
