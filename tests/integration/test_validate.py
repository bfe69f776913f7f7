"""`make validate` (`python -m tools.validate`) as an operator runs it, against the four services as real
processes on a database and a stream of this module's own: a healthy suite passes; a dead letter and an
import with differences, a stopped service and a deleted durable consumer each fail, naming what is wrong."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import create_async_engine

from shared.config import normalise_database_url
from shared.migrations import SERVICES
from tests.conftest import ENCRYPTION_KEY, JWT_SECRET, ROOT, RUN_ID
from tests.support import eventually, free_port, scratch_database
from tools import validate as tools_validate


class Suite:
    """The four services as processes (each can be stopped and started again), on their own
    database and stream."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.ports = {name: free_port() for name in SERVICES}
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, *names: str, timeout: float = 45.0) -> None:
        for name in names:  # all at once, then wait for each: they start in parallel
            with open(self.logs / f"{name}.log", "ab") as out:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", f"services.{name}"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                    env={**self.env, "PORT": str(self.ports[name]), "EXTERNAL_SERVICE_URL": self.urls["external"]})
        deadline = time.monotonic() + timeout
        for name in names:
            while not self.ready(name):
                log = (self.logs / f"{name}.log").read_text()[-3000:]
                assert self.procs[name].poll() is None, f"{name} exited:\n{log}"
                assert time.monotonic() < deadline, f"{name} not ready in {timeout} s:\n{log}"
                time.sleep(0.2)

    def ready(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(self.urls[name] + "/health/ready", timeout=1) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, *names: str) -> None:
        procs = [self.procs.pop(name) for name in names]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def suite(infra, tmp_path_factory):
    stream, prefix = f"PAYMENTS_V{RUN_ID}", f"v{RUN_ID}."
    with scratch_database(infra, f"hp_validate_{RUN_ID}") as database_url:
        env = {**os.environ, "DATABASE_URL": database_url, "NATS_URL": infra.nats_url, "JWT_SECRET": JWT_SECRET,
               "CONNECTION_ENCRYPTION_KEYS": ENCRYPTION_KEY, "EVENT_STREAM": stream,
               "EVENT_SUBJECT_PREFIX": prefix, "STRIPE_SECRET_KEY": "", "LOG_LEVEL": "warning",
               "LOG_JSON": "true", "OUTBOX_POLL_INTERVAL": "0.2"}
        running = Suite(env, tmp_path_factory.mktemp("validate"))
        try:
            running.start(*SERVICES)
            yield running
        finally:
            running.stop(*running.procs)
            with ThreadPoolExecutor(1) as pool:
                pool.submit(_delete_stream, infra.nats_url, stream).result()


def _delete_stream(nats_url: str, stream: str) -> None:
    async def delete() -> None:
        nc = await nats.connect(nats_url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(delete())


def validate(suite: Suite) -> tuple[int, list[str]]:
    """The tool as a subprocess, told where everything is by flags (as an operator would)."""
    env = suite.env
    urls = [arg for name, url in suite.urls.items() for arg in (f"--{name}-url", url)]
    done = subprocess.run(
        [sys.executable, "-m", "tools.validate", *urls, "--database-url", env["DATABASE_URL"],
         "--nats-url", env["NATS_URL"], "--stream", env["EVENT_STREAM"], "--subject-prefix",
         env["EVENT_SUBJECT_PREFIX"], "--jwt-secret", JWT_SECRET],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    print(done.stdout + done.stderr)  # shown when a test fails
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith(("PASS ", "FAIL ")) for line in lines), done.stdout + done.stderr
    return done.returncode, lines


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL ")]


async def sql(suite: Suite, statement: str, *args) -> None:
    conn = await asyncpg.connect(suite.env["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


DURABLES = {"router-connections", "external-rates", "collections-accruals", "collections-settings",
            "collections-collecting", "analytics-transactions", "analytics-imports", "analytics-collections-due",
            "analytics-collections-settled"}


def test_a_healthy_suite_passes(suite):
    code, lines = validate(suite)
    assert (code, failures(lines)) == (0, [])
    checks = [line.split(":", 1)[0].split(" ", 1)[1] for line in lines]
    assert {c: checks.count(c) for c in dict.fromkeys(checks)} == {
        "schema": 4, "ready": 4, "endpoints": 4, "route": 1, "stream": 1, "consumers": len(DURABLES),
        "dead-letters": 4, "outbox": 4, "legacy-import": 1}
    # Every consumer the services declare was found by its durable name, read from the code.
    assert {line.split(": ")[1] for line in lines if line.startswith("PASS consumers")} == DURABLES
    assert f"PASS ready: collections ({suite.urls['collections']})" in lines
    assert "PASS legacy-import: no legacy import has run" in lines
    assert any(line.startswith("PASS route: probe barber 2000000000, 1.00 USD: centralized") for line in lines)


async def test_a_dead_letter_and_an_unclean_import_fail(suite):
    await sql(suite, "INSERT INTO analytics.dead_letters (consumer, subject, body, error, attempts) "
                     "VALUES ('analytics-transactions', 'x.transaction.recorded', '\\x00', 'boom', 5)")
    await sql(suite, "INSERT INTO router.legacy_imports (source, status, report) VALUES ('legacy', 'differences', "
                     "$1::jsonb)", '{"differences": ["barber 7: 3 payments in legacy, 2 imported", "barber 9: x"]}')
    try:
        code, lines = await asyncio.to_thread(validate, suite)
        assert code == 1
        assert failures(lines) == [
            "FAIL dead-letters: analytics: 1 dead-lettered event(s) not replayed (analytics-transactions 1): "
            "python -m tools.dead_letters list --service analytics",
            "FAIL legacy-import: run 1 from legacy: reconciliation found 2 difference(s): barber 7: 3 payments in "
            "legacy, 2 imported; barber 9: x",
        ]
        # The latest run counts (in-process, to keep the test short: the command itself ran above).
        engine = create_async_engine(normalise_database_url(suite.env["DATABASE_URL"]))
        try:
            for status, line in [
                    ("imported", "FAIL legacy-import: run 2 from legacy unfinished (imported), run make import again"),
                    ("running", "FAIL legacy-import: run 3 from legacy unfinished (running), run make import again"),
                    ("reconciled", "PASS legacy-import: run 4 from legacy reconciled: no differences")]:
                await sql(suite, "UPDATE router.legacy_imports SET status = 'imported' WHERE status = 'running'")
                await sql(suite, "INSERT INTO router.legacy_imports (source, status) VALUES ('legacy', $1)", status)
                assert (await tools_validate.check_legacy_import(engine)).line == line
        finally:
            await engine.dispose()
    finally:
        await sql(suite, "DELETE FROM analytics.dead_letters")
        await sql(suite, "DELETE FROM router.legacy_imports")


async def test_a_stopped_service_and_a_missing_consumer_fail_by_name(suite, infra):
    """The durable deleted is one of the stopped service's: a running service would put it back only
    when it starts again (its fetch loop does not notice), and this test does not depend on that."""
    stream = suite.env["EVENT_STREAM"]
    suite.stop("collections")
    nc = await nats.connect(infra.nats_url)
    try:
        await nc.jetstream().delete_consumer(stream, "collections-accruals")
        code, lines = await asyncio.to_thread(validate, suite)
        assert code == 1
        assert failures(lines) == [
            f"FAIL ready: collections ({suite.urls['collections']}) not answering: connection refused",
            f"FAIL endpoints: collections ({suite.urls['collections']}) not answering: connection refused",
            f"FAIL consumers: collections-accruals missing from stream {stream} (collections creates it when it "
            "starts)",
        ]
        # Its other durables stay in the stream while it is down.
        assert "PASS consumers: collections-settings: backlog 0 (0 pending, 0 unacked)" in lines
    finally:
        await asyncio.to_thread(suite.start, "collections")
        # Started again, collections creates its durable again, as the failure says.
        async def recreated() -> bool:
            with contextlib.suppress(NotFoundError):
                return bool(await nc.jetstream().consumer_info(stream, "collections-accruals"))
            return False

        await eventually(recreated, timeout=10)
        await nc.close()


def test_a_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        tools_validate.main(["--max-backlog", "-1"])
    assert stopped.value.code == 2
    assert "--max-backlog must be >= 0" in capsys.readouterr().err
