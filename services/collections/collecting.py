"""Charging collections on the platform's Stripe account (`collection.due` -> an attempt), on the
shared attempt pipeline (`shared.attempts`), dunning, an operator's retry, and the sweeper.

The attempt (collection, attempt number) is committed `pending` with its Stripe key
(`hp-coll-<attempt id>`) before Stripe is called. How it charges (a saved payment method off-session,
else a debit of the barber's Connect account) and Stripe's id for what it made are kept on the
attempt as soon as they are known, so a pending one (a bank debit `processing` for days) is settled
by retrieving it, never by sending its create request again: that only replays the first answer,
and after Stripe's 24 h key lifetime it would charge twice. The outcome, the collection's new state
and `collection.settled` commit together, conditional on the attempt still being pending. A
collected collection is never charged again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog

from services.collections import store
from services.collections.domain import after_failure
from services.collections.mapping import collection_due, collection_out, collection_settled
from services.collections.settings import CollectionsSettings
from services.collections.store import AttemptRow, BarberSettingsRow, ChargeMethod, CollectionRow, PaymentMethodRow
from services.collections.wire import CollectionOut
from shared import attempts
from shared.auth import Principal
from shared.errors import ProblemError, not_found
from shared.events import CollectionDue, Event
from shared.idempotency import Claim
from shared.observability import COLLECTION_ATTEMPTS
from shared.operations import audit
from shared.outbox import UnitOfWork
from shared.processors import base as p
from shared.processors.base import key_lifetime
from shared.service import ServiceRuntime

log = structlog.get_logger("collections")
Clock = Callable[[], datetime]
Values = dict[str, Any]
CLOCK_SKEW = timedelta(minutes=5)


def charge_operation(processor: p.PlatformProcessor, attempt: AttemptRow, collection: CollectionRow, source: str,
                     customer: str | None, *, timeout: float) -> attempts.Operation[p.PaymentResult]:
    """How the pipeline makes, retrieves and finds this attempt's charge: an off-session PaymentIntent
    on the saved payment method, or a debit of the Connect account (`attempt.method`)."""
    request = p.PaymentRequest(
        amount=collection.amount, currency=collection.currency, payment_method=source,
        idempotency_key=attempt.processor_idempotency_key, reference=str(attempt.id), customer=customer,
        off_session=attempt.method == "payment_method",
        description=f"Platform commission, collection {collection.id}",
        metadata={"collection_id": str(collection.id), "barber_id": str(collection.barber_id),
                  "attempt": str(attempt.attempt)},
    )
    since = attempt.created_at - CLOCK_SKEW
    until = max(attempt.updated_at, attempt.created_at) + timedelta(seconds=timeout) + CLOCK_SKEW
    if attempt.method == "connect_debit":
        return attempts.Operation(
            create=lambda: processor.debit_connected_account(request), retrieve=processor.retrieve_debit,
            find=lambda: p.find_debit(processor, str(attempt.id), since=since, until=until), processor=processor)
    return attempts.Operation(
        create=lambda: processor.create_payment(request), retrieve=processor.retrieve_payment,
        find=lambda: p.find_payment(processor, str(attempt.id), since=since, until=until), processor=processor)


class CollectingService:
    def __init__(self, runtime: ServiceRuntime, settings: CollectionsSettings, processor: p.PlatformProcessor | None,
                 *, clock: Clock) -> None:
        self.rt = runtime
        self.settings = settings
        self.processor = processor
        self.clock = clock
        self._drives: set[asyncio.Task] = set()

    async def apply_collection_due(self, uow: UnitOfWork, event: Event) -> None:
        """Record the attempt this event asks for (once) and drive it after commit."""
        due = event.decode(CollectionDue)
        session = uow.session
        collection = await store.load_collection(session, uuid.UUID(due.collection_id), lock=True)
        if collection is None:
            raise ValueError(f"collection.due for an unknown collection {due.collection_id}")
        if collection.status == "collected":
            return  # paid already: never charged again
        attempt = await store.attempt_of(session, collection.id, due.attempt)
        if attempt is None:
            attempt_id = uuid.uuid4()
            now = self.clock()
            attempt = await store.insert_attempt(session, dict(
                id=attempt_id, collection_id=collection.id, attempt=due.attempt, status="pending",
                processor_idempotency_key=f"hp-coll-{attempt_id}", created_at=now,
                # Backdated: nobody drives it until after commit, and the sweeper may take it then.
                updated_at=now - timedelta(seconds=self.settings.pending_sweep_after)))
        if attempt is not None and attempt.status == "pending":
            uow.after_commit(lambda: self._spawn(attempt.id))

    def _spawn(self, attempt_id: uuid.UUID) -> None:
        task = asyncio.create_task(self.drive(attempt_id))
        self._drives.add(task)
        task.add_done_callback(self._drives.discard)

    async def drive(self, attempt_id: uuid.UUID, *, sweeping: bool = False) -> str:
        """Take the attempt's lease and learn its outcome: retrieve what Stripe already named; else
        (the sweeper) find it by our reference first; send it (with its own key) only while Stripe
        has no trace of it and the key is surely still kept."""
        now = self.clock()
        async with self.rt.uow() as uow:
            attempt = await store.touch_pending_attempt(uow.session, attempt_id, now)
            if attempt is None:
                await uow.commit()
                return "settled"
            collection = await store.load_collection(uow.session, attempt.collection_id)
            barber = await store.load_settings(uow.session, collection.barber_id) if collection else None
            method = await store.load_payment_method(uow.session, collection.barber_id) if collection else None
            source, customer, how = _how_to_charge(attempt, method, barber)
            if attempt.method is None and how is not None:  # fixed for good: a look-up asks for this
                attempt = await store.note_attempt(uow.session, attempt.id, {"method": how}) or attempt
            await uow.commit()
        if collection is None:
            return "skipped"
        if collection.status == "collected":
            return await self._settle(attempt, collection, "failed", None, None, "already collected")
        if how is None or source is None:
            COLLECTION_ATTEMPTS.labels("no_payment_method").inc()
            return await self._settle(attempt, collection, "failed", None, None, "no_payment_method")
        if self.processor is None:
            return await self._settle(attempt, collection, "failed", how, None, "processor_not_configured")
        op = charge_operation(self.processor, attempt, collection, source, customer,
                              timeout=self.settings.stripe_timeout)
        state = attempts.Attempt(processor_id=attempt.payment_intent_id, created_at=attempt.created_at)
        if sweeping:
            outcome = await attempts.look_up(op, state, now=now)
            if outcome.kind == "absent" and now - attempt.created_at < key_lifetime(self.processor) / 2:
                outcome = await attempts.call(op, state, now=now)  # Stripe never saw it: send it now, same key
        else:
            outcome = await attempts.call(op, state, now=now)
        return await self._record(attempt, collection, how, outcome)

    async def _record(self, attempt: AttemptRow, collection: CollectionRow, how: str,
                      outcome: attempts.Outcome[p.PaymentResult]) -> str:
        result = outcome.result
        if outcome.kind == "answered" and result is not None:
            if result.status == "completed":
                COLLECTION_ATTEMPTS.labels("collected").inc()
                return await self._settle(attempt, collection, "succeeded", how, result.processor_payment_id, None)
            if result.status == "pending":  # keep Stripe's id: it is retrieved from now on
                await self._pending(attempt, {"payment_intent_id": result.processor_payment_id})
                return "pending"
            COLLECTION_ATTEMPTS.labels("failed").inc()
            return await self._settle(attempt, collection, "failed", how, result.processor_payment_id,
                                      result.failure_code or result.status)
        if outcome.kind == "declined":
            COLLECTION_ATTEMPTS.labels("declined").inc()
            error = outcome.error
            return await self._settle(attempt, collection, "failed", how,
                                      error.processor_payment_id if isinstance(error, p.PaymentDeclined) else None,
                                      (error.code if error else None) or outcome.message)
        if outcome.kind in ("rejected", "absent"):
            COLLECTION_ATTEMPTS.labels("error").inc()
            reason = (outcome.error.code if outcome.error else None) or outcome.message
            return await self._settle(attempt, collection, "failed", how, None,
                                      "never reached Stripe" if outcome.kind == "absent" else reason)
        # Unknown, refused this time, or not listed yet: it stays pending; the sweeper looks it up.
        COLLECTION_ATTEMPTS.labels("unknown").inc()
        log.warning("collection_attempt_unknown", attempt_id=str(attempt.id), error=outcome.message)
        await self._pending(attempt, {})
        return "pending"

    async def _pending(self, attempt: AttemptRow, values: Values) -> None:
        """Still pending: note what is known, and look again a sweep interval from now."""
        later = self.clock() + timedelta(seconds=self.settings.pending_sweep_after)
        async with self.rt.uow() as uow:
            await store.note_attempt(uow.session, attempt.id, {**values, "next_check_at": later})
            await uow.commit()

    async def _settle(self, attempt: AttemptRow, collection: CollectionRow, outcome: str, method: str | None,
                      payment_intent_id: str | None, reason: str | None) -> str:
        now = self.clock()
        async with self.rt.uow() as uow:
            current = await store.load_collection(uow.session, collection.id, lock=True)
            settled = await store.settle_attempt(uow.session, attempt.id, dict(
                status=outcome, method=method or attempt.method,
                payment_intent_id=payment_intent_id or attempt.payment_intent_id, failure_reason=reason,
                updated_at=now))
            if settled is None or current is None:  # someone settled it first
                await uow.commit()
                return "settled"
            if current.status == "collected":
                await uow.commit()
                return "collected"
            if outcome == "succeeded":
                values = dict(status="collected", collected_at=now, payment_intent_id=settled.payment_intent_id,
                              collection_method=settled.method, failed_reason=None, next_attempt_at=None,
                              attempts=max(current.attempts, attempt.attempt), updated_at=now)
            else:
                first_failed = current.first_failed_at or now
                after = after_failure(attempts=attempt.attempt, first_failed_at=first_failed,
                                      retry_days=self.settings.retry_days)
                values = dict(status=after.status, failed_reason=reason, first_failed_at=first_failed,
                              next_attempt_at=after.next_attempt_at, collection_method=settled.method,
                              attempts=max(current.attempts, attempt.attempt), updated_at=now)
            row = await store.update_collection(uow.session, current.id, values)
            uow.emit(collection_settled(row))
            await uow.commit()
        log.info("collection_settled", collection_id=str(row.id), status=row.status, attempt=attempt.attempt)
        return row.status

    async def dunning(self, now: datetime) -> int:
        """Failed collections whose next attempt is due: ask for it (`collection.due`)."""
        async with self.rt.uow() as uow:
            due = await store.retries_due(uow.session, now, limit=500)
            for row in due:
                row = await store.update_collection(uow.session, row.id, {"next_attempt_at": None,
                                                                             "updated_at": now})
                uow.emit(collection_due(row, attempt=row.attempts + 1))
            await uow.commit()
        return len(due)

    async def retry(self, collection_id: uuid.UUID, claim: Claim | None = None,
                    actor: Principal | None = None) -> CollectionOut:
        """An operator's "try again now" for a failed or overdue collection; under an
        Idempotency-Key the answer is remembered with the attempt it asked for."""
        now = self.clock()
        async with self.rt.uow() as uow:
            row = await store.load_collection(uow.session, collection_id, lock=True)
            if row is None:
                raise not_found(f"collection {collection_id}")
            if row.status not in ("failed", "overdue"):
                raise ProblemError(409, "not_retryable", f"a {row.status} collection is not retried")
            pending = await store.attempt_of(uow.session, row.id, row.attempts + 1)
            if pending is None:
                row = await store.update_collection(uow.session, row.id, {"next_attempt_at": None,
                                                                             "updated_at": now})
                uow.emit(collection_due(row, attempt=row.attempts + 1))
            out = collection_out(row)
            if actor is not None:
                audit(uow, actor, "collection.retry", f"collection:{collection_id}", {"status": row.status,
                      "attempts": row.attempts}, {"attempt_asked": row.attempts + 1, "already_pending": pending is not None})
            if claim:
                claim.record(uow, 200, out)
            await uow.commit()
        return out

    async def sweep_pending(self, now: datetime) -> int:
        """Attempts nobody drove to an outcome (a crash, a timeout, a charge still processing):
        looked up at Stripe; one whose look-up fails backs off on its own."""
        untouched_since = now - timedelta(seconds=self.settings.pending_sweep_after)
        async with self.rt.uow() as uow:
            rows = await store.pending_attempts(uow.session, untouched_since, now, limit=200)
        outcomes = await attempts.sweep_all(self.rt.uow, [
            attempts.Sweep("attempt", rows, lambda row: self.drive(row.id, sweeping=True), store.back_off_attempt),
        ], now)
        if outcomes:
            log.info("collection_attempts_swept", **outcomes)
        return len(rows)

    async def close(self) -> None:
        if self._drives:
            await asyncio.wait(self._drives, timeout=5)


def _how_to_charge(attempt: AttemptRow, method: PaymentMethodRow | None,
                   barber: BarberSettingsRow | None) -> tuple[str | None, str | None, ChargeMethod | None]:
    """(source, customer, how) for an attempt: the saved payment method, else the Connect account;
    an attempt already driven keeps the way it was first charged."""
    connect = barber.connect_account_id if barber else None
    how = attempt.method or ("payment_method" if method is not None else "connect_debit" if connect else None)
    if how == "payment_method" and method is not None:
        return method.stripe_payment_method_id, method.stripe_customer_id, how
    if how == "connect_debit" and connect:
        return connect, None, how
    return None, None, how
