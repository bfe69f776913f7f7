"""Per-caller rate limiting, shared by every replica of a service.

A caller (token subject, else client address; webhooks count per connection) may make
`RATE_LIMIT_PER_MINUTE` requests a minute, in bursts up to that many. The count lives in the
service's database, not in the process, so N replicas behind a balancer enforce one budget: GCRA
(the generic cell rate algorithm, as in ATM networks and `redis-cell`) keeps one number per caller,
its theoretical arrival time `tat`, and one statement both checks and takes requests
(`rate_limit_sql`: an upsert that grants what fits). Concurrent requests are batched into one
statement, as `/route`'s decisions are group-committed (`CellTakes`), so the limit costs one round
trip per batch, not per request.

A busy caller does not cost even that: while its budget is more than half full, a replica that has
just asked for it takes up to `lease_chunk(limit)` requests more (a second's worth at the full rate)
and keeps them as a lease in the process; the caller's next requests to that replica spend the lease
without a round trip. The lease is taken from the shared cell, so the budget still holds exactly
across replicas; past half the budget every request asks the database again, so the last half is
shared request by request. Tokens of a lease left unused for `LEASE_IDLE` seconds are given back to
the cell (the other replicas may refuse up to one chunk of the caller's requests meanwhile; a
replica that dies with a lease loses it, which only lowers the caller's budget for under a minute).
The table is
UNLOGGED (no WAL; lost after a Postgres crash, when every caller starts with a full budget) and a
periodic job deletes the cells of callers whose budget is full again.

If the database cannot answer (restarting, pool exhausted), the process falls back to its own
token bucket of the same size rather than refusing or letting everything through: limits are
then per replica until the database is back. Admins and services are never limited.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, OrderedDict
from typing import Any

import structlog

from shared.db import GroupCommit, HotPath
from shared.errors import ProblemError

log = structlog.get_logger("ratelimit")

_MAX_BUCKETS = 100_000
WINDOW = 60.0  # seconds: RATE_LIMIT_PER_MINUTE requests per this window
# Seconds the statement may take before the process's own bucket decides instead.
SHARED_TIMEOUT = 0.5
# Seconds a lease may lie unused before its tokens go back to the shared cell.
LEASE_IDLE = 1.0


def lease_chunk(per_minute: int) -> int:
    """How many requests more than it needs a replica takes for a busy caller: a second's worth at
    the full rate (0, no lease, for limits under 60 a minute, which stay exact request by request)."""
    return per_minute // 60


class TokenBuckets:
    """A token bucket per key, in this process: the fallback while the database is unreachable."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / WINDOW
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> float:
        """Take one token; returns 0 when allowed, else seconds until a token is available."""
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._buckets.clear()
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def rate_limit_sql(schema: str) -> str:
    """GCRA for a batch of callers in one statement: $1 keys (distinct), $2 how many requests of each
    arrived together, $3 the emission interval T = WINDOW / limit, $4 the window, $5 the limit.

    A caller's cell allows as many of its n requests as fit: k = min(n, floor((now + WINDOW - base) / T))
    with base = max(tat, now) (an idle window holds `limit`), and moves `tat` to base + k * T. A new
    caller gets min(n, limit). The proposed row carries now (as tat - n * T) and n (as granted) into
    the update; the row lock of the upsert orders concurrent statements of one caller, whichever
    replica they come from. Returns each key's granted count and, for the rest, the seconds until
    its next request would be allowed."""
    now = "(excluded.tat - excluded.granted * $3::float8)"
    base = f"greatest(cell.tat, {now})"
    fits = f"greatest(0, least(excluded.granted, floor(({now} + $4::float8 - {base}) / $3::float8 + 1e-9)::int))"
    return f"""
WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now),
wanted AS (SELECT w.key, least(w.n, $5::int) AS n FROM unnest($1::text[], $2::int[]) AS w(key, n)),
taken AS (
    INSERT INTO {schema}.rate_limits AS cell (key, tat, granted)
    SELECT wanted.key, clock.now + wanted.n * $3::float8, wanted.n FROM wanted, clock
    ON CONFLICT (key) DO UPDATE SET granted = {fits}, tat = {base} + {fits} * $3::float8
    RETURNING cell.key, cell.granted, cell.tat
)
SELECT taken.key, taken.granted, taken.tat + $3::float8 - $4::float8 - clock.now AS wait FROM taken, clock
"""


def rate_limit_refund_sql(schema: str) -> str:
    """Give unused leased requests back: $1 keys, $2 how many each, $3 the emission interval. GCRA's
    `tat` is a sum of emission intervals, so taking k of them off undoes a grant of k."""
    return f"""
UPDATE {schema}.rate_limits AS cell SET tat = cell.tat - r.k * $3::float8
FROM unnest($1::text[], $2::int[]) AS r(key, k) WHERE cell.key = r.key
"""


class CellTakes(GroupCommit):
    """The takes of concurrent requests, batched as `GroupCommit` batches inserts: one statement at
    once when the service is idle, and while one is under way the requests that arrive wait and go
    together (a caller with several requests in a batch counts them all). Each request resumes with
    0 (allowed) or the seconds to wait.

    Leases (module docstring): a caller asked for again within `LEASE_IDLE` of its last answer, with
    more than half its budget left then, is asked for `chunk` requests more; what a batch grants
    beyond its requests first serves the caller's requests already waiting for the next batch, then
    lies in `leases` for `lease` to spend. A timer gives back leases idle for `LEASE_IDLE`."""

    def __init__(self, hot: HotPath, schema: str, per_minute: int, chunk: int | None = None) -> None:
        super().__init__(hot, rate_limit_sql(schema))
        self.interval = WINDOW / per_minute
        self.per_minute = per_minute
        self.chunk = lease_chunk(per_minute) if chunk is None else chunk
        self._refund_sql = rate_limit_refund_sql(schema)
        # key -> [requests left, monotonic time of last use], least recently used first
        self.leases: OrderedDict[str, list] = OrderedDict()
        # key -> (monotonic time of the last answer, requests its budget held after it)
        self._answered: dict[str, tuple[float, float]] = {}
        self._refund_timer: asyncio.TimerHandle | None = None
        self._refunding: set[asyncio.Task] = set()

    def lease(self, key: str) -> bool:
        """Spend one leased request of `key`, if this process holds one (no I/O)."""
        held = self.leases.get(key)
        if held is None:
            return False
        held[0] -= 1
        if held[0] <= 0:
            del self.leases[key]
        else:
            held[1] = time.monotonic()
            self.leases.move_to_end(key)
        return True

    async def take(self, key: str) -> float:
        return await self.insert((key,), key)

    def _extra(self, key: str, now: float) -> int:
        answered = self._answered.get(key)
        if not self.chunk or answered is None or now - answered[0] > LEASE_IDLE:
            return 0
        return self.chunk if answered[1] > self.per_minute / 2 else 0

    async def _write(self, batch: list[tuple[tuple, Any, asyncio.Future]]) -> None:
        wanted = Counter(key for _, key, _ in batch)
        now = time.monotonic()
        asked = [n + self._extra(key, now) for key, n in wanted.items()]
        try:
            rows = await self._hot.fetch_sql(self._sql, list(wanted), asked, self.interval, WINDOW, self.per_minute)
        except Exception as exc:  # every caller of the batch decides on its own (SharedLimiter)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        now = time.monotonic()
        if len(self._answered) >= _MAX_BUCKETS:
            self._answered.clear()
        answers = {}
        for row in rows:
            wait = float(row["wait"])
            answers[row["key"]] = (row["granted"], max(wait, 0.001))
            self._answered[row["key"]] = (now, 1.0 - wait / self.interval)
        seen: Counter[str] = Counter()
        for _, key, future in batch:
            seen[key] += 1
            granted, wait = answers[key]
            if not future.done():
                future.set_result(0.0 if seen[key] <= granted else wait)
        for key, n in wanted.items():
            spare = answers[key][0] - n
            if spare > 0:
                self._keep(key, spare, now)

    def _keep(self, key: str, spare: int, now: float) -> None:
        """Requests granted beyond a batch's: to the caller's requests queued for the next batch,
        then into its lease."""
        queued = [item for item in self._pending if item[1] == key][:spare]
        if queued:
            served = {id(item) for item in queued}
            self._pending = [item for item in self._pending if id(item) not in served]
            for _, _, future in queued:
                if not future.done():
                    future.set_result(0.0)
            spare -= len(queued)
        if spare <= 0:
            return
        held = self.leases.setdefault(key, [0, now])
        held[0] += spare
        held[1] = now
        self.leases.move_to_end(key)
        if self._refund_timer is None:
            self._refund_timer = asyncio.get_running_loop().call_later(LEASE_IDLE, self._refund_idle)

    def _refund_idle(self) -> None:
        self._refund_timer = None
        now = time.monotonic()
        idle: dict[str, int] = {}
        while self.leases:
            key, (left, used_at) = next(iter(self.leases.items()))
            if now - used_at < LEASE_IDLE:
                self._refund_timer = asyncio.get_running_loop().call_later(
                    used_at + LEASE_IDLE - now, self._refund_idle)
                break
            del self.leases[key]
            idle[key] = left
        if idle:
            task = asyncio.get_running_loop().create_task(self.refund(idle))
            self._refunding.add(task)
            task.add_done_callback(self._refunding.discard)

    async def refund(self, unused: dict[str, int]) -> None:
        try:
            await self._hot.fetch_sql(self._refund_sql, list(unused), list(unused.values()), self.interval)
        except Exception as exc:  # the requests stay spent: the caller's budget is lower for under a minute
            log.info("rate_limit_refund_failed", callers=len(unused), error=str(exc) or type(exc).__name__)


def rate_limit_sweep_sql(schema: str) -> str:
    """Cells whose caller has a full budget again carry nothing: forget them."""
    return f"DELETE FROM {schema}.rate_limits WHERE tat < extract(epoch FROM clock_timestamp())"


class SharedLimiter:
    """The budget of every caller of one service, in its database (see the module docstring).
    `runtime` is the service's `ServiceRuntime` (its hot-path pool, and the schema's name)."""

    def __init__(self, per_minute: int, runtime: Any, schema: str) -> None:
        self.per_minute = per_minute
        self.runtime = runtime
        self.schema = schema
        self.local = TokenBuckets(per_minute)
        self._takes: CellTakes | None = None  # made on first use: the hot-path pool exists from start-up
        self._warned_at = 0.0

    async def take(self, key: str) -> float:
        """0 when the request may go on, else the seconds to wait."""
        if self._takes is None:
            self._takes = CellTakes(self.runtime.hot_path, self.schema, self.per_minute)
        if self._takes.lease(key):
            return 0.0
        try:
            return await asyncio.wait_for(self._takes.take(key), SHARED_TIMEOUT)
        except Exception as exc:  # the database is not answering: this replica's own bucket decides
            now = time.monotonic()
            if now - self._warned_at > 30.0:
                self._warned_at = now
                log.warning("rate_limit_local_fallback", error=str(exc) or type(exc).__name__)
            return self.local.take(key, now)


def too_many(per_minute: int, wait: float) -> ProblemError:
    """The 429 for a caller past its budget, saying when to come back."""
    return ProblemError(429, "rate_limited", f"more than {per_minute} requests a minute",
                        headers={"Retry-After": str(max(1, math.ceil(wait)))})
