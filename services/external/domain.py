"""The external service's decisions: plain functions over plain values, no I/O, no clock.

- What a connection tells the others it is (`published_status`): a processor switched off by
  `EXTERNAL_<P>_ENABLED=false` makes its connections unusable without forgetting their state.
- How a processor's report changes a transaction (`shared.lifecycle` does the statuses): the
  commission it accrues, and the refunded total from refunds that succeeded.
- Reconciliation: how our record and the processor's compare (`reconcile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

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


def processed_at_of(object_time: datetime | None, event_time: datetime | None, now: datetime) -> datetime:
    """When a payment we hear of happened: the processor's time for the object, else the time of the
    event that told us, else now; never a made-up epoch (it would land on 1970-01-01 in analytics)."""
    return object_time or event_time or now


# Statuses of ours in which money was taken: only these must be at the processor.
MONEY_TAKEN = frozenset({"completed", "partially_refunded", "refunded"})


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


VerdictStatus = Literal["matched", "mismatch", "missing_local"]


@dataclass(frozen=True)
class Verdict:
    processor_payment_id: str
    status: VerdictStatus
    reason: str | None = None
    # The processor's word should be merged into our record (a payment we lack, or a status it moved
    # on from); an amount difference is not merged: a person looks.
    apply: bool = False


def reconcile(recorded: list[Recorded], reported: list[Reported]) -> list[Verdict]:
    """Each payment the processor reports in the window against ours: one that took money and we
    lack is `missing_local` (an abandoned, pending or declined one we never heard of is no payment
    of ours and no finding); a different amount or status is a `mismatch`; the rest `matched`. And
    each payment of ours that took money but the processor does not report is a `mismatch` (a
    failed one may leave no trace there: a PayPal decline is an order, never a listed capture)."""
    ours = {r.processor_payment_id: r for r in recorded}
    theirs = {r.processor_payment_id: r for r in reported}
    verdicts: list[Verdict] = []
    for pid, remote in theirs.items():
        local = ours.get(pid)
        if local is None:
            if settled_status(remote.status) == "completed":
                verdicts.append(Verdict(pid, "missing_local", apply=True))
            continue
        problems = []
        if local.amount != remote.amount:
            problems.append(f"amount {local.amount} here, {remote.amount} at the processor")
        local_base = "completed" if local.status in ("refunded", "partially_refunded") else local.status
        moved_on = local_base != settled_status(remote.status)
        if moved_on:
            problems.append(f"status {local.status} here, {remote.status} at the processor")
        verdicts.append(Verdict(pid, "mismatch", "; ".join(problems), apply=moved_on) if problems
                        else Verdict(pid, "matched"))
    for pid, local in ours.items():
        if pid not in theirs and local.status in MONEY_TAKEN:
            verdicts.append(Verdict(pid, "mismatch", "the processor does not report this payment"))
    return verdicts


def refunds_differ(recorded_refunded: Decimal, processor_refunded: Decimal) -> str | None:
    """The reason a payment's refunded total here differs from the processor's, or None."""
    if recorded_refunded == processor_refunded:
        return None
    return f"refunded {recorded_refunded} here, {processor_refunded} at the processor"
