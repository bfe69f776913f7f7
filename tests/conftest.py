"""Test session wiring: one Postgres database and one JetStream stream per run.

The servers come from `tools.devinfra` (configured, already running locally, or embedded), so
the suite runs the same on a developer's machine, in CI and on a machine with only Python.
Every name a run creates carries `RUN_ID`, so parallel runs never touch each other's data.

`make test` runs the tests in two pytest-xdist workers (`-n 2`): each worker is a run of its own
(its own `RUN_ID`, database and stream), and `pytest_xdist_make_scheduler` below decides which
tests go to a worker together.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import nats
import pytest
from cryptography.fernet import Fernet

from shared.config import BaseSettings, load_settings
from tests.support import scratch_database
from tools.devinfra import Infra, start_infra

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = uuid.uuid4().hex[:10]
JWT_SECRET = "test-secret-" + RUN_ID + "-long-enough-for-hs256-signing"
ENCRYPTION_KEY = Fernet.generate_key().decode()


# ---- pytest-xdist: which tests run on one worker, one after the other -----------------------------

# The tests that start the whole suite (`make run`, each with up to 8 service processes and their
# pools): one after another on one worker, so two of them never share Postgres' 100 connections.
WHOLE_SUITE = ("tests/e2e/", "tests/integration/test_make_run.py")
# The fuzz module runs the four services once per worker; its parameters, one service each, are
# units of their own (the module is a third of the run's time).
FUZZ = re.compile(r"^tests/fuzz/test_schemathesis\.py::\w+\[(\w+)-")
# Handed out first, longest first (`--durations`: about 250, 110, 60, 55 and 30 s on one worker).
LONG_FIRST = ("make-run", "fuzz-external", "fuzz-router", "fuzz-collections", "fuzz-analytics")


def pytest_xdist_make_scheduler(config, log):
    """Whole modules go to one worker (their module fixtures start once), except the groups above;
    the long units are handed out first so that neither worker is left with one at the end."""
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(WHOLE_SUITE):
                return "make-run"
            if fuzzed := FUZZ.match(nodeid):
                return f"fuzz-{fuzzed[1]}"
            return nodeid.split("::", 1)[0]

        def _assign_work_unit(self, node) -> None:
            for scope in reversed(LONG_FIRST):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return Units(config, log)


@pytest.fixture(scope="session")
def infra() -> Infra:
    servers = start_infra(ROOT / ".run")
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def database_url(infra: Infra) -> str:
    """A fresh database for this run with every service's migrations at head."""
    with scratch_database(infra, f"hp_test_{RUN_ID}") as url:
        yield url


@pytest.fixture(scope="session")
async def event_names(infra: Infra) -> dict[str, str]:
    """This run's stream and subject prefix; the stream is deleted when the run ends."""
    names = {"EVENT_STREAM": f"PAYMENTS_T{RUN_ID}", "EVENT_SUBJECT_PREFIX": f"t{RUN_ID}."}
    yield names
    nc = await nats.connect(infra.nats_url)
    try:
        await nc.jetstream().delete_stream(names["EVENT_STREAM"])
    except Exception:
        pass
    await nc.close()


@pytest.fixture(scope="session")
def service_env(infra: Infra, database_url: str, event_names: dict[str, str]) -> dict[str, str]:
    """Environment for services under test (also exported, for tests that start subprocesses)."""
    env = {
        "DATABASE_URL": database_url,
        "NATS_URL": infra.nats_url,
        "JWT_SECRET": JWT_SECRET,
        "LOG_JSON": "true",
        "LOG_LEVEL": "warning",
        "OUTBOX_POLL_INTERVAL": "0.2",
        "CONNECTION_ENCRYPTION_KEYS": ENCRYPTION_KEY,
        **event_names,
    }
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def make_settings(service_env: dict[str, str]):
    """Build any service's settings from the run's environment plus overrides."""

    def build(cls: type[BaseSettings], **overrides: object) -> BaseSettings:
        return load_settings(cls, env=service_env, dotenv=None, **overrides)

    return build


# ---- the processor simulators, each a process of its own (one per test module) ------------------------

@pytest.fixture(scope="module")
def stripe_sim():
    from tests.integration.router_support import start_stripe_sim

    proc, url = start_stripe_sim()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def square_sim():
    from tests.integration.router_support import start_sim

    proc, url = start_sim("sandbox.square_sim")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def paypal_sim():
    from tests.integration.router_support import start_sim

    proc, url = start_sim("sandbox.paypal_sim")
    yield url
    proc.terminate()
    proc.wait(10)
