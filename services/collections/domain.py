"""The collections service's decisions: plain functions over plain values, no I/O, no clock.

- Accrual: what a transaction owes, computed cumulatively from its latest state (`owed`), so that
  however its events arrive the accruals written for it add up to exactly that.
- Aggregation: which unbilled accruals become which collection (`plan_collections`), over UTC
  windows per frequency (`window_end`) and only at or above the minimum. The service runs the same
  plan set-based in SQL; this is its specification and the property tests' subject.
- Dunning: when a failed collection is tried again, and when it becomes overdue (`after_failure`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from shared.commission import NOTHING, Earned, commission_earned

Frequency = Literal["daily", "weekly", "monthly"]
FREQUENCIES: tuple[Frequency, ...] = ("daily", "weekly", "monthly")


# ---- accrual ---------------------------------------------------------------------------------------

Owed = Earned  # what a transaction owes the platform so far: its commission, less what refunds reversed


def owed(*, payment_type: str, status: str, amount: Decimal, refunded_amount: Decimal, commission: Decimal,
         currency: str) -> Owed:
    """Centralized payments owe nothing (their commission was the application fee); an external
    payment owes what it earned (`shared.commission`: its commission once completed, less the
    proportional reversal of its refunds)."""
    if payment_type != "external":
        return NOTHING
    return commission_earned(status=status, amount=amount, refunded_amount=refunded_amount,
                             commission=commission, currency=currency)


def accrual_deltas(before: Owed, after: Owed) -> list[tuple[str, Decimal]]:
    """The accrual rows that move a transaction from `before` to `after`, each only when it
    changed: what it owes more is a `commission` row (positive), what it owes less a `reversal`
    (negative; a refund that later failed gives back a positive one, so the kind follows the sign)."""
    deltas = []
    for delta in (after.commission - before.commission, before.reversed - after.reversed):
        if delta:
            deltas.append(("commission" if delta > 0 else "reversal", delta))
    return deltas


# ---- aggregation -----------------------------------------------------------------------------------

def window_end(frequency: Frequency, now: datetime) -> datetime:
    """The end of the last complete UTC window: today's midnight (daily), this Monday's (weekly),
    the 1st of this month's (monthly). Accruals before it are due for collection."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if frequency == "daily":
        return midnight
    if frequency == "weekly":
        return midnight - timedelta(days=midnight.weekday())
    return midnight.replace(day=1)


def window_ends(now: datetime) -> dict[Frequency, datetime]:
    return {f: window_end(f, now) for f in FREQUENCIES}


@dataclass(frozen=True)
class Accrual:
    id: int
    barber_id: int
    currency: str
    amount: Decimal  # positive: commission; negative: a reversal (a credit)
    accrued_at: datetime
    transaction_id: str


@dataclass(frozen=True)
class BarberSettings:
    frequency: Frequency
    auto_collection: bool


@dataclass(frozen=True)
class PlannedCollection:
    barber_id: int
    currency: str
    amount: Decimal
    accrual_ids: tuple[int, ...]
    transaction_ids: tuple[str, ...]
    period_end: datetime


def plan_collections(accruals: list[Accrual], settings: dict[int, BarberSettings], default: BarberSettings,
                     now: datetime, minimum: Decimal, *, force: bool = False,
                     barber_id: int | None = None) -> list[PlannedCollection]:
    """Per (barber, currency): the unbilled accruals before the barber's window end (all of them
    with `force`) become one collection when their sum is at least `minimum`; otherwise they stay
    unbilled and carry forward (credits included, so a collection is never negative).

    The schedule bills barbers with automatic collection on; naming a `barber_id` bills that barber
    whatever its setting (a manual run)."""
    groups: dict[tuple[int, str], list[Accrual]] = defaultdict(list)
    ends: dict[int, datetime] = {}
    for accrual in accruals:
        barber = settings.get(accrual.barber_id, default)
        if barber_id is not None and accrual.barber_id != barber_id:
            continue
        if barber_id is None and not barber.auto_collection:
            continue
        end = now if force else window_end(barber.frequency, now)
        if accrual.accrued_at < end:
            groups[(accrual.barber_id, accrual.currency)].append(accrual)
            ends[accrual.barber_id] = end
    planned = []
    for (barber, currency), members in sorted(groups.items()):
        total = sum((a.amount for a in members), Decimal(0))
        if total >= minimum and total > 0:
            planned.append(PlannedCollection(
                barber_id=barber, currency=currency, amount=total,
                accrual_ids=tuple(sorted(a.id for a in members)),
                transaction_ids=tuple(sorted({a.transaction_id for a in members})), period_end=ends[barber]))
    return planned


def due_date(now: datetime) -> date:
    """A new collection is due at once: the charge is attempted when it is created."""
    return now.date()


# ---- dunning ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AfterFailure:
    status: Literal["failed", "overdue"]
    next_attempt_at: datetime | None


def after_failure(*, attempts: int, first_failed_at: datetime, retry_days: tuple[int, ...]) -> AfterFailure:
    """`attempts` have failed so far (the first one included). Retry `retry_days[n]` days after the
    first failure, for each n; when the schedule is used up the collection is overdue."""
    retries_done = attempts - 1
    if retries_done < len(retry_days):
        return AfterFailure("failed", first_failed_at + timedelta(days=retry_days[retries_done]))
    return AfterFailure("overdue", None)
