"""Client-side round robin over a service's replicas: the dev gateway uses it for every prefix,
and the internal API client for the service it calls (`EXTERNAL_SERVICE_URL` may list several
base URLs, comma separated). In Kubernetes a Service balances instead and the list has one URL.

A replica that refuses the connection is skipped for the next one: safe for any method, since
nothing was sent. A replica that took the request and then failed is not retried elsewhere
(the request may have been acted on; idempotency keys make the caller's own retry safe), except
when the replica hung up without an answer and the request is repeatable: the dev gateway sends
reads and writes carrying an Idempotency-Key on (`tools.gateway.repeatable`), the internal client
every call (each is keyed or a read).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


class Replicas:
    """The base URLs of one service's replicas, taken in turn."""

    def __init__(self, bases: str | Sequence[str]) -> None:
        if isinstance(bases, str):
            bases = [b.strip() for b in bases.split(",")]
        self.bases = [b.rstrip("/") for b in bases if b]
        if not self.bases:
            raise ValueError("a service needs at least one replica")
        self._turn = itertools.count()

    def order(self) -> list[str]:
        """Every replica, starting with the next one's turn: the first is tried, the others only
        when it refuses the connection."""
        start = next(self._turn) % len(self.bases)
        return self.bases[start:] + self.bases[:start]

    def __str__(self) -> str:
        return " ".join(self.bases)
