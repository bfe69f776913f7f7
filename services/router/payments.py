"""Centralized payments on the platform's Stripe account: `/process`, lookups, and the sweeper
that settles attempts whose outcome nobody learned.

An attempt is committed `pending` with its processor idempotency key (`hp-pay-<id>`) before the
processor is called; whoever calls the processor first takes the attempt's lease (touches
`updated_at`), and the outcome plus its `transaction.recorded` commit together with
`UPDATE ... WHERE status = 'pending'`. A retry finds the same attempt and re-sends the same key, so
it never charges twice. The sweeper only settles attempts untouched for `pending_sweep_after`
seconds, so it never races a live call: it looks the payment up at the processor (by id, or by
our reference) and records what the processor says; an attempt the processor never saw failed.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import structlog

from services.router import store
from services.router.external import ExternalPayments, nothing_happened
from services.router.mapping import (
    external_process_out,
    external_transaction_out,
    process_out,
    transaction_out,
    transaction_recorded,
)
from services.router.routing import BarberContexts, RoutingService
from services.router.settings import RouterSettings
from services.router.wire import FallbackOut, ProcessIn, ProcessOut, TransactionOut, TransactionPage
from shared.auth import Principal
from shared.circuit import CircuitBoard
from shared.errors import ProblemError, not_found
from shared.idempotency import Claim
from shared.lifecycle import settled_status
from shared.pagination import page_of
from shared.processors.base import (
    InvalidCredentials,
    OutcomeUnknown,
    PaymentDeclined,
    PaymentProcessor,
    PaymentRequest,
    PaymentResult,
    ProcessorRequestError,
    ProcessorTimeout,
    ProcessorUnavailable,
    find_payment,
)
from shared.scheduler import settle_each
from shared.service import ServiceRuntime

log = structlog.get_logger("router.payments")
_ROUTE_NAMESPACE = uuid.UUID("6f0b7a52-3f0e-4c55-9d55-6a1f2d0c9e41")
# How far before an attempt's creation the processor's clock may put the payment (clock skew).
_CLOCK_SKEW = timedelta(minutes=5)


def processor_required(processor: PaymentProcessor | None) -> PaymentProcessor:
    if processor is None:
        raise ProblemError(503, "processor_not_configured", "STRIPE_SECRET_KEY is not set for the platform account")
    return processor


class PaymentService:
    def __init__(self, runtime: ServiceRuntime, settings: RouterSettings, contexts: BarberContexts,
                 routing: RoutingService, circuits: CircuitBoard, processor: PaymentProcessor | None,
                 external: ExternalPayments) -> None:
        self.external = external
        self.rt = runtime
        self.settings = settings
        self.contexts = contexts
        self.routing = routing
        self.circuits = circuits
        self.processor = processor

    # ---- /process ------------------------------------------------------------------------------

    async def process_payment(self, principal: Principal, body: ProcessIn, claim: Claim | None) -> ProcessOut:
        decision = None
        if body.route_id is None:
            # Route and pay at once. Under an Idempotency-Key the route id is derived from the key
            # and the request, so a retry after a timeout finds the same route (and its pending
            # charge) again, and is not decided afresh (the rules may say otherwise by now); a key
            # reused for another request later (keys expire) makes another route.
            derived = (uuid.uuid5(_ROUTE_NAMESPACE, f"{claim.scope}\n{claim.key}\n{claim.fingerprint}")
                       if claim else None)
            if derived is not None:
                async with self.rt.uow() as uow:
                    decision = await store.load_decision(uow.session, derived)
                if decision is not None:
                    decision = await self.routing.load_decision(principal, derived)  # the owner's only
            if decision is None:
                route_id = (await self.routing.route_payment(principal, body.as_route(), None,
                                                             route_id=derived)).route_id
                decision = await self.routing.load_decision(principal, route_id)
        else:
            decision = await self.routing.load_decision(principal, body.route_id)
        if decision["payment_type"] == "external":
            return await self._charge_external(decision, body.payment_method, claim)
        return await self._charge_centralized(decision, body.payment_method, claim)

    async def _charge_external(self, decision: dict[str, Any], payment_method: str, claim: Claim | None
                               ) -> ProcessOut:
        """Through the external service on the barber's own processor. When that processor surely
        did nothing (refused connection, unusable connection, the external service unreachable) and
        the barber has fallback on, the platform takes the payment instead: both attempts stay on
        record and the answer says so."""
        if await self._claim_channel(decision) == "platform":  # fallen back before: the platform's now
            return await self._charge_centralized(decision, payment_method, claim)
        circuit = self.circuits.circuit(decision["processor"])
        try:
            tx = await self.external.charge(decision, payment_method)
        except ProblemError as problem:
            if problem.status >= 500:
                circuit.record_failure(time.monotonic())
            elif problem.code in ("payment_declined", "processor_rejected"):
                circuit.record_success()
            context = await self.contexts.get(decision["barber_id"], fresh=True)
            if not (nothing_happened(problem) and context.config.fallback_enabled):
                await self._release_channel(decision["route_id"], None)
                raise
            log.info("external_fallback", route_id=str(decision["route_id"]), processor=decision["processor"],
                     reason=problem.code)
            await self._release_channel(decision["route_id"], "platform")
            out = await self._charge_centralized(decision, payment_method, claim)
            return msgspec.structs.replace(out, fallback_used=True, fallback_from=FallbackOut(
                processor=decision["processor"], transaction_id=problem.extra.get("transaction_id"),
                reason=problem.code))
        except BaseException:
            await self._release_channel(decision["route_id"], None)
            raise
        await self._release_channel(decision["route_id"], None)
        circuit.record_success()
        return external_process_out(decision, tx)

    async def _claim_channel(self, decision: dict[str, Any]) -> str:
        """Take the route's external channel for one attempt (a lease), under the route's lock: a
        concurrent payment of the same route waits (409) instead of racing it, and a route that
        fell back to the platform stays there. Returns the channel to pay through."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            row = await store.load_decision(uow.session, decision["route_id"], lock=True)
            assert row is not None
            if row["channel"] == "platform":
                await uow.commit()
                return "platform"
            if row["channel_lease_until"] is not None and row["channel_lease_until"] > now:
                raise ProblemError(409, "payment_in_progress", "this route is being paid right now; retry shortly",
                                   route_id=str(decision["route_id"]), headers={"Retry-After": "2"})
            lease = now + timedelta(seconds=self.settings.external_timeout + 5)
            await store.set_channel(uow.session, decision["route_id"], {"channel": "external",
                                                                        "channel_lease_until": lease})
            await uow.commit()
        return "external"

    async def _release_channel(self, route_id: uuid.UUID, channel: str | None) -> None:
        """End this attempt's lease; `platform` moves the route there for good (the fallback)."""
        async with self.rt.uow() as uow:
            await store.load_decision(uow.session, route_id, lock=True)
            values: dict[str, Any] = {"channel_lease_until": None}
            if channel is not None:
                values["channel"] = channel
            await store.set_channel(uow.session, route_id, values)
            await uow.commit()

    async def _charge_centralized(self, decision: dict[str, Any], payment_method: str,
                                  claim: Claim | None) -> ProcessOut:
        processor = processor_required(self.processor)
        context = await self.contexts.get(decision["barber_id"], fresh=True)
        destination = context.config.connect_account_id
        if not destination:
            raise ProblemError(422, "connect_account_required",
                               "connect_account_id: the barber has no Stripe Connect account to pay out to",
                               field="connect_account_id")
        payment, fresh = await self._open_attempt(decision, payment_method, destination)
        if payment["status"] != "pending":  # this route was already paid: answer that, charge nothing
            return process_out(payment)
        currency = payment["currency"]
        circuit = self.circuits.circuit("stripe")
        try:
            result = await processor.create_payment(PaymentRequest(
                amount=payment["amount"], currency=currency, payment_method=payment["payment_method"],
                idempotency_key=payment["processor_idempotency_key"], reference=str(payment["id"]),
                platform_fee=payment["commission_amount"], destination=payment["destination_account"],
                metadata={"transaction_id": str(payment["id"]), "route_id": str(payment["route_id"]),
                          "barber_id": str(payment["barber_id"]), "appointment_id": str(payment["appointment_id"])},
            ))
        except PaymentDeclined as declined:
            circuit.record_success()  # Stripe answered; the card said no
            failed = await self._settle(payment, "failed", declined.processor_payment_id,
                                        failure=(declined.code or "card_declined", declined.message))
            raise ProblemError(402, "payment_declined", declined.message, transaction_id=str(failed["id"]),
                               decline_code=declined.code) from None
        except ProcessorTimeout:
            circuit.record_failure(time.monotonic())
            raise ProblemError(
                504, "processor_timeout",
                "Stripe did not answer in time; the outcome is unknown. Retry with the same Idempotency-Key "
                "to settle it (it will not charge twice).", transaction_id=str(payment["id"]),
            ) from None
        except OutcomeUnknown as exc:
            circuit.record_failure(time.monotonic())
            raise ProblemError(
                502, "processor_outcome_unknown",
                f"{exc.message}; the outcome is unknown. Retry with the same Idempotency-Key to settle it.",
                transaction_id=str(payment["id"]),
            ) from None
        except ProcessorUnavailable as exc:
            circuit.record_failure(time.monotonic())
            if fresh:  # never sent before, and not this time: it failed, and a retry makes a new one
                await self._settle(payment, "failed", None, failure=("processor_unavailable", exc.message))
            # else: it may have been sent before (its outcome unknown); it stays pending for a
            # retry with the same key, or the sweeper, to settle.
            raise ProblemError(503, "processor_unavailable", exc.message, transaction_id=str(payment["id"]),
                               headers={"Retry-After": "5"}) from None
        except (ProcessorRequestError, InvalidCredentials) as exc:
            failed = await self._settle(payment, "failed", None, failure=(exc.code or "processor_error", exc.message))
            raise ProblemError(422, "processor_rejected", f"payment_method: Stripe refused the request: {exc.message}",
                               transaction_id=str(failed["id"]), field="payment_method") from None
        circuit.record_success()
        settled = await self._settle_result(payment, result, claim=claim)
        return process_out(settled)

    async def _open_attempt(self, decision: dict[str, Any], payment_method: str,
                            destination: str) -> tuple[dict[str, Any], bool]:
        """The route's live attempt (pending, with its lease taken, or paid), else a new pending one,
        committed before any charge; True when new (never sent)."""
        now = datetime.now(UTC)
        fresh = False
        async with self.rt.uow() as uow:
            # Lock the decision so two first attempts on one route cannot both be created.
            await store.load_decision(uow.session, decision["route_id"], lock=True)
            live = await store.live_attempt(uow.session, decision["route_id"])
            if live is not None and live["status"] == "pending":
                live = await store.touch_pending_payment(uow.session, live["id"], now) or live
            if live is None:
                payment_id = uuid.uuid4()
                live = await store.insert_attempt(uow.session, dict(
                    id=payment_id, route_id=decision["route_id"], barber_id=decision["barber_id"],
                    appointment_id=decision["appointment_id"], client_id=decision["client_id"],
                    amount=decision["amount"], currency=decision["currency"],
                    commission_rate=decision["commission_rate"], commission_amount=decision["commission_amount"],
                    processor_fee=decision["estimated_processor_fee"], refunded_amount=Decimal(0),
                    destination_account=destination, payment_method=payment_method, status="pending",
                    processor_idempotency_key=f"hp-pay-{payment_id}", created_at=now, updated_at=now, version=1,
                ))
                fresh = True
            await uow.commit()
        return live, fresh

    async def _settle_result(self, payment: dict[str, Any], result: PaymentResult, *, claim: Claim | None = None,
                             untouched_since: datetime | None = None) -> dict[str, Any]:
        return await self._settle(
            payment, settled_status(result.status), result.processor_payment_id, result.charge_id,
            failure=(result.failure_code or "payment_failed", result.failure_message or result.status)
            if result.status in ("failed", "canceled") else None,
            raw=result.raw, claim=claim, untouched_since=untouched_since,
        )

    async def _settle(
        self, payment: dict[str, Any], status: str, intent_id: str | None, charge_id: str | None = None, *,
        failure: tuple[str, str] | None = None, raw: dict[str, Any] | None = None, claim: Claim | None = None,
        untouched_since: datetime | None = None,
    ) -> dict[str, Any]:
        """Record the attempt's outcome and its `transaction.recorded` event in one transaction.
        Still pending at the processor: note its id and keep the attempt pending (no event)."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            row = await store.settle_attempt(uow.session, payment["id"], dict(
                status=status, stripe_payment_intent_id=intent_id or payment["stripe_payment_intent_id"],
                stripe_charge_id=charge_id, failure_code=failure[0] if failure else None,
                failure_reason=failure[1] if failure else None, processor_response=_jsonable(raw),
                processed_at=None if status == "pending" else now, updated_at=now,
            ), untouched_since=untouched_since)
            if row is None:  # settled (or, for the sweeper, touched) by someone else first: theirs stands
                await uow.commit()
                return await self._payment(payment["id"])
            if status != "pending":
                uow.emit(transaction_recorded(row))
            if claim:
                claim.record(uow, 200, process_out(row))
            await uow.commit()
        return row

    async def _payment(self, payment_id: uuid.UUID) -> dict[str, Any]:
        async with self.rt.uow() as uow:
            row = await store.load_payment(uow.session, payment_id)
        if row is None:
            raise not_found(f"transaction {payment_id}")
        return row

    # ---- lookups -------------------------------------------------------------------------------

    async def get_transaction(self, principal: Principal, transaction_id: uuid.UUID) -> TransactionOut:
        async with self.rt.uow() as uow:
            row = await store.load_payment(uow.session, transaction_id)
            refunds = await store.refunds_of(uow.session, transaction_id) if row else []
        if row is None:  # not a platform payment: perhaps an external one
            out = external_transaction_out(await self.external_transaction(principal, transaction_id))
            return out
        if principal.role == "barber" and row["barber_id"] != principal.barber_id:
            raise not_found(f"transaction {transaction_id}")
        return transaction_out(row, refunds)

    async def external_transaction(self, principal: Principal, transaction_id: uuid.UUID):
        """An external transaction as the external service has it (404 unless the caller may see it)."""
        try:
            tx = await self.external.transaction(transaction_id)
        except ProblemError as problem:
            if problem.status == 404:
                raise not_found(f"transaction {transaction_id}") from None
            raise
        if principal.role == "barber" and tx.barber_id != principal.barber_id:
            raise not_found(f"transaction {transaction_id}")
        return tx

    async def list_transactions(self, *, barber_id: int | None, status: str | None, payment_type: str | None,
                                since: datetime | None, until: datetime | None, cursor: str | None,
                                limit: int) -> TransactionPage:
        async with self.rt.uow() as uow:
            rows = await store.list_payments(uow.session, barber_id=barber_id, status=status,
                                             payment_type=payment_type, since=since, until=until,
                                             cursor=cursor, limit=limit)
        page, next_cursor = page_of(rows, limit, lambda row: (row["created_at"], row["id"]))
        return TransactionPage(items=[transaction_out(row) for row in page], next_cursor=next_cursor)

    # ---- the sweeper -----------------------------------------------------------------------------

    async def sweep_pending(self, now: datetime) -> dict[str, int]:
        """Settle every attempt left pending and untouched for `pending_sweep_after` seconds."""
        if self.processor is None:
            return {}
        untouched_since = now - timedelta(seconds=self.settings.pending_sweep_after)
        async with self.rt.uow() as uow:
            attempts = await store.pending_attempts(uow.session, untouched_since, limit=200)
        outcomes = await settle_each(attempts, lambda attempt: self._sweep_one(attempt, now, untouched_since))
        if outcomes:
            log.info("pending_attempts_swept", **outcomes)
        return outcomes

    async def _sweep_one(self, attempt: dict[str, Any], now: datetime, untouched_since: datetime) -> str:
        processor = self.processor
        assert processor is not None
        if attempt["stripe_payment_intent_id"]:
            result: PaymentResult | None = await processor.retrieve_payment(attempt["stripe_payment_intent_id"])
        else:
            result = await find_payment(processor, str(attempt["id"]), since=attempt["created_at"] - _CLOCK_SKEW,
                                        until=now)
        if result is None:  # the processor never saw it: nothing was charged
            row = await self._settle(attempt, "failed", None, failure=(
                "not_found_at_processor", "the processor has no payment for this attempt"),
                untouched_since=untouched_since)
        else:
            row = await self._settle_result(attempt, result, untouched_since=untouched_since)
        return row["status"]


def _jsonable(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if raw is None else msgspec.json.decode(msgspec.json.encode(raw))
