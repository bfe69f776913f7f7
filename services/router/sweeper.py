"""The sweeper: settles platform payments and refunds that nobody came back for (left pending and
untouched for `PENDING_SWEEP_AFTER`), in one replica at a time.

It never races a live call (only rows untouched for a while, and the settle is conditional on that),
and it never creates anything again: it looks the payment or refund up at Stripe (by id, or by our
reference, `shared.attempts.look_up`) and records what Stripe says. One Stripe has no trace of never
reached it: it fails (a payment without an event: it is no payment). One still pending at Stripe is
looked at again a sweep interval later; one whose look-up fails backs off on its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from services.router import store
from services.router.payments import PaymentService, payment_operation, payment_state
from services.router.refunds import RefundService, refund_operation, refund_state
from services.router.settings import RouterSettings
from services.router.store import PaymentRow, RefundRow
from shared import attempts
from shared.processors.base import PaymentProcessor
from shared.service import ServiceRuntime

log = structlog.get_logger("router.sweeper")


class Sweeper:
    def __init__(self, runtime: ServiceRuntime, settings: RouterSettings, processor: PaymentProcessor | None,
                 payments: PaymentService, refunds: RefundService) -> None:
        self.rt = runtime
        self.settings = settings
        self.processor = processor
        self.payments = payments
        self.refunds = refunds

    async def sweep_pending(self, now: datetime) -> dict[str, int]:
        """Settle every attempt and refund left pending and untouched for `pending_sweep_after` seconds."""
        if self.processor is None:
            return {}
        untouched_since = now - timedelta(seconds=self.settings.pending_sweep_after)
        async with self.rt.uow() as uow:
            payments = await store.pending_attempts(uow.session, untouched_since, now, limit=200)
            refunds = await store.pending_refunds(uow.session, untouched_since, now, limit=200)
        outcomes = await attempts.sweep_all(self.rt.uow, [
            attempts.Sweep("payment", payments, lambda row: self._payment(row, now, untouched_since),
                           store.back_off_payment),
            attempts.Sweep("refund", refunds, lambda row: self._refund(row, now, untouched_since),
                           store.back_off_refund),
        ], now)
        if outcomes:
            log.info("pending_swept", **outcomes)
        return outcomes

    async def _later(self, check_later, row_id, now: datetime) -> None:
        async with self.rt.uow() as uow:
            await check_later(uow.session, row_id, now + timedelta(seconds=self.settings.pending_sweep_after))
            await uow.commit()

    async def _payment(self, payment: PaymentRow, now: datetime, untouched_since: datetime) -> str:
        processor = self.processor
        if processor is None:
            return "skipped"
        outcome = await attempts.look_up(payment_operation(processor, payment, timeout=self.settings.stripe_timeout),
                                         payment_state(payment), now=now)
        if outcome.kind == "not_yet":
            await self._later(store.check_payment_later, payment.id, now)
            return "pending"
        if outcome.kind == "absent" or outcome.result is None:  # Stripe never saw it: nothing was charged
            row = await self.payments.settle(payment, "failed", None, failure=(
                "not_found_at_processor", "the processor has no payment for this attempt"),
                untouched_since=untouched_since, reached=False)
        else:
            row = await self.payments.settle_result(payment, outcome.result, untouched_since=untouched_since)
        if row.status == "pending":
            await self._later(store.check_payment_later, payment.id, now)
        return row.status

    async def _refund(self, refund: RefundRow, now: datetime, untouched_since: datetime) -> str:
        processor = self.processor
        if processor is None:
            return "skipped"
        async with self.rt.uow() as uow:
            payment = await store.load_payment(uow.session, refund.payment_id)
        if payment is None:
            return "skipped"
        outcome = await attempts.look_up(refund_operation(processor, payment, refund), refund_state(refund), now=now)
        if outcome.kind == "not_yet":
            await self._later(store.check_refund_later, refund.id, now)
            return "pending"
        if outcome.kind == "absent" or outcome.result is None:  # Stripe never saw it: no money moved
            _, settled = await self.refunds.settle(refund.id, "failed", None, "not found at the processor",
                                                   untouched_since=untouched_since)
        else:
            _, settled = await self.refunds.settle_result(refund.id, outcome.result, untouched_since=untouched_since)
        if settled.status == "pending":
            await self._later(store.check_refund_later, refund.id, now)
        return settled.status
