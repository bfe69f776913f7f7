"""Periodic jobs that run once per interval across all replicas (sweepers, aggregation,
reconciliation), and refreshers that run in every replica (gauges read from the database).

Each run of a once-job first takes a Postgres advisory lock named after the job on a connection
of its own; a replica that does not get it skips the run. The lock is held for the run and freed
by `pg_advisory_unlock`, or by Postgres itself when the holder's connection dies with its process,
so a crashed replica never blocks the others. Under the lock, the job's row in `job_schedule`
says when it last started, anywhere; it is due once that is this process's interval ago: N
replicas waking every interval run the job once per interval, not N times (the row also counts
runs, which is how the tests count them). The clock is passed in (`now`), so jobs are tested by
calling `run_once(now=...)` directly (always runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.observability import JOB_RUNS

log = structlog.get_logger("scheduler")

Job = Callable[[datetime], Awaitable[object]]


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a job name."""
    return int.from_bytes(hashlib.sha256(f"hybrid-payments:{name}".encode()).digest()[:8], "big", signed=True)


# A scheduled run is due this share of the interval after the last one started anywhere: replicas
# whose timers drift a little apart still find the job due once per interval, never twice.
DUE_SHARE = 0.9
HOLDER = f"{socket.gethostname()}:{os.getpid()}"


def due_sql(schema: str) -> str:
    """Claim the next scheduled run of job $1 if it is due; $2 is the asking process's interval
    (times DUE_SHARE). Returns the run's number, or nothing when it ran anywhere less than that ago.
    Due by the asker's own interval, not by a time the last runner wrote: a process started with a
    longer interval (a setting changed since, rolling out) must not hold the job back for the rest."""
    return f"""
INSERT INTO {schema}.job_schedule AS job (name, due_at, runs, last_started_at, last_holder)
VALUES (:name, now() + make_interval(secs => :gap), 1, now(), :holder)
ON CONFLICT (name) DO UPDATE SET due_at = excluded.due_at, runs = job.runs + 1,
    last_started_at = excluded.last_started_at, last_holder = excluded.last_holder
WHERE job.last_started_at IS NULL OR job.last_started_at <= now() - make_interval(secs => :gap)
RETURNING runs"""


def record_run_sql(schema: str) -> str:
    """A run made outside the schedule (`run_once` called directly): counted, and the next
    scheduled run is an interval after it."""
    return f"""
INSERT INTO {schema}.job_schedule AS job (name, due_at, runs, last_started_at, last_holder)
VALUES (:name, now() + make_interval(secs => :gap), 1, now(), :holder)
ON CONFLICT (name) DO UPDATE SET due_at = excluded.due_at, runs = job.runs + 1,
    last_started_at = excluded.last_started_at, last_holder = excluded.last_holder
RETURNING runs"""


class SingletonJob:
    """A job run once per interval across replicas (`schema` holds its `job_schedule` row; without
    one, replicas only never overlap). With `once=False` every replica runs it on its own timer,
    without lock or schedule: for refreshers that only read (gauges)."""

    def __init__(self, name: str, interval: float, job: Job, engine: AsyncEngine,
                 *, clock: Callable[[], datetime] = lambda: datetime.now(UTC), schema: str | None = None,
                 once: bool = True) -> None:
        self.name = name
        self.interval = interval
        self._job = job
        self._engine = engine
        self._clock = clock
        self.once = once
        self._due = sa.text(due_sql(schema)) if schema else None
        self._record = sa.text(record_run_sql(schema)) if schema else None
        # Job locks have a namespace of their own: a job's work may take named locks of its own
        # (the aggregation's transaction lock was named like its job, and waited on it forever).
        self.key = lock_key(f"job:{name}")
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"job-{self.name}")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stopping.set()
        done, _ = await asyncio.wait({self._task}, timeout=5.0)
        if not done:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2.0)
        self._task = None

    async def _loop(self) -> None:
        # A random first delay spreads replicas (and services) that started together; refreshers of
        # every replica (gauges) run within a second, so a new replica exports its gauges at once.
        delay = random.uniform(0.2, 1.0) * (min(self.interval, 10.0) if self.once else 1.0)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            delay = self.interval
            try:
                if self.once:
                    await self.run_once(scheduled=True)
                else:
                    await self._job(self._clock())
                    JOB_RUNS.labels(self.name, "ok").inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next interval tries again
                log.warning("job_failed", job=self.name, error=str(exc) or type(exc).__name__)

    async def run_once(self, *, now: datetime | None = None, scheduled: bool = False) -> bool:
        """Run the job if no other replica is running it (and, when `scheduled`, if no replica ran
        it less than an interval ago); False when it was skipped."""
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            if not await conn.scalar(sa.select(sa.func.pg_try_advisory_lock(self.key))):
                JOB_RUNS.labels(self.name, "skipped").inc()
                return False
            try:
                claim = self._due if scheduled else self._record
                if claim is not None:
                    params = {"name": self.name, "gap": self.interval * DUE_SHARE, "holder": HOLDER}
                    if await conn.scalar(claim, params) is None:
                        JOB_RUNS.labels(self.name, "not_due").inc()
                        return False
                await self._job(now or self._clock())
                JOB_RUNS.labels(self.name, "ok").inc()
            except Exception:
                JOB_RUNS.labels(self.name, "failed").inc()
                raise
            finally:
                with contextlib.suppress(Exception):
                    await conn.scalar(sa.select(sa.func.pg_advisory_unlock(self.key)))
        return True
