"""The external service's decisions: plain functions over plain values, no I/O, no clock.

- What a connection tells the others it is (`published_status`): a processor switched off by
  `EXTERNAL_<P>_ENABLED=false` makes its connections unusable without forgetting their state.
- How a processor's report changes a transaction (`shared.lifecycle` does the statuses): the
  commission it accrues, and the refunded total from refunds that succeeded.
- Reconciliation: how our record and the processor's compare (`reconcile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from shared.lifecycle import settled_status
from shared.money import percentage_of

# A connection's own lifecycle: pending (credentials not checked yet) -> active | error;
# any -> disconnected (DELETE). `disabled` is never stored: it is what a connection of a switched
# off processor publishes.
CONNECTION_STATUSES = ("pending", "active", "error", "disconnected")


def published_status(status: str, processor_enabled: bool) -> str:
    if status == "disconnected" or processor_enabled:
        return status
    return "disabled"


def commission_for(amount: Decimal, rate: Decimal, currency: str) -> Decimal:
    return percentage_of(amount, rate, currency)


@dataclass(frozen=True)
class Recorded:
    """What we hold about one processor payment."""

    processor_payment_id: str
    amount: Decimal
    status: str  # ours: pending, completed, failed, canceled, refunded, partially_refunded


@dataclass(frozen=True)
class Reported:
    """What the processor says about it."""

    processor_payment_id: str
    amount: Decimal
    status: str  # the interface's: pending, completed, failed, canceled


@dataclass(frozen=True)
class Verdict:
    processor_payment_id: str
    status: str  # matched | mismatch | missing_local
    reason: str | None = None


def reconcile(recorded: list[Recorded], reported: list[Reported]) -> list[Verdict]:
    """Each payment the processor reports in the window against ours: missing here, different
    (amount or status), or matched; and each settled payment of ours the processor does not
    report (a mismatch: we say it happened, the processor does not)."""
    ours = {r.processor_payment_id: r for r in recorded}
    theirs = {r.processor_payment_id: r for r in reported}
    verdicts: list[Verdict] = []
    for pid, remote in theirs.items():
        local = ours.get(pid)
        if local is None:
            verdicts.append(Verdict(pid, "missing_local"))
            continue
        problems = []
        if local.amount != remote.amount:
            problems.append(f"amount {local.amount} here, {remote.amount} at the processor")
        local_base = "completed" if local.status in ("refunded", "partially_refunded") else local.status
        if local_base != settled_status(remote.status):
            problems.append(f"status {local.status} here, {remote.status} at the processor")
        verdicts.append(Verdict(pid, "mismatch", "; ".join(problems)) if problems else Verdict(pid, "matched"))
    for pid, local in ours.items():
        if pid not in theirs and local.status != "pending":
            verdicts.append(Verdict(pid, "mismatch", "the processor does not report this payment"))
    return verdicts
