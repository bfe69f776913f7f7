"""`shared.scheduler.SingletonJob` against a real Postgres: a once-per-interval job is due by the
interval of the process asking, counted from its last start anywhere. Two processes may run one job
at different intervals (a changed setting rolling out over replicas; in `make test`, a suite
started with the defaults beside one started with short test intervals, on one database): with the
due time fixed by whoever ran last, a job run once at a 60 s interval was not due again for 54 s
where 1 s was asked (tests/integration/test_external.py's connection counters waited in vain)."""

from __future__ import annotations

import asyncio
from datetime import datetime

from shared.scheduler import SingletonJob
from tests.integration.platform_support import SCHEMA


async def test_a_job_is_due_by_the_asking_processs_own_interval(platform_engine) -> None:
    runs: list[str] = []

    def job(label: str):
        async def run(now: datetime) -> None:
            runs.append(label)
        return run

    slow = SingletonJob("due-by-own-interval", 60.0, job("slow"), platform_engine, schema=SCHEMA)
    fast = SingletonJob("due-by-own-interval", 0.3, job("fast"), platform_engine, schema=SCHEMA)
    assert await slow.run_once(scheduled=True) is True
    assert await fast.run_once(scheduled=True) is False  # it ran anywhere less than 0.3 s ago
    await asyncio.sleep(0.4)
    assert await fast.run_once(scheduled=True) is True  # not 54 s later
    assert await slow.run_once(scheduled=True) is False  # the slow one keeps to its own 60 s
    assert runs == ["slow", "fast"]
