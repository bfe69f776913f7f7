"""Circuit breakers per processor: after repeated failures a processor counts as unavailable
for a cool-down, then one trial call decides whether it is back. Time is passed in (`now`),
so the state machine is tested without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Circuit:
    failure_threshold: int = 5
    reset_after: float = 30.0
    failures: int = 0
    opened_at: float | None = None

    def is_open(self, now: float) -> bool:
        """Open: refuse. After `reset_after` it is half-open and lets calls try again."""
        return self.opened_at is not None and now - self.opened_at < self.reset_after

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.failure_threshold:
            self.opened_at = now  # (re)open; a failed half-open trial starts a new cool-down


class CircuitBoard:
    """One circuit per processor name."""

    def __init__(self, failure_threshold: int = 5, reset_after: float = 30.0) -> None:
        self._threshold = failure_threshold
        self._reset_after = reset_after
        self._circuits: dict[str, Circuit] = {}

    def circuit(self, name: str) -> Circuit:
        found = self._circuits.get(name)
        if found is None:
            found = self._circuits[name] = Circuit(self._threshold, self._reset_after)
        return found

    def open_names(self, now: float) -> frozenset[str]:
        return frozenset(name for name, c in self._circuits.items() if c.is_open(now))
