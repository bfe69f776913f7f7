"""The sweeper: settles our attempts and refunds that nobody came back for (left pending and
untouched for `PENDING_SWEEP_AFTER`), in one replica at a time.

It only looks them up, never creates them again (`shared.attempts.look_up`): by the processor's id,
else by our reference. One the processor has no trace of (once its listing cannot lag any more)
never reached it: it fails, without an event for a payment (it is no payment). One still pending at
the processor is looked at again a sweep interval later; one whose look-up fails (the processor
down, the credentials refused or unopenable) backs off on its own and never holds up the others.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from services.external import store
from services.external.charges import attempt_state, payment_operation
from services.external.ledger import NOT_FOUND, Ledger
from services.external.processors import Adapters
from services.external.refunds import refund_operation, refund_state
from services.external.settings import ExternalSettings
from services.external.store import RefundRow, TransactionRow
from shared import attempts
from shared.processors.base import listing_lag
from shared.service import ServiceRuntime

log = structlog.get_logger("external.sweeper")


class Sweeper:
    def __init__(self, runtime: ServiceRuntime, settings: ExternalSettings, adapters: Adapters,
                 ledger: Ledger) -> None:
        self.rt = runtime
        self.settings = settings
        self.adapters = adapters
        self.ledger = ledger

    async def sweep_pending(self, now: datetime) -> dict[str, int]:
        untouched_since = now - timedelta(seconds=self.settings.pending_sweep_after)
        async with self.rt.uow() as uow:
            payments = await store.pending_attempts(uow.session, untouched_since, now, limit=200)
            refunds = await store.pending_refunds(uow.session, untouched_since, now, limit=200)
        outcomes = await attempts.sweep_all(self.rt.uow, [
            attempts.Sweep("payment", payments, lambda row: self._payment(row, now, untouched_since),
                           store.back_off_attempt),
            attempts.Sweep("refund", refunds, lambda row: self._refund(row, now, untouched_since),
                           store.back_off_refund),
        ], now)
        if outcomes:
            log.info("external_pending_swept", **outcomes)
        return outcomes

    def _again(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.settings.pending_sweep_after)

    async def _payment(self, attempt: TransactionRow, now: datetime, untouched_since: datetime) -> str:
        async with self.rt.uow() as uow:
            connection = await store.load_connection(uow.session, attempt.connection_id)
        if connection is None:
            return "skipped"
        adapter = self.adapters.for_connection(connection)
        outcome = await attempts.look_up(payment_operation(adapter, attempt, timeout=self.settings.processor_timeout),
                                         attempt_state(attempt), now=now)
        async with self.rt.uow() as uow:
            current = await store.load_transaction(uow.session, attempt.id, lock=True)
            if current is None or current.status != "pending" or current.updated_at >= untouched_since:
                await uow.commit()  # settled or touched meanwhile: theirs stands
                return "skipped"
            if outcome.kind == "not_yet":  # not listed yet, but this processor's listing lags
                await store.check_attempt_later(uow.session, attempt.id, now + listing_lag(adapter) / 4)
                status = "pending"
            elif outcome.kind == "absent":  # the processor never saw it: nothing was charged, no payment
                await store.settle_unsent(uow.session, attempt.id, "not_found_at_processor",
                                          "the processor has no payment for this attempt", now)
                status = "failed"
            else:
                row = await self.ledger.record_payment(uow, connection, outcome.result, origin="api", now=now) \
                    if outcome.result is not None else None
                status = row.status if row else "skipped"
                if status == "pending":
                    await store.check_attempt_later(uow.session, attempt.id, self._again(now))
            await uow.commit()
        return status

    async def _refund(self, refund: RefundRow, now: datetime, untouched_since: datetime) -> str:
        async with self.rt.uow() as uow:
            payment = await store.load_transaction(uow.session, refund.transaction_id)
            connection = await store.load_connection(uow.session, payment.connection_id) if payment else None
        if payment is None or connection is None:
            return "skipped"
        adapter = self.adapters.for_connection(connection)
        outcome = await attempts.look_up(refund_operation(adapter, payment, refund), refund_state(refund), now=now)
        async with self.rt.uow() as uow:
            await store.load_transaction(uow.session, payment.id, lock=True)
            current = await store.load_refund(uow.session, refund.id)
            if current is None or current.status != "pending" or current.updated_at >= untouched_since:
                await uow.commit()
                return "skipped"
            if outcome.kind == "not_yet":
                await store.check_refund_later(uow.session, refund.id, now + listing_lag(adapter) / 4)
                status = "pending"
            elif outcome.kind == "absent":
                await store.update_refund(uow.session, refund.id, dict(
                    status="failed", failure_reason=NOT_FOUND, updated_at=now))
                status = "failed"
            else:
                if outcome.result is not None:
                    await self.ledger.record_refund(uow, connection, outcome.result, now=now)
                status = outcome.result.status if outcome.result is not None else "skipped"
                if status == "pending":
                    await store.check_refund_later(uow.session, refund.id, self._again(now))
            await uow.commit()
        return status
