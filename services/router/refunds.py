"""Refunds through the processor that took the payment: the platform's Stripe for centralized
payments (on the shared attempt pipeline, `shared.attempts`), the external service for the others.

The refund is stored `pending` with its processor key (`hp-refund-<id>`) before Stripe is called,
in the same shape as payments. Its id comes from the caller's `Idempotency-Key` (else it is new),
so a retry after a timeout finds the same stored refund and re-sends the same key (or retrieves it,
once Stripe named it): Stripe answers with the first refund instead of paying out twice.

Only what Stripe says succeeded moves money: a `pending` refund raises nothing until it settles,
a `failed` one never does. Settling locks the payment row and computes its new refunded total and
status from that locked row (`shared.lifecycle.apply_refund`), so concurrent refunds add up. Any
error after the request may have been sent leaves the refund `pending`; the sweeper settles it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from litestar import Response

from services.router import store
from services.router.external import ExternalPayments
from services.router.lookups import TransactionLookups
from services.router.mapping import external_refund_out, refund_out, transaction_recorded
from services.router.payments import processor_required
from services.router.store import PaymentRow, RefundRow
from services.router.wire import RefundIn, RefundOut
from shared import attempts
from shared.auth import Principal
from shared.circuit import PLATFORM, CircuitBoard
from shared.errors import ProblemError, not_found, validation_error
from shared.idempotency import Claim
from shared.lifecycle import RefundRefused, apply_refund, plan_refund
from shared.money import MoneyError, amount_field
from shared.processors.base import PaymentProcessor, RefundRequest, RefundResult, find_refund
from shared.service import ServiceRuntime

_REFUND_NAMESPACE = uuid.UUID("0c6f3f0e-9b7e-4d59-a0f0-6a3c1f9e2b17")


def refund_operation(processor: PaymentProcessor, payment: PaymentRow,
                     refund: RefundRow) -> attempts.Operation[RefundResult]:
    intent_id = payment.stripe_payment_intent_id
    if intent_id is None:  # cannot be: only a completed payment is refunded, and it names its PaymentIntent
        raise RuntimeError(f"payment {payment.id} has no PaymentIntent to refund")
    request = RefundRequest(
        processor_payment_id=intent_id, amount=refund.amount,
        currency=payment.currency, idempotency_key=refund.processor_idempotency_key,
        reference=str(refund.id), reverse_platform_fee=True)
    return attempts.Operation(
        create=lambda: processor.refund(request), retrieve=processor.retrieve_refund,
        find=lambda: find_refund(processor, request),
        processor=processor)


def refund_state(refund: RefundRow, *, fresh: bool = False) -> attempts.Attempt:
    return attempts.Attempt(processor_id=refund.stripe_refund_id, created_at=refund.created_at, fresh=fresh)


class RefundService:
    def __init__(self, runtime: ServiceRuntime, circuits: CircuitBoard, processor: PaymentProcessor | None,
                 external: ExternalPayments, lookups: TransactionLookups) -> None:
        self.rt = runtime
        self.circuits = circuits
        self.processor = processor
        self.external = external
        self.lookups = lookups

    async def refund_payment(self, principal: Principal, transaction_id: uuid.UUID, body: RefundIn,
                             claim: Claim | None) -> Response[RefundOut]:
        refund_id = (uuid.uuid5(_REFUND_NAMESPACE, f"{claim.scope}\n{claim.key}\n{transaction_id}")
                     if claim else uuid.uuid4())
        async with self.rt.uow() as uow:
            local = await store.load_payment(uow.session, transaction_id)
        if local is None:  # not a platform payment: the external service refunds its own
            await self.lookups.external_transaction(principal, transaction_id)  # 404 unless it is the caller's
            status, outcome = await self.external.refund(transaction_id, refund_id, body.amount)
            return Response(external_refund_out(outcome), status_code=status)
        processor = processor_required(self.processor)
        payment, refund, fresh = await self._open_refund(principal, transaction_id, refund_id, body)
        if refund.status == "pending":
            outcome = await attempts.call(refund_operation(processor, payment, refund),
                                          refund_state(refund, fresh=fresh), now=datetime.now(UTC),
                                          circuit=self.circuits.circuit(PLATFORM))
            if outcome.kind == "answered" and outcome.result is not None:
                payment, refund = await self.settle_result(refund.id, outcome.result)
            elif outcome.kind in ("declined", "rejected", "absent"):  # refused outright or never seen: nothing moved
                payment, refund = await self.settle(refund.id, "failed", None, outcome.message)
            elif outcome.kind in ("refused", "unknown"):
                problem = attempts.problem_for(outcome, fresh=False, transaction_id=str(transaction_id), who="Stripe")
                raise ProblemError(problem.status, problem.code, f"{outcome.message}; the refund stays pending. Retry "
                                   "with the same Idempotency-Key to settle it (it will not refund twice).",
                                   transaction_id=str(transaction_id), refund_id=str(refund.id),
                                   headers=problem.headers)
        return self._answer(payment, refund)

    async def _open_refund(self, principal: Principal, transaction_id: uuid.UUID, refund_id: uuid.UUID,
                           body: RefundIn) -> tuple[PaymentRow, RefundRow, bool]:
        """The stored refund this request is about (a retry finds its own again, with its lease
        taken), or a new pending one reserved against the locked payment; True when new."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            payment = await store.load_payment(uow.session, transaction_id, lock=True)
            if payment is None or (principal.role == "barber" and payment.barber_id != principal.barber_id):
                raise not_found(f"transaction {transaction_id}")
            refund = await store.load_refund(uow.session, refund_id)
            if refund is not None and refund.payment_id != transaction_id:
                raise ProblemError(422, "idempotency_key_reused", "this Idempotency-Key refunded another payment")
            if refund is not None:
                refund = await store.touch_pending_refund(uow.session, refund_id, now) or refund
                await uow.commit()
                return payment, refund, False
            currency = payment.currency
            try:
                requested = None if body.amount is None else amount_field("amount", body.amount, currency,
                                                                          max_amount=None)
            except MoneyError as exc:
                raise validation_error("amount", str(exc).removeprefix("amount: ")) from None
            try:
                amount = plan_refund(
                    status=payment.status, amount=payment.amount, refunded_amount=payment.refunded_amount,
                    pending_refunds=await store.pending_refund_total(uow.session, transaction_id),
                    requested=requested, currency=currency)
            except RefundRefused as refused:
                raise ProblemError(refused.status, refused.code, refused.detail,
                                   **({"field": "amount"} if refused.code == "refund_exceeds_payment" else {})
                                   ) from None
            refund = await store.insert_refund(uow.session, dict(
                id=refund_id, payment_id=transaction_id, amount=amount, status="pending",
                processor_idempotency_key=f"hp-refund-{refund_id}", created_at=now, updated_at=now))
            await uow.commit()
        return payment, refund, True

    async def settle_result(self, refund_id: uuid.UUID, result: RefundResult, *,
                            untouched_since: datetime | None = None) -> tuple[PaymentRow, RefundRow]:
        return await self.settle(refund_id, result.status, result.processor_refund_id, result.failure_reason,
                                 untouched_since=untouched_since)

    async def settle(self, refund_id: uuid.UUID, status: str, processor_refund_id: str | None,
                     failure_reason: str | None, *,
                     untouched_since: datetime | None = None) -> tuple[PaymentRow, RefundRow]:
        """Record Stripe's word on a pending refund. Succeeded: raise the payment's refunded total
        from its locked row and emit `transaction.recorded`, in the same transaction. Still pending
        at Stripe: note its id (a retry or the sweeper retrieves it)."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            refund = await store.load_refund(uow.session, refund_id)
            # The payment first, always: every refund settlement of one payment queues here.
            payment = await store.load_payment(uow.session, refund.payment_id, lock=True) if refund else None
            if refund is None or payment is None:
                raise not_found(f"refund {refund_id}")
            values: store.Values = {"status": status, "updated_at": now}
            if processor_refund_id:
                values["stripe_refund_id"] = processor_refund_id
            if status == "failed":
                values["failure_reason"] = failure_reason or "refused by the processor"
            settled = await store.settle_refund(uow.session, refund_id, values, untouched_since=untouched_since)
            if settled is None:  # settled by someone else first (or touched, for the sweeper): theirs stands
                await uow.commit()
                return payment, refund
            if status == "succeeded":
                refunded, new_status = apply_refund(amount=payment.amount,
                                                    refunded_amount=payment.refunded_amount, refund=settled.amount)
                payment = await store.record_refunded(uow.session, payment.id, refunded, new_status, now)
                uow.emit(transaction_recorded(payment, refund_amount=settled.amount))
            await uow.commit()
        return payment, settled

    def _answer(self, payment: PaymentRow, refund: RefundRow) -> Response[RefundOut]:
        """200 succeeded, 202 still pending at the processor, 422 `refund_failed` (all remembered)."""
        out = refund_out(payment, refund)
        if refund.status == "failed":
            raise ProblemError(422, "refund_failed", f"the processor refused the refund: {refund.failure_reason}",
                               transaction_id=str(payment.id), refund_id=str(refund.id))
        return Response(out, status_code=200 if refund.status == "succeeded" else 202)
