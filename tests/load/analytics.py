"""Benchmarks of the analytics service (figures, not tests; see tests/load/README.md).

    .venv/bin/python -m tests.load.analytics dashboard   # a year of 1,000,000 transactions, 5,000 barbers
    .venv/bin/python -m tests.load.analytics consumer    # transaction.recorded applied per second
    .venv/bin/python -m tests.load.analytics lag         # producer commit -> dashboard, at 100 payments/s

`dashboard` and `consumer` make their own scratch database (on the local Postgres, or --server)
and JetStream stream, start the analytics service on them as a real process, and clean up after.
`dashboard` generates the facts in SQL and builds their rollups with one grouped INSERT (the same
sums the consumer keeps by deltas), checks the all-barbers dashboard against a sum over the facts,
then times GET /dashboard over the whole year for one barber and for all barbers, one request at
a time. `consumer` publishes N events (two states per transaction: pending, then completed or
failed, a tenth refunded later) before the service starts, then times how long one replica takes
to apply them all.

`lag` runs against `make run`: it pays centralized route-and-pay payments through the router at a
fixed rate (open loop, to the simulator), waits until analytics has applied every one, and reads
the lag per payment from analytics' facts: `updated_at` (applied, in the same transaction as the
rollups the dashboard reads) minus `event_at` (the producer wrote the event, in the transaction of
the payment). `lag --synthetic` measures the event path alone: on a scratch database, this process
is the producer (a service runtime with the real unit of work and outbox relay, committing one
`transaction.recorded` per payment at the rate), so the router's own cost of taking a payment is
out of the figure. Results are printed and written to `.run/analytics-bench-<name>.json`.
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
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats

from shared.auth import issue_token
from shared.events import TransactionRecorded, encode_event, ensure_stream, new_event
from shared.migrations import upgrade
from tests.load.stats import percentile, send_offsets
from tests.support import free_port, running_process
from tools.devinfra import create_database, drop_database
from tools.runstate import pick_database_url, pick_jwt_secret

ROOT = Path(__file__).resolve().parents[2]
SECRET = "analytics-bench-secret-0123456789abcdef"
YEAR_END = date(2026, 11, 26)
YEAR_START = YEAR_END - timedelta(days=364)


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "p50_ms": round(percentile(ordered, 50) * 1000, 2),
            "p95_ms": round(percentile(ordered, 95) * 1000, 2), "p99_ms": round(percentile(ordered, 99) * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2) if ordered else 0.0,
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2) if ordered else 0.0}


def save(name: str, result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, default=str))
    (ROOT / ".run").mkdir(exist_ok=True)
    (ROOT / ".run" / f"analytics-bench-{name}.json").write_text(json.dumps(result, indent=2, default=str))


class Scratch:
    """A scratch database with the analytics schema, a stream of its own, and the service on them."""

    def __init__(self, server: str, nats_url: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.server, self.nats_url = server, nats_url
        self.name = f"hp_analytics_bench_{tag}"
        self.url = server.rsplit("/", 1)[0] + "/" + self.name
        self.dsn = self.url.replace("postgresql+asyncpg://", "postgresql://")
        self.stream, self.prefix = f"PAYMENTS_BENCH_{tag}", f"bench{tag}."

    def __enter__(self) -> Scratch:
        create_database(self.server, self.name)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(upgrade, "analytics", self.url).result()
        return self

    def __exit__(self, *exc) -> None:
        drop_database(self.server, self.name)

        async def drop_stream() -> None:
            nc = await nats.connect(self.nats_url)
            try:
                await nc.jetstream().delete_stream(self.stream)
            except Exception:
                pass
            await nc.close()

        asyncio.run(drop_stream())

    def service(self, log: Path):
        port = free_port()
        env = {**os.environ, "DATABASE_URL": self.url, "NATS_URL": self.nats_url, "JWT_SECRET": SECRET,
               "EVENT_STREAM": self.stream, "EVENT_SUBJECT_PREFIX": self.prefix, "PORT": str(port),
               "LOG_LEVEL": "warning", "RATE_LIMIT_PER_MINUTE": "1000000"}
        return running_process(["services.analytics"], env, ready_url=f"http://127.0.0.1:{port}/health/ready",
                               log=log, timeout=60), f"http://127.0.0.1:{port}"


# ---- dashboard over a year ---------------------------------------------------------------------------

FACTS_SQL = """
INSERT INTO analytics.transaction_facts (transaction_id, barber_id, appointment_id, client_id, payment_type,
    processor, connection_id, external_transaction_id, currency, status, amount, refunded_amount, commission_rate,
    commission_amount, processor_fee, processed_at, day, sequence, source, updated_at, event_at)
SELECT 'bench-' || g, barber, g, 1 + (g % 50000), ptype,
       CASE WHEN ptype = 'centralized' THEN 'stripe' ELSE (ARRAY['stripe', 'square', 'paypal'])[1 + (g % 3)] END,
       NULL, NULL, 'USD', status, amount,
       CASE status WHEN 'refunded' THEN amount WHEN 'partially_refunded' THEN round(amount * 0.4, 2) ELSE 0 END,
       0.15, round(amount * 0.15, 2), round(amount * 0.029 + 0.30, 2), at, (at AT TIME ZONE 'UTC')::date, 1,
       CASE WHEN g % 20 = 0 THEN 'legacy' ELSE 'live' END, now(), at
FROM (
    SELECT g, 1 + floor(random() * $1)::int AS barber,
           CASE WHEN random() < 0.6 THEN 'centralized' ELSE 'external' END AS ptype,
           (ARRAY['completed', 'failed', 'partially_refunded', 'refunded', 'pending'])[
               CASE WHEN r < 0.85 THEN 1 WHEN r < 0.92 THEN 2 WHEN r < 0.95 THEN 3 WHEN r < 0.97 THEN 4 ELSE 5 END
           ] AS status,
           round((15 + random() * 235)::numeric, 2) AS amount,
           $2::timestamptz + random() * interval '365 days' AS at
    FROM (SELECT g, random() AS r FROM generate_series(1, $3) g) s
) t
"""

# The rollups of those facts, as the consumer's deltas would have made them (domain.measures_of).
ROLLUPS_SQL = """
WITH m AS (
    SELECT day, barber_id, payment_type, processor, currency, source,
           (status IN ('completed', 'partially_refunded', 'refunded')) AS settled, status, amount,
           refunded_amount, processor_fee,
           CASE WHEN status NOT IN ('completed', 'partially_refunded', 'refunded') THEN 0
                WHEN refunded_amount >= amount THEN 0
                ELSE commission_amount - round(commission_amount * refunded_amount / amount, 2) END AS kept
    FROM analytics.transaction_facts
), per AS (
    SELECT day, barber_id, payment_type, processor, currency, source,
           count(*) AS transaction_count, count(*) FILTER (WHERE settled) AS completed_count,
           count(*) FILTER (WHERE status = 'failed') AS failed_count,
           coalesce(sum(amount) FILTER (WHERE settled), 0) AS gross_volume,
           coalesce(sum(refunded_amount) FILTER (WHERE settled), 0) AS refunded_amount,
           sum(kept) AS commission,
           coalesce(sum(processor_fee) FILTER (WHERE settled), 0) AS processor_fees,
           coalesce(sum(amount - refunded_amount - kept
                        - CASE WHEN payment_type = 'external' THEN processor_fee ELSE 0 END)
                    FILTER (WHERE settled), 0) AS barber_net
    FROM m GROUP BY day, barber_id, payment_type, processor, currency, source
)
INSERT INTO analytics.daily_payments
SELECT * FROM per
UNION ALL
SELECT day, 0, payment_type, processor, currency, source, sum(transaction_count), sum(completed_count),
       sum(failed_count), sum(gross_volume), sum(refunded_amount), sum(commission), sum(processor_fees),
       sum(barber_net)
FROM per GROUP BY day, payment_type, processor, currency, source
"""


async def generate(dsn: str, transactions: int, barbers: int, seed: float) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET TimeZone = 'UTC'")
        await conn.execute("SELECT setseed($1)", seed)
        started = time.perf_counter()
        await conn.execute(FACTS_SQL, barbers, datetime(YEAR_START.year, YEAR_START.month, YEAR_START.day,
                                                        tzinfo=UTC), transactions)
        facts_s = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute(ROLLUPS_SQL)
        await conn.execute("ANALYZE analytics.transaction_facts; ANALYZE analytics.daily_payments")
        rollups_s = time.perf_counter() - started
        rows = await conn.fetchval("SELECT count(*) FROM analytics.daily_payments")
        truth = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(amount) FILTER (WHERE status IN "
            "('completed', 'partially_refunded', 'refunded')), 0) AS gross FROM analytics.transaction_facts")
        return {"facts_s": round(facts_s, 1), "rollups_s": round(rollups_s, 1), "rollup_rows": rows,
                "facts": truth["n"], "gross": str(truth["gross"])}
    finally:
        await conn.close()


async def time_dashboards(base: str, barbers: int, requests: int, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    admin = {"Authorization": f"Bearer {issue_token(SECRET, 1000, 'admin')}"}
    year = {"from": str(YEAR_START), "to": str(YEAR_END)}
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(base_url=base) as http:
        async def one(params: dict) -> tuple[float, dict]:
            started = time.perf_counter()
            async with http.get("/api/v1/unified-payment-analytics/dashboard", headers=admin, params=params) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            return time.perf_counter() - started, body

        for _ in range(20):  # warm up: connections, caches, plans
            await one({**year, "barber_id": rnd.randint(1, barbers)})
            await one(year)
        for name, params in (("one_barber", lambda: {**year, "barber_id": rnd.randint(1, barbers)}),
                             ("all_barbers", lambda: year)):
            latencies = []
            for _ in range(requests):
                elapsed, body = await one(params())
                latencies.append(elapsed)
            out[name] = ms(latencies)
        _, everything = await one(year)
        out["all_barbers_totals"] = everything["totals"]
    return out


def dashboard_bench(args: argparse.Namespace) -> dict[str, Any]:
    with Scratch(args.server, args.nats_url) as scratch:
        print(f"generating {args.transactions:,} transactions of {args.barbers:,} barbers over a year ...")
        data = asyncio.run(generate(scratch.dsn, args.transactions, args.barbers, 0.42))
        print(data)
        context, base = scratch.service(ROOT / ".run" / "analytics-bench-dashboard.log")
        with context:
            timings = asyncio.run(time_dashboards(base, args.barbers, args.requests, 7))
    totals = timings.pop("all_barbers_totals")
    checked = totals["transaction_count"] == data["facts"] and Decimal(totals["gross_volume"]) == Decimal(
        data["gross"])
    return {"transactions": args.transactions, "barbers": args.barbers, "range_days": 365, **data, **timings,
            "all_barbers_totals_match_facts": checked}


# ---- consumer throughput ------------------------------------------------------------------------------

def bench_events(n: int, seed: int) -> list:
    rnd = random.Random(seed)
    events = []
    at = datetime(2026, 11, 1, tzinfo=UTC)
    tx = 0
    while len(events) < n:
        tx += 1
        amount = Decimal(rnd.randint(1500, 25000)).scaleb(-2)
        base = dict(transaction_id=f"cons-{seed}-{tx}", barber_id=1 + tx % 1000, appointment_id=tx, client_id=tx % 300,
                    payment_type=rnd.choice(["centralized", "external"]), processor="stripe", connection_id=None,
                    external_transaction_id=None, amount=amount, currency="USD", commission_rate=Decimal("0.15"),
                    commission_amount=(amount * Decimal("0.15")).quantize(Decimal("0.01")),
                    processor_fee=Decimal("0.75"), processed_at=at + timedelta(minutes=tx))
        events.append(new_event(TransactionRecorded(**base, refunded_amount=Decimal(0), status="pending", sequence=1)))
        final = "failed" if rnd.random() < 0.08 else "completed"
        events.append(new_event(TransactionRecorded(**base, refunded_amount=Decimal(0), status=final, sequence=2)))
        if final == "completed" and rnd.random() < 0.1:
            events.append(new_event(TransactionRecorded(**base, refunded_amount=amount, status="refunded",
                                                        sequence=3)))
    return events[:n]


async def publish_all(nats_url: str, stream: str, prefix: str, events: list) -> float:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js, stream, prefix)
    started = time.perf_counter()
    for chunk in range(0, len(events), 500):
        await asyncio.gather(*(js.publish(prefix + e.event_type, encode_event(e),
                                          headers={"Nats-Msg-Id": str(e.event_id)})
                               for e in events[chunk:chunk + 500]))
    elapsed = time.perf_counter() - started
    await nc.close()
    return elapsed


async def wait_applied(dsn: str, n: int, timeout: float) -> tuple[float, float]:
    """Seconds until the first and the last of n events were applied (from the call)."""
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    first = None
    try:
        while time.perf_counter() - started < timeout:
            done = await conn.fetchval("SELECT count(*) FROM analytics.processed_events "
                                       "WHERE consumer = 'analytics-transactions'")
            if done and first is None:
                first = time.perf_counter() - started
            if done >= n:
                return first or 0.0, time.perf_counter() - started
            await asyncio.sleep(0.1)
        raise TimeoutError(f"only {done} of {n} events applied in {timeout} s")
    finally:
        await conn.close()


def consumer_bench(args: argparse.Namespace) -> dict[str, Any]:
    events = bench_events(args.events, 11)
    with Scratch(args.server, args.nats_url) as scratch:
        published_s = asyncio.run(publish_all(args.nats_url, scratch.stream, scratch.prefix, events))
        context, _ = scratch.service(ROOT / ".run" / "analytics-bench-consumer.log")
        with context:
            first, last = asyncio.run(wait_applied(scratch.dsn, len(events), timeout=600))
    return {"events": len(events), "published_s": round(published_s, 1), "apply_s": round(last - first, 2),
            "events_per_s": round(len(events) / (last - first), 1)}


# ---- lag at a steady rate, against make run ----------------------------------------------------------------

async def open_loop(rate: float, duration: float, send) -> float:
    """Start `send(n)` on a fixed timetable (n / rate seconds), whatever the answers take; wait for
    all of them; return how long sending took."""
    tasks, start = [], time.perf_counter()
    for n, offset in enumerate(send_offsets(rate, duration)):
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(n)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


async def lag_run(args: argparse.Namespace) -> dict[str, Any]:
    secret = pick_jwt_secret(args.jwt_secret)
    if not secret:
        raise SystemExit("no JWT secret: pass --jwt-secret, or run `make run` first (it records one)")
    database_url, _ = pick_database_url(args.database_url)
    admin = {"Authorization": f"Bearer {issue_token(secret, 1000, 'admin')}"}
    barbers = list(range(args.barber_id_start, args.barber_id_start + args.barbers))
    hp = "/api/v1/hybrid-payments"
    paid: list[str] = []
    errors: dict[str, int] = {}
    latencies: list[float] = []
    async with aiohttp.ClientSession(base_url=args.router_url) as http:
        for b in barbers:
            async with http.put(f"{hp}/config/{b}", headers=admin, json={
                    "payment_mode": "centralized", "connect_account_id": f"acct_1Bench{b}"}) as resp:
                assert resp.status == 200, await resp.text()
        tokens = {b: {"Authorization": f"Bearer {issue_token(secret, b, 'barber')}"} for b in barbers}

        async def pay(n: int) -> None:
            b = barbers[n % len(barbers)]
            started = time.perf_counter()
            try:
                async with http.post(f"{hp}/process", headers=tokens[b], json={
                        "appointment_id": n + 1, "amount": f"{20 + n % 80}.00",
                        "payment_method": "pm_card_visa"}) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status == 200:
                        paid.append(body["transaction_id"])
                        latencies.append(time.perf_counter() - started)
                    else:
                        kind = f"{resp.status} {body.get('code') if isinstance(body, dict) else ''}".strip()
                        errors[kind] = errors.get(kind, 0) + 1
            except aiohttp.ClientError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        sent_s = await open_loop(args.rate, args.duration, pay)
    lags = await applied_lags(database_url.replace("postgresql+asyncpg://", "postgresql://"), paid, "completed")
    return {"mode": "make run, payments through the router", "rate": args.rate, "duration_s": args.duration,
            "payments": len(paid), "errors": errors, "achieved_per_s": round(len(paid) / sent_s, 1),
            "process_latency": ms(latencies), "event_lag": ms(lags)}


async def synthetic_lag(scratch: Scratch, rate: float, duration: float) -> dict[str, Any]:
    from services.router.tables import metadata as producer_tables
    from shared.config import BaseSettings
    from shared.service import ServiceRuntime

    producer = ServiceRuntime(settings=BaseSettings(
        service_name="bench-producer", database_url=scratch.url, nats_url=scratch.nats_url,
        event_stream=scratch.stream, event_subject_prefix=scratch.prefix, jwt_secret=SECRET), metadata=producer_tables)
    await producer.start()
    ids: list[str] = []
    commit_ms: list[float] = []
    try:
        async def pay(n: int) -> None:
            amount = Decimal(2000 + n % 8000).scaleb(-2)
            payload = TransactionRecorded(
                transaction_id=f"lag-{n}", barber_id=1 + n % 100, appointment_id=n + 1, client_id=n % 40,
                payment_type="centralized", processor="stripe", connection_id=None, external_transaction_id=None,
                amount=amount, refunded_amount=Decimal(0), currency="USD", status="completed",
                commission_rate=Decimal("0.20"), commission_amount=(amount / 5).quantize(Decimal("0.01")),
                processor_fee=Decimal("0.88"), processed_at=datetime.now(UTC), sequence=1)
            started = time.perf_counter()
            async with producer.uow() as uow:
                uow.emit(payload)
                await uow.commit()
            commit_ms.append(time.perf_counter() - started)
            ids.append(f"lag-{n}")

        sent_s = await open_loop(rate, duration, pay)
        lags = await applied_lags(scratch.dsn, ids, "completed")
    finally:
        await producer.stop()
    return {"mode": "synthetic producer", "rate": rate, "duration_s": duration, "payments": len(ids),
            "achieved_per_s": round(len(ids) / sent_s, 1), "producer_commit": ms(commit_ms), "event_lag": ms(lags)}


async def applied_lags(dsn: str, ids: list[str], status: str, timeout: float = 120) -> list[float]:
    """Per transaction: analytics applied it (`updated_at`) minus the producer wrote it (`event_at`)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch("SELECT extract(epoch FROM updated_at - event_at) AS lag, status "
                                    "FROM analytics.transaction_facts WHERE transaction_id = ANY($1::text[])", ids)
            if len(rows) == len(ids) and all(r["status"] == status for r in rows):
                return [float(r["lag"]) for r in rows]
            if time.monotonic() > deadline:
                raise SystemExit(f"analytics applied {len(rows)} of {len(ids)} payments in {timeout} s")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def synthetic_lag_bench(args: argparse.Namespace) -> dict[str, Any]:
    with Scratch(args.server, args.nats_url) as scratch:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(upgrade, "router", scratch.url).result()  # the producer's outbox
        context, _ = scratch.service(ROOT / ".run" / "analytics-bench-lag.log")
        with context:
            return asyncio.run(synthetic_lag(scratch, args.rate, args.duration))


# ---- the command line ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.analytics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("POSTGRES_URL",
                                                           "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    sub = parser.add_subparsers(dest="bench", required=True)
    d = sub.add_parser("dashboard")
    d.add_argument("--transactions", type=int, default=1_000_000)
    d.add_argument("--barbers", type=int, default=5_000)
    d.add_argument("--requests", type=int, default=300)
    c = sub.add_parser("consumer")
    c.add_argument("--events", type=int, default=20_000)
    lag = sub.add_parser("lag")
    lag.add_argument("--router-url", default="http://127.0.0.1:8001")
    lag.add_argument("--database-url")
    lag.add_argument("--jwt-secret")
    lag.add_argument("--rate", type=float, default=100.0)
    lag.add_argument("--duration", type=float, default=30.0)
    lag.add_argument("--barbers", type=int, default=100)
    lag.add_argument("--barber-id-start", type=int, default=990_001)
    lag.add_argument("--synthetic", action="store_true", help="a producer of its own on a scratch database")
    args = parser.parse_args(argv)
    if args.bench == "dashboard":
        save("dashboard", dashboard_bench(args))
    elif args.bench == "consumer":
        save("consumer", consumer_bench(args))
    elif args.synthetic:
        save("lag-synthetic", synthetic_lag_bench(args))
    else:
        save("lag", asyncio.run(lag_run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
