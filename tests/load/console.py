"""Benchmark of the console's heaviest page (a figure, not a test; see services/console/README.md):
the barber's dashboard over a year of 100,000 payments, loaded through the gateway of `make run`.

    make run                                   # in another terminal first
    .venv/bin/python -m tests.load.console     # seeds once (a legacy import), then measures

It seeds one barber with `--payments` completed payments spread evenly over the last 365 days, the
way an operator would bring such a history in: a BookedBarber V2 database (written here) imported
by `python -m tools.legacy_import` into the running suite (whose analytics applies it), and waits
until analytics counts them all. Then it loads `/console/me?from=<a year ago>&to=<today>` (the
dashboard and its charts: two API calls and the render) `--requests` times at `--concurrency`, then
the Six Figure panel the page loads after it (`/console/me/insights`, half a year of payments), and
prints p50/p95/p99 of each against the target (the page's p95 < 150 ms). Results go to
`.run/console-bench.json`. A second run finds the history in place and only measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg

from shared.auth import issue_token
from shared.config import libpq_url
from tests import legacy_db
from tests.load.stats import summarize
from tools.devinfra import create_database

ROOT = Path(__file__).resolve().parents[2]
BARBER = 770_002
TARGET_P95_MS = 150.0


def history(payments: int, *, now: datetime) -> legacy_db.LegacyData:
    """One barber's completed payments, evenly over the year of UTC days that ends today (the
    dashboard's range below; naive UTC, as V2 kept them)."""
    data = legacy_db.LegacyData()
    data.users.append((BARBER, "bench-barber@example.test", "barber", Decimal("0.20"), f"acct_bench{BARBER}"))
    data.users += [(BARBER + 1 + c, f"client{c}@example.test", "client", None, None) for c in range(200)]
    start = datetime.combine(now.date() - timedelta(days=364), datetime.min.time(), UTC) + timedelta(minutes=1)
    step = (now - timedelta(minutes=1) - start) / payments
    for i in range(payments):
        pid = BARBER * 1000 + i
        client = BARBER + 1 + i % 200
        data.appointments.append((pid, BARBER, client, None, None))
        amount = Decimal(1500 + (i * 37) % 10500) / 100
        created = legacy_db.naive_utc(start + step * i)
        data.payments.append((pid, BARBER, pid, amount, "completed", f"pi_bench{pid:09d}", created))
    return data


async def counted(http: aiohttp.ClientSession, gateway: str, admin: str, since: date, until: date) -> int:
    async with http.get(f"{gateway}/api/v1/unified-payment-analytics/dashboard",
                        params={"barber_id": BARBER, "from": since.isoformat(), "to": until.isoformat()},
                        headers={"Authorization": f"Bearer {admin}"}) as resp:
        body = await resp.json()
        return body["totals"]["transaction_count"] if resp.status == 200 else -1


def seed(state: dict, payments: int) -> None:
    server = libpq_url(state["database_url"]).rsplit("/", 1)[0] + "/postgres"  # the suite's Postgres
    name = "bench_console_legacy"
    create_database(server, name)
    legacy_dsn = server.rsplit("/", 1)[0] + f"/{name}"

    async def write() -> None:
        conn = await asyncpg.connect(legacy_dsn)
        try:
            await conn.execute("DROP TABLE IF EXISTS payments, appointments, users")
        finally:
            await conn.close()
        await legacy_db.write(legacy_dsn, history(payments, now=datetime.now(UTC)))

    asyncio.run(write())
    env = {**os.environ, "DATABASE_URL": state["database_url"], "NATS_URL": state["nats_url"],
           "EVENT_STREAM": state["event_stream"], "EVENT_SUBJECT_PREFIX": state["event_subject_prefix"],
           "JWT_SECRET": state["jwt_secret"], "LOG_LEVEL": "warning", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "tools.legacy_import", "--legacy-dsn", legacy_dsn,
                           "--analytics-timeout", "0"], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the import failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


async def measure(state: dict, args: argparse.Namespace) -> dict:
    gateway = state["urls"]["gateway"]
    admin = issue_token(state["jwt_secret"], 1000, "admin")
    barber = issue_token(state["jwt_secret"], BARBER, "barber", ttl_seconds=3600)
    until = datetime.now(UTC).date()
    since = until - timedelta(days=364)
    async with aiohttp.ClientSession() as http:
        have = await counted(http, gateway, admin, since, until)
        if have < args.payments:
            await asyncio.to_thread(seed, state, args.payments)
            deadline = time.monotonic() + args.timeout
            while (have := await counted(http, gateway, admin, since, until)) < args.payments:
                if time.monotonic() > deadline:
                    raise SystemExit(f"analytics counts {have} of {args.payments} payments after {args.timeout} s")
                await asyncio.sleep(1)
        url = f"{gateway}/console/me?from={since.isoformat()}&to={until.isoformat()}"
        cookies = {"hp_console": barber}
        async with http.get(url, cookies=cookies) as resp:  # warm-up, and a check the page is the real one
            page = await resp.text()
            if resp.status != 200 or "chart-data" not in page:
                raise SystemExit(f"{url} answered {resp.status}:\n{page[:2000]}")
        page_summary = await _load(http, url, cookies, args, {})
        panel = await _load(http, f"{gateway}/console/me/insights", cookies, args, {"HX-Request": "true"})
    p95 = page_summary["latency_ms"]["p95"]
    return {"payments_in_range": have, "concurrency": args.concurrency, "page": page_summary,
            "insights_panel": panel, "target_p95_ms": TARGET_P95_MS,
            "pass": p95 < TARGET_P95_MS and not page_summary["errors"] and not panel["errors"]}


async def _load(http: aiohttp.ClientSession, url: str, cookies: dict, args: argparse.Namespace,
                headers: dict[str, str]) -> dict:
    """`args.requests` loads of `url` by `args.concurrency` workers: the latency summary."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    queue = iter(range(args.requests))

    async def worker() -> None:
        for _ in queue:
            started = time.perf_counter()
            async with http.get(url, cookies=cookies, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return summarize(latencies, len(latencies) - sum(errors.values()), errors, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for analytics to apply the history")
    parser.add_argument("--run-json", default=str(ROOT / ".run" / "run.json"))
    args = parser.parse_args(argv)
    state = json.loads(Path(args.run_json).read_text())
    result = asyncio.run(measure(state, args))
    out = ROOT / ".run" / "console-bench.json"
    out.write_text(json.dumps(result, indent=2))
    for name in ("page", "insights_panel"):
        latency = result[name]["latency_ms"]
        print(f"{name:>15}: p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms, "
              f"{result[name]['throughput_rps']} loads/s, {result[name]['errors']} errors")
    print(f"payments in the range: {result['payments_in_range']}; concurrency {result['concurrency']}; "
          f"page p95 target < {TARGET_P95_MS} ms: {'PASS' if result['pass'] else 'FAIL'}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
