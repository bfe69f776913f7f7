"""Per-caller rate limiting: a token bucket per token subject (else client address).

Admins and services are not limited. The buckets live in the process: with N replicas
behind a balancer a caller gets up to N times the limit, which the README states.
"""

from __future__ import annotations

import math
import time

from litestar.types import ASGIApp, Receive, Scope, Send

from shared.errors import ProblemError

_MAX_BUCKETS = 100_000


class TokenBuckets:
    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
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


def rate_limit_middleware(per_minute: int, *, key_func=None):
    """ASGI middleware placed after authentication, so `scope["user"]` is known.

    `key_func(scope)` may name another bucket (webhooks count per connection).
    """
    buckets = TokenBuckets(per_minute)

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
            wait = buckets.take(key, time.monotonic())
            if wait > 0:
                # Raised, not answered here: Litestar's exception middleware renders it.
                raise ProblemError(
                    429, "rate_limited", f"more than {per_minute} requests a minute",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            await app(scope, receive, send)

        return middleware

    return factory
