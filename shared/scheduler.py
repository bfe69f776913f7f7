"""Periodic jobs that run in one replica at a time (sweepers, aggregation, reconciliation).

Each run first takes a Postgres advisory lock named after the job on a connection of its own;
a replica that does not get it skips the run. The lock is held for the run and freed by
`pg_advisory_unlock`, or by Postgres itself when the holder's connection dies with its process,
so a crashed replica never blocks the others. The clock is passed in (`now`), so jobs are
tested by calling `run_once(now=...)` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
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


class SingletonJob:
    def __init__(self, name: str, interval: float, job: Job, engine: AsyncEngine,
                 *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.name = name
        self.interval = interval
        self._job = job
        self._engine = engine
        self._clock = clock
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
        # A random first delay spreads replicas (and services) that started together.
        delay = random.uniform(0.2, 1.0) * min(self.interval, 10.0)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            delay = self.interval
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next interval tries again
                log.warning("job_failed", job=self.name, error=str(exc) or type(exc).__name__)

    async def run_once(self, *, now: datetime | None = None) -> bool:
        """Run the job if no other replica is running it; False when it was skipped."""
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            if not await conn.scalar(sa.select(sa.func.pg_try_advisory_lock(self.key))):
                JOB_RUNS.labels(self.name, "skipped").inc()
                return False
            try:
                await self._job(now or self._clock())
                JOB_RUNS.labels(self.name, "ok").inc()
            except Exception:
                JOB_RUNS.labels(self.name, "failed").inc()
                raise
            finally:
                with contextlib.suppress(Exception):
                    await conn.scalar(sa.select(sa.func.pg_advisory_unlock(self.key)))
        return True
