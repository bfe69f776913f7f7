"""Refunds of external transactions through the barber's own connection, for the router (internal
API), on the shared attempt pipeline (`shared.attempts`).

The refund is stored `pending` with its key (`hp-ext-refund-<id>`, its id from the router's
idempotency) before the call; only what the processor says succeeded moves money (200 succeeded,
202 pending, 422 `refund_failed`), and pending refunds count against what is refundable. An error
after the request may have been sent leaves the refund pending; a retry or the sweeper settles it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from litestar import Response

from services.external import store
from services.external.ledger import Ledger
from services.external.mapping import transaction_out
from services.external.processors import Adapters
from services.external.store import ConnectionRow, RefundRow, TransactionRow
from shared import attempts
from shared.errors import ProblemError, not_found, validation_error
from shared.internal_api import RefundOutcome, RefundRequest
from shared.lifecycle import RefundRefused, plan_refund
from shared.money import MoneyError, amount_field, format_amount
from shared.processors import base as p
from shared.service import ServiceRuntime


def refund_operation(adapter: p.PaymentProcessor, payment: TransactionRow,
                     refund: RefundRow) -> attempts.Operation[p.RefundResult]:
    request = p.RefundRequest(
        processor_payment_id=payment.external_transaction_id, amount=refund.amount,
        currency=payment.currency, idempotency_key=refund.processor_idempotency_key, reference=str(refund.id))
    return attempts.Operation(
        create=lambda: adapter.refund(request), retrieve=adapter.retrieve_refund,
        find=lambda: p.find_refund(adapter, request), processor=adapter)


def refund_pending_problem(outcome: attempts.Outcome[Any], *, transaction_id: str, refund_id: str) -> ProblemError:
    """A refund whose outcome this request did not learn: it stays pending (and counts as taken)."""
    problem = attempts.problem_for(outcome, fresh=False, transaction_id=transaction_id, who="the processor")
    return ProblemError(problem.status, problem.code, f"{outcome.message}; the refund stays pending. Retry with the "
                        "same Idempotency-Key to settle it (it will not refund twice).", transaction_id=transaction_id,
                        refund_id=refund_id, headers=problem.headers)


def refund_state(refund: RefundRow, *, fresh: bool = False) -> attempts.Attempt:
    return attempts.Attempt(processor_id=refund.processor_refund_id, created_at=refund.created_at, fresh=fresh)


class RefundService:
    def __init__(self, runtime: ServiceRuntime, adapters: Adapters, ledger: Ledger) -> None:
        self.rt = runtime
        self.adapters = adapters
        self.ledger = ledger

    async def refund(self, body: RefundRequest) -> Response[RefundOutcome]:
        payment, refund, connection, fresh = await self._open_refund(body)
        if refund.status == "pending":
            adapter = self.adapters.for_connection(connection)
            outcome = await attempts.call(refund_operation(adapter, payment, refund), refund_state(refund, fresh=fresh),
                                          now=datetime.now(UTC))
            await self._record(outcome, payment, refund, connection)
            payment, refund = await self._reload(payment.id, refund.id)
            if refund.status == "pending" and outcome.kind in ("refused", "unknown"):
                raise refund_pending_problem(outcome, transaction_id=str(payment.id), refund_id=str(refund.id))
        return self._answer(payment, refund)

    async def _record(self, outcome: attempts.Outcome[p.RefundResult], payment: TransactionRow, refund: RefundRow,
                      connection: ConnectionRow) -> None:
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            if outcome.kind == "answered" and outcome.result is not None:
                await self.ledger.record_refund(uow, connection, outcome.result, now=now)
            elif outcome.kind in ("declined", "rejected", "absent"):  # refused outright, or never seen: nothing moved
                await store.load_transaction(uow.session, payment.id, lock=True)
                current = await store.load_refund(uow.session, refund.id)
                if current is not None and current.status == "pending":
                    await store.update_refund(uow.session, refund.id, dict(
                        status="failed", failure_reason=outcome.message, updated_at=now))
            await uow.commit()

    async def _open_refund(self, body: RefundRequest) -> tuple[TransactionRow, RefundRow, ConnectionRow, bool]:
        """The stored refund this request is about (a retry finds its own again, with its lease
        taken), or a new pending one reserved against the locked payment; True when new."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            payment = await store.load_transaction(uow.session, body.transaction_id, lock=True)
            if payment is None:
                raise not_found(f"transaction {body.transaction_id}")
            connection = await store.load_connection(uow.session, payment.connection_id)
            if connection is None or not connection.supports_refunds:
                raise ProblemError(409, "not_refundable", "the barber's connection does not take refunds")
            refund = await store.load_refund(uow.session, body.refund_id)
            if refund is not None and refund.transaction_id != body.transaction_id:
                raise ProblemError(422, "idempotency_key_reused", "this Idempotency-Key refunded another payment")
            if refund is not None:
                refund = await store.touch_pending_refund(uow.session, refund.id, now) or refund
                await uow.commit()
                return payment, refund, connection, False
            currency = payment.currency
            try:
                requested = None if body.amount is None else amount_field("amount", body.amount, currency,
                                                                          max_amount=None)
            except MoneyError as exc:
                raise validation_error("amount", str(exc).removeprefix("amount: ")) from None
            _, pending = await store.refund_totals(uow.session, payment.id)
            try:
                amount = plan_refund(status=payment.status, amount=payment.amount,
                                     refunded_amount=payment.refunded_amount, pending_refunds=pending,
                                     requested=requested, currency=currency)
            except RefundRefused as refused:
                raise ProblemError(refused.status, refused.code, refused.detail) from None
            refund = await store.insert_refund(uow.session, dict(
                id=body.refund_id, transaction_id=payment.id, processor_type=payment.processor_type,
                connection_id=payment.connection_id, processor_payment_id=payment.external_transaction_id,
                amount=amount, currency=currency, status="pending",
                processor_idempotency_key=f"hp-ext-refund-{body.refund_id}", created_at=now, updated_at=now))
            await uow.commit()
        return payment, refund, connection, True

    async def _reload(self, transaction_id: uuid.UUID, refund_id: uuid.UUID) -> tuple[TransactionRow, RefundRow]:
        async with self.rt.uow() as uow:
            payment = await store.load_transaction(uow.session, transaction_id)
            refund = await store.load_refund(uow.session, refund_id)
        if payment is None or refund is None:
            raise not_found(f"refund {refund_id}")
        return payment, refund

    @staticmethod
    def _answer(payment: TransactionRow, refund: RefundRow) -> Response[RefundOutcome]:
        if refund.status == "failed":
            raise ProblemError(422, "refund_failed", f"the processor refused the refund: {refund.failure_reason}",
                               transaction_id=str(payment.id), refund_id=str(refund.id))
        out = RefundOutcome(transaction=transaction_out(payment), refund_id=refund.id,
                            refund_status=refund.status,
                            refund_amount=format_amount(refund.amount, payment.currency))
        return Response(out, status_code=200 if refund.status == "succeeded" else 202)
