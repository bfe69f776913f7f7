"""Circuit breakers: after repeated failures an account (one barber's connection, or the platform's
own Stripe account) counts as unavailable for a cool-down; then exactly one trial call decides
whether it is back. Time is passed in (`now`), so the state machine is tested without a clock.

Keys name one account, never a processor: one barber's failing Stripe must not switch Stripe off
for every other barber, nor for the platform (`connection_circuit`, `PLATFORM`).

    closed --threshold failures--> open --reset_after--> half-open --one trial--> closed | open
"""

from __future__ import annotations

from dataclasses import dataclass

# The platform's own Stripe account (centralized payments, refunds, collections).
PLATFORM = "platform"


def connection_circuit(connection_id: int) -> str:
    """The circuit of one barber's processor connection."""
    return f"connection:{connection_id}"


@dataclass
class Circuit:
    failure_threshold: int = 5
    reset_after: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    trial_at: float | None = None  # when the half-open trial went out (None: none is out)

    def is_open(self, now: float) -> bool:
        """Refusing calls now: open, or half-open with its one trial still out. (Asking takes no
        trial: routing asks this of every candidate.)"""
        if self.opened_at is None:
            return False
        if now - self.opened_at < self.reset_after:
            return True
        return self.trial_at is not None and now - self.trial_at < self.reset_after

    def allow(self, now: float) -> bool:
        """May a call go out now? Closed: yes. Open: no. Half-open: one trial, and no other call
        until it reports (a trial that never reports is presumed lost after `reset_after`)."""
        if self.is_open(now):
            return False
        if self.opened_at is not None:
            self.trial_at = now
        return True

    def state(self, now: float) -> str:
        """closed, open (refusing calls) or half_open (the next call is a trial)."""
        if self.opened_at is None:
            return "closed"
        return "open" if self.is_open(now) else "half_open"

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_at = None

    def record_failure(self, now: float) -> None:
        self.failures += 1
        self.trial_at = None
        if self.failures >= self.failure_threshold:
            self.opened_at = now  # (re)open; a failed half-open trial starts a new cool-down


class CircuitBoard:
    """One circuit per account key (`PLATFORM`, `connection_circuit(id)`), per process."""

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

    def states(self, now: float) -> dict[str, tuple[str, int]]:
        """Every circuit this process has seen: name -> (state, consecutive failures)."""
        return {name: (c.state(now), c.failures) for name, c in self._circuits.items()}

    def open_connections(self, now: float) -> frozenset[int]:
        """The ids of barbers' connections whose circuits refuse calls now."""
        prefix = connection_circuit(0)[:-1]
        return frozenset(int(name.removeprefix(prefix)) for name in self.open_names(now) if name.startswith(prefix))
