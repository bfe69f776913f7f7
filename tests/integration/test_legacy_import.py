"""The legacy import (`tools.legacy_import`) as operators run it: a real process against a generated
BookedBarber V2 database and a suite database of its own. What must come over is computed by the
test from the generated rows (`tests.legacy_db`), never with the import's code.

Analytics' side of the reconciliation (the services running) is in tests/e2e/test_migration.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal

import asyncpg
import msgspec
import pytest

from shared.config import libpq_url
from shared.events import TransactionImported, TransactionRecorded, decode_event
from tests import legacy_db
from tests.conftest import ROOT, RUN_ID
from tests.support import scratch_database

BARBERS, PAYMENTS = 40, 6000


@pytest.fixture(scope="module")
def legacy(infra):
    data = legacy_db.generate(barbers=BARBERS, payments=PAYMENTS, seed=11)
    with scratch_database(infra, f"hp_legacy_{RUN_ID}", migrated=False) as url:
        dsn = libpq_url(url)
        with ThreadPoolExecutor(1) as pool:  # off the test loop's thread
            pool.submit(asyncio.run, legacy_db.write(dsn, data)).result()
        yield dsn, data


@pytest.fixture
def suite_db(infra):
    """A suite database of its own at head: the import configures barbers 1..n, whom other tests use."""
    with scratch_database(infra, f"hp_import_{RUN_ID}_{uuid.uuid4().hex[:6]}") as url:
        yield libpq_url(url)


def run_import(legacy_dsn: str, suite_url: str, *extra: str, wait: bool = True):
    env = {**os.environ, "DATABASE_URL": suite_url, "COLUMNS": "160"}
    args = [sys.executable, "-m", "tools.legacy_import", "--legacy-dsn", legacy_dsn, "--analytics-timeout", "0",
            *extra]
    if not wait:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


async def fetch(url: str, query: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def imported_by_barber(suite: str) -> dict[int, tuple[int, Decimal, Decimal]]:
    rows = await fetch(suite, "SELECT barber_id, count(*), sum(amount), sum(refunded_amount) "
                              "FROM router.legacy_payments GROUP BY barber_id")
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def legacy_events(suite: str) -> list[TransactionRecorded]:
    rows = await fetch(suite, "SELECT body FROM router.outbox WHERE event_type = 'transaction.imported' ORDER BY id")
    batches = [decode_event(r["body"]).decode(TransactionImported).transactions for r in rows]
    assert all(1 <= len(batch) <= 500 for batch in batches)
    assert not await fetch(suite, "SELECT 1 FROM router.outbox WHERE event_type = 'transaction.recorded'")
    return [tx for batch in batches for tx in batch]


async def test_import_carries_over_exactly_what_it_should(legacy, suite_db):
    dsn, data = legacy
    done = run_import(dsn, suite_db)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every barber's counts and sums match" in done.stdout

    expected = data.expected()
    assert await imported_by_barber(suite_db) == expected
    # Every imported payment once, as the contract's transaction.recorded payload (source legacy),
    # carried 500 at most per transaction.imported event.
    events = await legacy_events(suite_db)
    assert len(events) == sum(c for c, _, _ in expected.values())
    assert {e.source for e in events} == {"legacy"} and {e.payment_type for e in events} == {"centralized"}
    by_id = {p[0]: p for p in data.payments}
    clients = data.client_of()
    rates = data.barber_rates(Decimal("0.20"))
    for event in events[:500]:
        legacy_id = int(event.external_transaction_id.removeprefix("pi_legacy"))
        _, barber_id, appointment_id, amount, status, _, created = by_id[legacy_id]
        assert (event.barber_id, event.amount, event.status) == (barber_id, amount, status.lower())
        assert event.processed_at == created.replace(tzinfo=UTC)
        assert event.client_id == (clients.get(appointment_id) if appointment_id else None)
        assert event.commission_amount == (amount * rates[barber_id]).quantize(Decimal("0.01"), ROUND_HALF_UP)
        assert event.refunded_amount == (amount if status.lower() == "refunded" else 0)

    configs = {r["barber_id"]: r for r in await fetch(suite_db, "SELECT * FROM router.hybrid_payment_configs")}
    assert set(configs) == set(rates)
    assert all(c["payment_mode"] == "centralized" and c["fallback_enabled"] for c in configs.values())
    users = {u[0]: u for u in data.users}
    for barber_id, config in configs.items():
        assert config["commission_rate"] == rates[barber_id]
        assert config["connect_account_id"] == users[barber_id][4]
    assert len(await fetch(suite_db, "SELECT 1 FROM router.outbox WHERE event_type = 'config.changed'")) == len(rates)

    # Every legacy payment not carried over is listed with its reason, none dropped silently.
    skipped = Counter(r["reason"] for r in await fetch(
        suite_db, "SELECT reason FROM router.legacy_import_skips WHERE legacy_table = 'payments'"))
    assert sum(skipped.values()) + len(events) == PAYMENTS
    assert {"status_pending", "status_failed", "zero_amount", "negative_amount", "unknown_barber"} <= set(skipped)
    assert "status_pending" in done.stdout and "users.invalid_commission_rate" in done.stdout

    # The same database again: the same rows, no new event, a clean reconciliation.
    before = await fetch(suite_db, "SELECT * FROM router.legacy_payments ORDER BY legacy_id")
    again = run_import(dsn, suite_db)
    assert again.returncode == 0, again.stdout + again.stderr
    assert await fetch(suite_db, "SELECT * FROM router.legacy_payments ORDER BY legacy_id") == before
    assert len(await legacy_events(suite_db)) == len(events)
    runs = await fetch(suite_db, "SELECT status FROM router.legacy_imports ORDER BY id")
    assert [r["status"] for r in runs] == ["reconciled", "reconciled"]


async def test_a_killed_import_resumes_and_finishes_exactly(legacy, suite_db):
    dsn, data = legacy
    proc = run_import(dsn, suite_db, "--batch-size", "50", wait=False)
    conn = await asyncpg.connect(suite_db)
    try:
        deadline = time.monotonic() + 60
        while True:  # kill it once some batches, but not all, have committed
            checkpoint = await conn.fetchval("SELECT max(checkpoint) FROM router.legacy_imports")
            if checkpoint and checkpoint >= 500:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the import made no progress"
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = await conn.fetchval("SELECT count(*) FROM router.legacy_payments")
        run = await conn.fetchrow("SELECT status, checkpoint FROM router.legacy_imports")
    finally:
        await conn.close()
    assert run["status"] == "running" and run["checkpoint"] < PAYMENTS, "the import was not killed midway"
    assert 0 < partial

    resumed = run_import(dsn, suite_db)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming import run 1 after legacy payment {run['checkpoint']}" in resumed.stdout
    assert await imported_by_barber(suite_db) == data.expected()
    events = await legacy_events(suite_db)
    per_transaction = Counter(e.transaction_id for e in events)
    assert len(per_transaction) == sum(c for c, _, _ in data.expected().values())
    assert set(per_transaction.values()) == {1}, "an event was written twice"
    assert await fetch(suite_db, "SELECT count(*) FROM router.legacy_imports") == [(1,)]


async def test_changes_in_the_legacy_database_are_carried_and_a_difference_fails_loudly(legacy, suite_db, infra):
    dsn, data = legacy
    assert run_import(dsn, suite_db).returncode == 0
    # V2 kept running during the migration: a payment was refunded and a pending one completed.
    completed = next(p for p in data.payments if p[4] == "completed" and p[3] > 0 and p[1] <= BARBERS)
    pending = next(p for p in data.payments if p[4] == "pending" and p[3] > 0 and p[1] <= BARBERS)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE payments SET status = 'refunded' WHERE id = $1", completed[0])
        await conn.execute("UPDATE payments SET status = 'completed' WHERE id = $1", pending[0])
        rerun = run_import(dsn, suite_db)
        assert rerun.returncode == 0, rerun.stdout
        rows = {r["legacy_id"]: r for r in await fetch(
            suite_db, "SELECT legacy_id, status, refunded_amount, version FROM router.legacy_payments "
                      "WHERE legacy_id = any($1::bigint[])", [completed[0], pending[0]])}
        assert (rows[completed[0]]["status"], rows[completed[0]]["refunded_amount"], rows[completed[0]]["version"]) \
            == ("refunded", completed[3], 2)
        assert rows[pending[0]]["status"] == "completed"
        events = [e for e in await legacy_events(suite_db)
                  if e.external_transaction_id == f"pi_legacy{completed[0]:09d}"]
        assert [(e.status, e.sequence) for e in events] == [("completed", 1), ("refunded", 2)]

        # A barber demoted in V2 after the import: the suite holds payments the legacy side no longer
        # counts. The import cannot mend that; the reconciliation must say so and fail.
        demoted = completed[1]
        await conn.execute("UPDATE users SET role = 'client' WHERE id = $1", demoted)
        failed = run_import(dsn, suite_db)
    finally:
        await conn.execute("UPDATE users SET role = 'barber' WHERE id = $1", demoted)
        await conn.execute("UPDATE payments SET status = 'completed' WHERE id = $1", completed[0])
        await conn.execute("UPDATE payments SET status = 'pending' WHERE id = $1", pending[0])
        await conn.close()
    assert failed.returncode == 1, failed.stdout
    assert "reconciliation FAILED" in failed.stdout
    assert f"barber {demoted}: count legacy 0 vs router" in failed.stdout
    assert "payments: 6000 in the legacy database" in failed.stdout
    status = await fetch(suite_db, "SELECT status, report FROM router.legacy_imports ORDER BY id DESC LIMIT 1")
    assert status[0]["status"] == "differences"
    assert msgspec.json.decode(status[0]["report"])["differences"]


async def test_one_import_at_a_time(legacy, suite_db):
    from tools.legacy_import import IMPORT_LOCK

    dsn, _ = legacy
    holder = await asyncpg.connect(suite_db)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", IMPORT_LOCK)
        second = run_import(dsn, suite_db)
    finally:
        await holder.close()
    assert second.returncode == 2 and "another import is running" in second.stdout
    assert await fetch(suite_db, "SELECT count(*) FROM router.legacy_imports") == [(0,)]


def test_bad_input_is_refused_with_a_message(suite_db, infra, tmp_path):
    nowhere = run_import("postgresql://postgres@127.0.0.1:1/none", suite_db)
    assert nowhere.returncode == 2 and "cannot connect to the legacy database 127.0.0.1:1/none" in nowhere.stdout
    not_v2 = run_import(suite_db, suite_db)  # a database without users/payments tables
    assert not_v2.returncode == 2 and "no users table" in not_v2.stdout
