"""Per-caller rate limiting, shared by every replica of a service.

A caller (token subject, else client address; webhooks count per connection) may make
`RATE_LIMIT_PER_MINUTE` requests a minute, in bursts up to that many. The count lives in the
service's database, not in the process, so N replicas behind a balancer enforce one budget: GCRA
(the generic cell rate algorithm, as in ATM networks and `redis-cell`) keeps one number per caller,
its theoretical arrival time `tat`, and one statement both checks and takes a request
(`RATE_LIMIT_SQL`: an upsert whose `WHERE` refuses it when the budget is spent). The table is
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
from typing import Any

import structlog
from litestar.types import ASGIApp, Receive, Scope, Send

from shared.errors import ProblemError

log = structlog.get_logger("ratelimit")

_MAX_BUCKETS = 100_000
WINDOW = 60.0  # seconds: RATE_LIMIT_PER_MINUTE requests per this window
# Seconds the statement may take before the process's own bucket decides instead.
SHARED_TIMEOUT = 0.5


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
    """GCRA in one statement. $1 key, $2 emission interval T = WINDOW / limit, $3 the window.

    A request is allowed when max(tat, now) + T <= now + WINDOW (a burst of `limit` requests fits
    in an idle window); taking it moves `tat` to max(tat, now) + T. When refused, `wait` is the time
    until it would be allowed. The row lock of the upsert orders concurrent requests of one caller,
    whichever replica they reached."""
    return f"""
WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now),
taken AS (
    INSERT INTO {schema}.rate_limits AS cell (key, tat)
    SELECT $1, clock.now + $2::float8 FROM clock
    ON CONFLICT (key) DO UPDATE SET tat = greatest(cell.tat, excluded.tat - $2::float8) + $2::float8
    WHERE greatest(cell.tat, excluded.tat - $2::float8) + $2::float8 <= excluded.tat - $2::float8 + $3::float8
    RETURNING cell.tat
)
SELECT EXISTS (SELECT 1 FROM taken) AS allowed,
       (SELECT cell.tat FROM {schema}.rate_limits cell WHERE cell.key = $1)
           + $2::float8 - $3::float8 - (SELECT now FROM clock) AS wait
"""


def rate_limit_sweep_sql(schema: str) -> str:
    """Cells whose caller has a full budget again carry nothing: forget them."""
    return f"DELETE FROM {schema}.rate_limits WHERE tat < extract(epoch FROM clock_timestamp())"


class SharedLimiter:
    """The budget of every caller of one service, in its database (see the module docstring).
    `runtime` is the service's `ServiceRuntime` (its hot-path pool, and the schema's name)."""

    def __init__(self, per_minute: int, runtime: Any, schema: str) -> None:
        self.per_minute = per_minute
        self.interval = WINDOW / per_minute
        self.runtime = runtime
        self.sql = rate_limit_sql(schema)
        self.local = TokenBuckets(per_minute)
        self._warned_at = 0.0

    async def take(self, key: str) -> float:
        """0 when the request may go on, else the seconds to wait."""
        try:
            row = await asyncio.wait_for(self.runtime.hot_path.fetchrow_sql(self.sql, key, self.interval, WINDOW),
                                         SHARED_TIMEOUT)
        except Exception as exc:  # the database is not answering: this replica's own bucket decides
            now = time.monotonic()
            if now - self._warned_at > 30.0:
                self._warned_at = now
                log.warning("rate_limit_local_fallback", error=str(exc) or type(exc).__name__)
            return self.local.take(key, now)
        return 0.0 if row["allowed"] else max(float(row["wait"] or 0.0), 0.001)


def rate_limit_middleware(limiter: Any, *, key_func=None):
    """ASGI middleware placed after authentication, so `scope["user"]` is known. `limiter.take(key)`
    answers 0 or the seconds to wait (`SharedLimiter`).

    `key_func(scope)` may name another bucket (webhooks count per connection).
    """

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            user = scope.get("user")
            if getattr(user, "is_privileged", False):
                await app(scope, receive, send)
                return
            key = key_func(scope) if key_func else None
            if key is None:
                subject = getattr(user, "subject", None)
                client = scope.get("client")
                key = f"sub:{subject}" if subject else f"addr:{client[0] if client else 'unknown'}"
            wait = await limiter.take(key)
            if wait > 0:
                # Raised, not answered here: Litestar's exception middleware renders it.
                raise ProblemError(
                    429, "rate_limited", f"more than {limiter.per_minute} requests a minute",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            await app(scope, receive, send)

        return middleware

    return factory
