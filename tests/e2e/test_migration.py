"""The migration from BookedBarber V2, end to end, as the runbook tells an operator to do it.

A generated legacy database with awkward rows (tests/legacy_db.py) and an empty suite database ->
backup -> migrate -> `make run` (the whole suite as real processes) -> import, killed midway and
resumed -> import again (nothing changes) -> validate -> barbers switched to decentralized and hybrid
pay on Square, PayPal and Stripe, and paid -> every barber's dashboard equals its legacy history plus
its new payments, both computed by this test (the legacy part from the generated rows, the new part
from what the gateway answered) -> rollback of one barber -> its next payment is centralized ->
validate passes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import aiohttp
import asyncpg
import nats
import pytest

from shared.auth import issue_token
from shared.config import libpq_url
from tests import legacy_db
from tests.conftest import ROOT, RUN_ID
from tests.e2e.ledger import AN, HP, Barber, call, cents, money, pay, set_up
from tests.run_support import make_run
from tests.support import eventually, scratch_database

BARBERS, PAYMENTS = 12, 2500
LEGACY_START = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(days=40)


@pytest.fixture(scope="module")
def legacy(infra):
    data = legacy_db.generate(barbers=BARBERS, payments=PAYMENTS, seed=23, start=LEGACY_START)
    with scratch_database(infra, f"hp_e2e_legacy_{RUN_ID}", migrated=False) as url:
        dsn = libpq_url(url)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, legacy_db.write(dsn, data)).result()
        yield dsn, data


@pytest.fixture(scope="module")
def env(infra, service_env):
    """The suite's environment for this migration: an empty database and a stream of its own."""
    stream = f"PAYMENTS_M{RUN_ID}"
    with scratch_database(infra, f"hp_e2e_migration_{RUN_ID}", migrated=False) as url:  # make migrate's job
        yield {**service_env, "DATABASE_URL": url, "EVENT_STREAM": stream, "EVENT_SUBJECT_PREFIX": f"m{RUN_ID}."}

    async def drop_stream():
        nc = await nats.connect(infra.nats_url)
        try:
            await nc.jetstream().delete_stream(stream)
        except Exception:
            pass
        await nc.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, drop_stream()).result()


def tool(env: dict, *args: str, wait: bool = True):
    command = [sys.executable, "-m", *args]
    full_env = {**os.environ, **env, "COLUMNS": "200"}
    if not wait:
        return subprocess.Popen(command, env=full_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(command, env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def legacy_commission_kept(data: legacy_db.LegacyData) -> dict[int, int]:
    """In cents, by hand: a completed payment keeps amount x rate (half-up), a refunded one nothing."""
    rates = data.barber_rates(Decimal("0.20"))
    kept: dict[int, int] = defaultdict(int)
    for _, barber_id, _, amount, status, _, _ in data.payments:
        if (status or "").lower() == "completed" and amount > 0 and barber_id in rates:
            kept[barber_id] += int((amount * rates[barber_id]).quantize(Decimal("0.01"), ROUND_HALF_UP) * 100)
    return kept


def new_barbers() -> list[Barber]:
    """Four legacy barbers after the migration: one stays centralized, three move to their own processors."""
    return [
        Barber(1, "centralized", None, "0.20", [("45.00", True, None), ("80.00", True, "30.00"),
                                                ("25.00", False, None)]),
        Barber(2, "decentralized", "square", "0.15", [("200.00", True, None), ("99.99", True, "33.33"),
                                                      ("12.00", False, None)]),
        Barber(3, "decentralized", "paypal", "0.125", [("150.00", True, None), ("75.50", True, "20.00")]),
        # Hybrid: below 50.00 on the platform, from 50.00 on its own Stripe account.
        Barber(4, "hybrid", "stripe", "0.10", [("30.00", True, None), ("70.00", True, None),
                                               ("90.00", True, "45.00"), ("20.00", False, None)]),
    ]


async def test_migrating_from_bookedbarber_v2(legacy, env, tmp_path_factory):
    dsn, data = legacy
    tmp = tmp_path_factory.mktemp("migration")

    # Backup first: the legacy database (the suite's is still empty), proved restorable.
    backup = tool(env, "tools.backup", "backup", "--out", str(tmp / "backups"), "--legacy-dsn", dsn)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert "legacy backup:" in backup.stdout and "restore proved" in backup.stdout

    migrate = tool(env, "tools.migrate", "upgrade")
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    with make_run(env, tmp) as suite:
        urls, secret = suite.state["urls"], suite.state["jwt_secret"]
        ops = {**env, "JWT_SECRET": secret}
        await import_killed_and_resumed(ops, dsn, data)

        again = tool(ops, "tools.legacy_import", "--legacy-dsn", dsn, "--analytics-timeout", "60")
        assert again.returncode == 0, again.stdout
        assert "written in this run (new or changed) │ 0" in again.stdout, again.stdout

        validate_args = ("--router-url", urls["router"], "--external-url", urls["external"],
                         "--collections-url", urls["collections"], "--analytics-url", urls["analytics"])
        first = tool(ops, "tools.validate", *validate_args)
        assert first.returncode == 0, first.stdout + first.stderr

        admin = {"Authorization": f"Bearer {issue_token(secret, 1000, 'admin')}"}
        team = new_barbers()
        async with aiohttp.ClientSession(base_url=urls["gateway"]) as http:
            for b in team:
                await set_up(http, admin, b, secret)
                await pay(http, b, secret)
            await dashboards_show_legacy_plus_new(http, admin, data, team)

            rolled = tool(ops, "tools.rollback", "--barber", "2", "--router-url", urls["router"])
            assert rolled.returncode == 0, rolled.stdout + rolled.stderr
            assert "rolled back" in rolled.stdout
            own = {"Authorization": f"Bearer {issue_token(secret, 2, 'barber')}", "Idempotency-Key": "after-rollback"}
            status, paid = await call(http, "POST", f"{HP}/process", own, {
                "appointment_id": 900, "amount": "60.00", "payment_method": "pm_card_visa"})
            assert status == 200 and paid["payment_type"] == "centralized" and paid["processor"] == "stripe", paid

        last = tool(ops, "tools.validate", *validate_args)
        assert last.returncode == 0, last.stdout + last.stderr


async def import_killed_and_resumed(env: dict, dsn: str, data: legacy_db.LegacyData) -> None:
    proc = tool(env, "tools.legacy_import", "--legacy-dsn", dsn, "--batch-size", "50", wait=False)
    conn = await asyncpg.connect(libpq_url(env["DATABASE_URL"]))
    try:
        deadline = time.monotonic() + 60
        while not (await conn.fetchval("SELECT max(checkpoint) FROM router.legacy_imports") or 0) >= 500:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the import made no progress"
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert await conn.fetchval("SELECT status FROM router.legacy_imports") == "running"
    finally:
        await conn.close()
    resumed = tool(env, "tools.legacy_import", "--legacy-dsn", dsn, "--analytics-timeout", "120")
    assert resumed.returncode == 0, resumed.stdout
    assert "resuming import run 1" in resumed.stdout and "analytics" in resumed.stdout
    assert "caught up" in resumed.stdout and "every barber's counts and sums match" in resumed.stdout


async def dashboards_show_legacy_plus_new(http, admin: dict, data: legacy_db.LegacyData, team: list[Barber]) -> None:
    expected_legacy = data.expected()
    kept = legacy_commission_kept(data)
    new = {b.id: b for b in team}
    today = datetime.now(UTC).date()
    days = {"from": str(LEGACY_START.date() - timedelta(days=1)), "to": str(today + timedelta(days=1))}
    for barber_id, (count, amount, refunded) in sorted(expected_legacy.items()):
        books = new[barber_id].books if barber_id in new else None
        want = {
            "transaction_count": count + (books.payments if books else 0),
            "completed_count": count + (books.completed if books else 0),
            "gross_volume": money(cents(str(amount)) + (books.gross if books else 0)),
            "refunded_amount": money(cents(str(refunded)) + (books.refunded if books else 0)),
            "commission": money(kept[barber_id] + (books.commission_kept if books else 0)),
        }

        async def totals() -> dict:
            status, board = await call(http, "GET", f"{AN}/dashboard", admin, params={"barber_id": barber_id, **days})
            assert status == 200, board
            return {k: board["totals"][k] for k in want}

        async def shown() -> bool:
            return await totals() == want

        try:
            await eventually(shown, timeout=60, interval=0.5)
        except AssertionError:
            raise AssertionError(f"barber {barber_id}: expected {want}, analytics shows {await totals()}") from None
    # And the all-barbers view is the sum of the same parts.
    status, board = await call(http, "GET", f"{AN}/dashboard", admin, params=days)
    assert status == 200
    assert cents(board["totals"]["gross_volume"]) == sum(cents(str(a)) for _, a, _ in expected_legacy.values()) + sum(
        b.books.gross for b in team)

