"""Benchmark of the legacy import (a figure, not a test; see tests/load/README.md).

    .venv/bin/python -m tests.load.legacy_import                    # 1,000,000 payments, 5,000 barbers
    .venv/bin/python -m tests.load.legacy_import --payments 100000  # smaller

It generates a BookedBarber V2 database (tests/legacy_db.py: the awkward rows included), makes a
scratch suite database at head and a JetStream stream of its own, starts the router (whose outbox
relay publishes what the import writes), collections and analytics (both consume
`transaction.recorded`) as real processes, and runs `python -m tools.legacy_import` against them
as an operator would (its own reconciliation against analytics off: this process times that). It
reports the import's rate (legacy payments read per second, from the import's own timing of its
batches), and how long after the import finished analytics had applied every imported payment (its
legacy rollups count them all). Everything it made is dropped afterwards. Results are printed and
written to `.run/legacy-import-bench.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import nats
from cryptography.fernet import Fernet

from shared.migrations import SERVICES, upgrade
from tests import legacy_db
from tests.support import free_port, running_process
from tools.devinfra import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
SECRET = "legacy-import-bench-secret-0123456789abcdef"


async def drop_stream(nats_url: str, stream: str) -> None:
    nc = await nats.connect(nats_url)
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_stream(stream)
    await nc.close()


async def analytics_applied(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT coalesce(sum(transaction_count), 0) FROM analytics.daily_payments "
                                       "WHERE source = 'legacy' AND barber_id = 0"))
    finally:
        await conn.close()


async def wait_applied(dsn: str, expected: int, timeout: float) -> tuple[float, int]:
    started = time.monotonic()
    seen = 0
    while time.monotonic() - started < timeout:
        seen = await analytics_applied(dsn)
        if seen >= expected:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - started, seen


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    server = args.server
    legacy_name, suite_name = f"hp_bench_legacy_{tag}", f"hp_bench_suite_{tag}"
    base = server.rsplit("/", 1)[0]
    legacy_dsn, suite_dsn = f"{base}/{legacy_name}", f"{base}/{suite_name}"
    stream, prefix = f"PAYMENTS_IMPORT_{tag}", f"import{tag}."
    log_dir = ROOT / ".run"
    log_dir.mkdir(exist_ok=True)
    result: dict[str, Any] = {"payments": args.payments, "barbers": args.barbers, "batch_size": args.batch_size}
    try:
        create_database(server, legacy_name)
        create_database(server, suite_name)
        started = time.monotonic()
        data = legacy_db.generate(barbers=args.barbers, payments=args.payments, seed=5)
        asyncio.run(legacy_db.write(legacy_dsn, data))
        result["legacy_generated_s"] = round(time.monotonic() - started, 1)
        expected = sum(count for count, _, _ in data.expected().values())
        del data
        with ThreadPoolExecutor(1) as pool:
            for service in SERVICES:
                pool.submit(upgrade, service, suite_dsn).result()
        env = {**os.environ, "DATABASE_URL": suite_dsn, "NATS_URL": args.nats_url, "JWT_SECRET": SECRET,
               "EVENT_STREAM": stream, "EVENT_SUBJECT_PREFIX": prefix, "LOG_LEVEL": "warning",
               "CONNECTION_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "STRIPE_SECRET_KEY": "",
               "OUTBOX_POLL_INTERVAL": "0.2"}
        with contextlib.ExitStack() as stack:
            for service in ("router", "collections", "analytics"):
                port = free_port()
                stack.enter_context(running_process(
                    [f"services.{service}"], {**env, "PORT": str(port)}, timeout=60,
                    ready_url=f"http://127.0.0.1:{port}/health/ready", log=log_dir / f"legacy-bench-{service}.log"))
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "tools.legacy_import", "--legacy-dsn", legacy_dsn, "--analytics-timeout", "0",
                 "--batch-size", str(args.batch_size)],
                env={**env, "COLUMNS": "200"}, cwd=ROOT, capture_output=True, text=True)
            wall = time.monotonic() - started
            if done.returncode != 0:
                raise SystemExit(f"the import failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            seconds = float(re.search(r"│ seconds\s+│ ([\d.]+)", done.stdout).group(1))
            result.update(import_s=seconds, import_wall_s=round(wall, 1),
                          payments_per_s=round(args.payments / seconds), imported=expected)
            after, seen = asyncio.run(wait_applied(suite_dsn, expected, args.timeout))
            result.update(analytics_caught_up_after_import_s=round(after, 1), analytics_applied=seen,
                          analytics_caught_up=seen >= expected)
    finally:
        asyncio.run(drop_stream(args.nats_url, stream))
        for name in (legacy_name, suite_name):
            drop_database(server, name)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--barbers", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for analytics to catch up")
    parser.add_argument("--server", default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    result = run(parser.parse_args())
    print(json.dumps(result, indent=2))
    (ROOT / ".run" / "legacy-import-bench.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
