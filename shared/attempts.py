"""The crash-safe attempt pipeline. Every processor call that moves money (a payment, a refund, the
charge of a commission collection) goes through it, in the router, the external service and
collections alike; each service keeps only its own storage (open, settle) around it.

    open    the service commits a row `pending` with its processor idempotency key (derived from
            the row, so a retry re-sends the same key) before any call
    call    `call`: the processor is asked, with that key; an attempt found again whose object the
            processor already named is retrieved instead
    settle  the service writes the outcome, conditional on the row still being pending, with its
            event, in one transaction (whoever settles first wins)
    sweep   `sweep` + `look_up`: attempts nobody came back for are looked up by the processor's
            id, else found by our reference, never created again; a row whose look-up fails backs
            off on its own (`next_check_at`), so a few unreachable accounts never starve the others

Why "retrieve, never re-send" once the processor named the object: re-sending a create with its
key only replays the first answer (a pending one never settles that way), and once the key has
expired (24 h at Stripe) the same request makes a second payment. For the same reason an attempt
older than half its processor's key lifetime is only ever looked up.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, Protocol, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from shared.circuit import Circuit
from shared.errors import ProblemError
from shared.processors.base import (
    InvalidCredentials,
    OutcomeUnknown,
    PaymentDeclined,
    ProcessorError,
    ProcessorRequestError,
    ProcessorTimeout,
    ProcessorUnavailable,
    key_lifetime,
    listing_lag,
)

log = structlog.get_logger("attempts")
R = TypeVar("R")

# answered: the processor's word (the object, perhaps still pending). declined: a final decline.
# rejected: the processor refused the request itself (final; nothing moved). refused: it surely did
# nothing this time (unreachable, rate limited, or our circuit kept the call back). unknown: it may
# have done it (no answer in time, a 5xx, a broken connection). absent: a look-up found no trace (it
# never reached the processor). not_yet: not listed, but the processor's listing may still lag.
Kind = Literal["answered", "declined", "rejected", "refused", "unknown", "absent", "not_yet"]

# A sweep backs a row off for this long after its first failed look-up, doubling up to the cap.
BACK_OFF_FIRST = timedelta(minutes=1)
BACK_OFF_CAP = timedelta(hours=6)


@dataclass(frozen=True)
class Attempt:
    """What the pipeline needs of a stored attempt (each service maps its row to it)."""

    processor_id: str | None  # the processor's id for the object, once it said one
    created_at: datetime
    fresh: bool = False  # opened by this very request: surely never sent before


@dataclass(frozen=True)
class Operation(Generic[R]):
    """One processor object for one attempt: how to create it (with the stored key), retrieve it by
    the processor's id, and find it by our reference. `processor` is the adapter (its listing lag and
    key lifetime)."""

    create: Callable[[], Awaitable[R]]
    retrieve: Callable[[str], Awaitable[R]]
    find: Callable[[], Awaitable[R | None]]
    processor: object


@dataclass(frozen=True)
class Outcome(Generic[R]):
    kind: Kind
    result: R | None = None
    error: ProcessorError | None = None

    @property
    def message(self) -> str:
        return self.error.message if self.error is not None else self.kind


async def call(op: Operation[R], attempt: Attempt, *, now: datetime, circuit: Circuit | None = None) -> Outcome[R]:
    """The request path: send the attempt with its key, or learn the outcome of one found again."""
    if attempt.processor_id is not None or (not attempt.fresh and now - attempt.created_at
                                            >= key_lifetime(op.processor) / 2):
        try:
            return await look_up(op, attempt, now=now)
        except ProcessorError as exc:  # it stays pending; a retry or the sweeper asks again
            return Outcome("unknown", error=exc)
    if circuit is not None and not circuit.allow(time.monotonic()):
        return Outcome("refused", error=ProcessorUnavailable("calls to this account keep failing; not sent, "
                                                             "try again shortly"))
    try:
        result = await op.create()
    except PaymentDeclined as exc:
        _report(circuit, ok=True)
        return Outcome("declined", error=exc)
    except ProcessorUnavailable as exc:
        _report(circuit, ok=False)
        return Outcome("refused", error=exc)
    except OutcomeUnknown as exc:
        _report(circuit, ok=False)
        return Outcome("unknown", error=exc)
    except (InvalidCredentials, ProcessorRequestError) as exc:
        _report(circuit, ok=True)  # the processor answered: the account works, the request did not
        return Outcome("rejected", error=exc)
    _report(circuit, ok=True)
    return Outcome("answered", result)


async def look_up(op: Operation[R], attempt: Attempt, *, now: datetime) -> Outcome[R]:
    """The sweeper's path, which never creates: by the processor's id, else by our reference.
    A processor error propagates (`sweep` backs the row off)."""
    if attempt.processor_id is not None:
        return Outcome("answered", await op.retrieve(attempt.processor_id))
    found = await op.find()
    if found is not None:
        return Outcome("answered", found)
    if now - attempt.created_at < listing_lag(op.processor):
        return Outcome("not_yet")
    return Outcome("absent")


def _report(circuit: Circuit | None, *, ok: bool) -> None:
    if circuit is None:
        return
    if ok:
        circuit.record_success()
    else:
        circuit.record_failure(time.monotonic())


def problem_for(outcome: Outcome[Any], *, fresh: bool, transaction_id: str, who: str) -> ProblemError:
    """The answer to a payment request that did not get the processor's word. `fresh`: this request
    opened the attempt, so a refusal means nothing was ever sent (`nothing_happened`, and the
    router may pay elsewhere); an attempt found again may have been sent before."""
    error = outcome.error
    message = outcome.message
    if outcome.kind == "declined":
        code = error.code if error is not None else None
        return ProblemError(402, "payment_declined", message, transaction_id=transaction_id, decline_code=code)
    if outcome.kind == "rejected":
        return ProblemError(422, "processor_rejected", f"payment_method: {who} refused the request: {message}",
                            transaction_id=transaction_id, field="payment_method")
    if outcome.kind == "refused":
        return ProblemError(503, "processor_unavailable", message, transaction_id=transaction_id,
                            nothing_happened=fresh, headers={"Retry-After": "5"})
    timeout = isinstance(error, ProcessorTimeout)
    return ProblemError(504 if timeout else 502, "processor_timeout" if timeout else "processor_outcome_unknown",
                        f"{message}; the outcome is unknown. Retry with the same Idempotency-Key to settle it "
                        "(it will not charge twice).", transaction_id=transaction_id, nothing_happened=False)


# ---- sweeping ---------------------------------------------------------------------------------------

def pending(table: sa.Table, untouched_since: datetime, now: datetime, limit: int,
            *where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """The rows of `table` a sweep takes: pending, untouched since `untouched_since` (nobody is
    driving them), not backed off, oldest first, at most `limit`."""
    return (sa.select(table).where(table.c.status == "pending", table.c.updated_at < untouched_since,
                                   due(table, now), *where)
            .order_by(sweep_order(table)).limit(limit))


def due(table: sa.Table, now: datetime) -> sa.ColumnElement[bool]:
    """A pending row a sweep may look at now: not backed off (`next_check_at` passed or unset)."""
    return sa.or_(table.c.next_check_at.is_(None), table.c.next_check_at <= now)


def sweep_order(table: sa.Table) -> sa.ColumnElement[Any]:
    """Oldest first, a backed-off row by when it is due again."""
    return sa.func.coalesce(table.c.next_check_at, table.c.updated_at)


def next_check(failures: int, now: datetime) -> datetime:
    """When to look at a row again after its `failures`-th failed look-up in a row (0-based)."""
    return now + min(BACK_OFF_CAP, BACK_OFF_FIRST * 2 ** min(failures, 16))


async def back_off(session: AsyncSession, table: sa.Table, row_id: Any, failures: int, now: datetime) -> None:
    """Look at this row again later (doubling per failed look-up, capped), without touching its lease.
    `failures`: the row's `check_failures` as read."""
    await session.execute(sa.update(table).where(table.c.id == row_id).values(
        next_check_at=next_check(failures, now), check_failures=table.c.check_failures + 1))


async def check_later(session: AsyncSession, table: sa.Table, row_id: Any, when: datetime) -> None:
    """Not settled yet (still pending at the processor, or not listed yet): look again at `when`."""
    await session.execute(sa.update(table).where(table.c.id == row_id).values(next_check_at=when))


class SweptRow(Protocol):
    """What a sweep needs of a row: its id (for the log)."""

    @property
    def id(self) -> Any: ...


S = TypeVar("S", bound=SweptRow)


async def sweep(rows: Sequence[S], settle: Callable[[S], Awaitable[str]],
                back_off_row: Callable[[S], Awaitable[None]]) -> dict[str, int]:
    """Settle each row of a sweep, counting outcomes. A row that cannot be settled now (its processor
    unreachable, its credentials refused or unopenable, a bug) backs off on its own and never stops
    the others: the next sweep takes other rows first."""
    outcomes: dict[str, int] = {}
    for row in rows:
        try:
            outcome = await settle(row)
        except ProcessorError as exc:
            log.warning("sweep_lookup_failed", id=str(row.id), error=exc.message)
            outcome = "lookup_failed"
        except ProblemError as exc:  # e.g. a connection whose secret no configured key opens
            log.warning("sweep_row_refused", id=str(row.id), error=exc.detail)
            outcome = "lookup_failed"
        except Exception:
            log.exception("sweep_row_failed", id=str(row.id))
            outcome = "error"
        if outcome in ("lookup_failed", "error"):
            try:
                await back_off_row(row)
            except Exception:
                log.exception("sweep_back_off_failed", id=str(row.id))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


@dataclass(frozen=True)
class Sweep(Generic[S]):
    """One kind of row a sweeper settles: its rows, how to settle one, and the store's statement that
    backs one off (`back_off(session, row, now)`, run in a transaction of its own)."""

    name: str  # prefixes the outcome counts ("payment_completed")
    rows: Sequence[S]
    settle: Callable[[S], Awaitable[str]]
    back_off: Callable[[AsyncSession, S, datetime], Awaitable[None]]


async def sweep_all(unit_of_work: Callable[[], Any], sweeps: Sequence[Sweep[Any]], now: datetime) -> dict[str, int]:
    """Run each sweep; the counts of all of them, named `<sweep>_<outcome>`."""
    outcomes: dict[str, int] = {}
    for one in sweeps:
        async def back_off_row(row: Any, one: Sweep[Any] = one) -> None:
            async with unit_of_work() as uow:
                await one.back_off(uow.session, row, now)
                await uow.commit()

        for outcome, count in (await sweep(one.rows, one.settle, back_off_row)).items():
            outcomes[f"{one.name}_{outcome}"] = count
    return outcomes
