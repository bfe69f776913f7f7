"""Refunds of centralized payments through the processor that took them, and their sweeper.

The refund is stored `pending` with its processor key (`hp-refund-<id>`) before the processor is
called, in the same shape as payments. Its id comes from the caller's `Idempotency-Key` (else it
is new), so a retry after a timeout finds the same stored refund and re-sends the same key: the
processor answers with the first refund instead of paying out twice.

Only what the processor says succeeded moves money: a `pending` refund raises nothing until it
settles, a `failed` one never does. Settling locks the payment row and computes its new refunded
total and status from that locked row (`domain.apply_refund`), so concurrent refunds add up.
Any error after the request may have been sent leaves the refund `pending` (outcome unknown);
the sweeper later looks it up at the processor and settles it, or fails it if the processor
never saw it.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from litestar import Response

from services.router import store
from services.router.mapping import external_refund_out, refund_out, transaction_recorded
from services.router.payments import PaymentService, processor_required
from services.router.settings import RouterSettings
from services.router.wire import RefundIn, RefundOut
from shared.auth import Principal
from shared.circuit import CircuitBoard
from shared.errors import ProblemError, not_found, validation_error
from shared.idempotency import Claim
from shared.lifecycle import RefundRefused, apply_refund, plan_refund
from shared.money import MoneyError, amount_field
from shared.processors.base import (
    InvalidCredentials,
    OutcomeUnknown,
    PaymentProcessor,
    ProcessorRequestError,
    ProcessorTimeout,
    ProcessorUnavailable,
    RefundRequest,
    RefundResult,
    find_refund,
)
from shared.scheduler import settle_each
from shared.service import ServiceRuntime

_REFUND_NAMESPACE = uuid.UUID("0c6f3f0e-9b7e-4d59-a0f0-6a3c1f9e2b17")

log = structlog.get_logger("router.refunds")


class RefundService:
    def __init__(self, runtime: ServiceRuntime, settings: RouterSettings, circuits: CircuitBoard,
                 processor: PaymentProcessor | None, payments: PaymentService) -> None:
        self.payments = payments
        self.rt = runtime
        self.settings = settings
        self.circuits = circuits
        self.processor = processor

    async def refund_payment(self, principal: Principal, transaction_id: uuid.UUID, body: RefundIn,
                             claim: Claim | None) -> Response[RefundOut]:
        refund_id = (uuid.uuid5(_REFUND_NAMESPACE, f"{claim.scope}\n{claim.key}\n{transaction_id}")
                     if claim else uuid.uuid4())
        async with self.rt.uow() as uow:
            local = await store.load_payment(uow.session, transaction_id)
        if local is None:  # not a platform payment: the external service refunds its own
            return await self._refund_external(principal, transaction_id, refund_id, body)
        processor = processor_required(self.processor)
        payment, refund = await self._open_refund(principal, transaction_id, refund_id, body)
        if refund["status"] == "pending":
            circuit = self.circuits.circuit("stripe")
            try:
                result = await processor.refund(RefundRequest(
                    processor_payment_id=payment["stripe_payment_intent_id"], amount=refund["amount"],
                    currency=payment["currency"], idempotency_key=refund["processor_idempotency_key"],
                    reference=str(refund["id"]), reverse_platform_fee=True,
                ))
            except (ProcessorRequestError, InvalidCredentials) as exc:  # refused outright: it moved nothing
                circuit.record_success()
                payment, refund = await self._settle(refund["id"], "failed", None, exc.message)
                return self._answer(payment, refund, claim)
            except (OutcomeUnknown, ProcessorUnavailable) as exc:
                circuit.record_failure(time.monotonic())
                timeout = isinstance(exc, ProcessorTimeout)
                raise ProblemError(
                    504 if timeout else 502, "processor_timeout" if timeout else "processor_outcome_unknown",
                    f"{exc.message}; the refund stays pending. Retry with the same Idempotency-Key to settle it "
                    "(it will not refund twice).", transaction_id=str(transaction_id), refund_id=str(refund["id"]),
                ) from None
            circuit.record_success()
            payment, refund = await self._settle_result(refund["id"], result)
        return self._answer(payment, refund, claim)

    async def _refund_external(self, principal: Principal, transaction_id: uuid.UUID, refund_id: uuid.UUID,
                               body: RefundIn) -> Response[RefundOut]:
        await self.payments.external_transaction(principal, transaction_id)  # 404 unless it is the caller's
        status, outcome = await self.payments.external.refund(transaction_id, refund_id, body.amount)
        return Response(external_refund_out(outcome), status_code=status)

    async def _open_refund(self, principal: Principal, transaction_id: uuid.UUID, refund_id: uuid.UUID,
                           body: RefundIn) -> tuple[dict[str, Any], dict[str, Any]]:
        """The stored refund this request is about (a retry finds its own again, with its lease
        taken), or a new pending one reserved against the locked payment."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            payment = await store.load_payment(uow.session, transaction_id, lock=True)
            if payment is None or (principal.role == "barber" and payment["barber_id"] != principal.barber_id):
                raise not_found(f"transaction {transaction_id}")
            refund = await store.load_refund(uow.session, refund_id)
            if refund is not None and refund["payment_id"] != transaction_id:
                raise ProblemError(422, "idempotency_key_reused", "this Idempotency-Key refunded another payment")
            if refund is not None:
                refund = await store.touch_pending_refund(uow.session, refund_id, now) or refund
            else:
                currency = payment["currency"]
                try:
                    requested = None if body.amount is None else amount_field("amount", body.amount, currency,
                                                                              max_amount=None)
                except MoneyError as exc:
                    raise validation_error("amount", str(exc).removeprefix("amount: ")) from None
                try:
                    amount = plan_refund(
                        status=payment["status"], amount=payment["amount"],
                        refunded_amount=payment["refunded_amount"],
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
        return payment, refund

    async def _settle_result(self, refund_id: uuid.UUID, result: RefundResult, *,
                             untouched_since: datetime | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        return await self._settle(refund_id, result.status, result.processor_refund_id, result.failure_reason,
                                  untouched_since=untouched_since)

    async def _settle(self, refund_id: uuid.UUID, status: str, processor_refund_id: str | None,
                      failure_reason: str | None, *, untouched_since: datetime | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Record the processor's word on a pending refund. Succeeded: raise the payment's refunded
        total from its locked row and emit `transaction.recorded`, in the same transaction."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            refund = await store.load_refund(uow.session, refund_id)
            assert refund is not None
            # The payment first, always: every refund settlement of one payment queues here.
            payment = await store.load_payment(uow.session, refund["payment_id"], lock=True)
            assert payment is not None
            values: dict[str, Any] = {"status": status, "updated_at": now}
            if processor_refund_id:
                values["stripe_refund_id"] = processor_refund_id
            if status == "failed":
                values["failure_reason"] = failure_reason or "refused by the processor"
            settled = await store.settle_refund(uow.session, refund_id, values, untouched_since=untouched_since)
            if settled is None:  # settled by someone else first (or touched, for the sweeper): theirs stands
                await uow.commit()
                return payment, refund
            if status == "succeeded":
                refunded, new_status = apply_refund(amount=payment["amount"], refunded_amount=payment["refunded_amount"],
                                                    refund=settled["amount"])
                payment = await store.record_refunded(uow.session, payment["id"], refunded, new_status, now)
                uow.emit(transaction_recorded(payment, refund_amount=settled["amount"]))
            await uow.commit()
        return payment, settled

    def _answer(self, payment: dict[str, Any], refund: dict[str, Any], claim: Claim | None) -> Response[RefundOut]:
        """200 succeeded, 202 still pending at the processor, 422 `refund_failed` (all remembered)."""
        out = refund_out(payment, refund)
        if refund["status"] == "failed":
            raise ProblemError(422, "refund_failed", f"the processor refused the refund: {refund['failure_reason']}",
                               transaction_id=str(payment["id"]), refund_id=str(refund["id"]))
        status = 200 if refund["status"] == "succeeded" else 202
        return Response(out, status_code=status)

    # ---- the sweeper -----------------------------------------------------------------------------

    async def sweep_pending(self, now: datetime) -> dict[str, int]:
        """Settle every refund left pending and untouched for `pending_sweep_after` seconds."""
        if self.processor is None:
            return {}
        untouched_since = now - timedelta(seconds=self.settings.pending_sweep_after)
        async with self.rt.uow() as uow:
            refunds = await store.pending_refunds(uow.session, untouched_since, limit=200)
        outcomes = await settle_each(refunds, lambda refund: self._sweep_one(refund, untouched_since))
        if outcomes:
            log.info("pending_refunds_swept", **outcomes)
        return outcomes

    async def _sweep_one(self, refund: dict[str, Any], untouched_since: datetime) -> str:
        processor = self.processor
        assert processor is not None
        if refund["stripe_refund_id"]:
            result: RefundResult | None = await processor.retrieve_refund(refund["stripe_refund_id"])
        else:
            async with self.rt.uow() as uow:
                payment = await store.load_payment(uow.session, refund["payment_id"])
            assert payment is not None
            result = await find_refund(processor, payment["stripe_payment_intent_id"], str(refund["id"]))
        if result is None:  # the processor never saw it: no money moved
            _, settled = await self._settle(refund["id"], "failed", None, "not found at the processor",
                                            untouched_since=untouched_since)
        else:
            _, settled = await self._settle_result(refund["id"], result, untouched_since=untouched_since)
        return settled["status"]

