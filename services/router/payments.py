"""Paying a route (`/process`): on the platform's Stripe account (centralized), or through the
external service on the barber's own processor, falling back to the platform when that surely did
nothing. Every processor call goes through the shared attempt pipeline (`shared.attempts`).

A platform attempt is committed `pending` with its processor idempotency key (`hp-pay-<id>`) before
Stripe is called; whoever calls Stripe first takes the attempt's lease (touches `updated_at`), and
the outcome plus its `transaction.recorded` commit together with `UPDATE ... WHERE status =
'pending'`. A retry finds the same attempt: it re-sends the same key, or retrieves the payment once
Stripe has named it, so it never charges twice. An attempt that never reached Stripe fails without
an event (it is no payment). Circuits are per account: the platform's own, and one per barber's
connection (`shared.circuit`).
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
from services.router.domain import estimate_fee
from services.router.external import ExternalPayments, nothing_happened
from services.router.mapping import external_process_out, process_out, transaction_recorded
from services.router.routing import BarberContexts, RoutingService
from services.router.settings import RouterSettings
from services.router.store import DecisionRow, PaymentRow
from services.router.wire import ProcessIn, ProcessOut
from shared import attempts
from shared.auth import Principal
from shared.circuit import PLATFORM, CircuitBoard, connection_circuit
from shared.db import GroupCommit
from shared.errors import ProblemError, not_found
from shared.events import new_event
from shared.idempotency import ANSWER, Claim
from shared.lifecycle import settled_status
from shared.outbox import outbox_row
from shared.processors.base import (
    PaymentDeclined,
    PaymentProcessor,
    PaymentRequest,
    PaymentResult,
    find_payment,
)
from shared.service import ServiceRuntime

log = structlog.get_logger("router.payments")
_ROUTE_NAMESPACE = uuid.UUID("6f0b7a52-3f0e-4c55-9d55-6a1f2d0c9e41")
# How far before an attempt's creation the processor's clock may put the payment (clock skew).
CLOCK_SKEW = timedelta(minutes=5)


def processor_required(processor: PaymentProcessor | None) -> PaymentProcessor:
    if processor is None:
        raise ProblemError(503, "processor_not_configured", "STRIPE_SECRET_KEY is not set for the platform account")
    return processor


def payment_operation(processor: PaymentProcessor, payment: PaymentRow, *, timeout: float) -> attempts.Operation[
        PaymentResult]:
    """How the pipeline creates, retrieves and finds a platform payment: a destination charge with
    the commission as application fee, found by our reference among the PaymentIntents created while
    the attempt could have been in flight."""
    request = PaymentRequest(
        amount=payment.amount, currency=payment.currency, payment_method=payment.payment_method,
        idempotency_key=payment.processor_idempotency_key, reference=str(payment.id),
        platform_fee=payment.commission_amount, destination=payment.destination_account,
        metadata={"transaction_id": str(payment.id), "route_id": str(payment.route_id),
                  "barber_id": str(payment.barber_id), "appointment_id": str(payment.appointment_id)},
    )
    since = payment.created_at - CLOCK_SKEW
    until = max(payment.updated_at, payment.created_at) + timedelta(seconds=timeout) + CLOCK_SKEW
    return attempts.Operation(
        create=lambda: processor.create_payment(request), retrieve=processor.retrieve_payment,
        find=lambda: find_payment(processor, str(payment.id), since=since, until=until), processor=processor)


def payment_state(payment: PaymentRow, *, fresh: bool = False) -> attempts.Attempt:
    return attempts.Attempt(processor_id=payment.stripe_payment_intent_id, created_at=payment.created_at,
                            fresh=fresh)


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
        # Group commits, made on first use (the hot-path pool exists from start-up).
        self._opens: store.OpenRoutesAndAttempts | None = None
        self._settles: GroupCommit | None = None

    async def process_payment(self, principal: Principal, body: ProcessIn, claim: Claim | None) -> ProcessOut:
        if body.route_id is not None:
            await self._hold(claim)
            decision = await self.routing.load_decision(principal, body.route_id)
        else:
            # Route and pay at once. Under an Idempotency-Key the route id is derived from the key
            # and the request, so a retry after a timeout finds the same route (and its pending
            # charge) again, and is not decided afresh (the rules may say otherwise by now); a key
            # reused for another request later (keys expire) makes another route.
            derived = (uuid.uuid5(_ROUTE_NAMESPACE, f"{claim.scope}\n{claim.key}\n{claim.fingerprint}")
                       if claim else None)
            paid = await self._route_and_pay_on_platform(principal, body, derived, claim)
            if paid is not None:
                return paid
            await self._hold(claim)
            decision = await self._route_again_or_anew(principal, body, derived)
        if decision.payment_type == "external":
            return await self._charge_external(decision, body.payment_method, claim)
        return await self._charge_centralized(decision, body.payment_method, claim)

    async def _hold(self, claim: Claim | None) -> None:
        """The controller defers the claim to route-and-pay's first statement
        (`run_idempotent(deferred=True)`); any other path holds it before doing anything."""
        if claim is not None:
            await self.rt.idempotency.take(claim)

    async def _route_and_pay_on_platform(self, principal: Principal, body: ProcessIn, route_id: uuid.UUID | None,
                                         claim: Claim | None) -> ProcessOut | None:
        """The hot path of route-and-pay: a new route the rules send to the platform is recorded
        together with its pending attempt in one statement, then charged. None when it does not
        apply (an external route, no platform processor, or a route id recorded before), and
        nothing was written: the general path takes over."""
        if self.processor is None:
            return None
        try:
            decided = await self.routing.decide(principal, body.as_route(), route_id=route_id or uuid.uuid4())
        except ProblemError:
            if route_id is None:
                raise
            return None  # a retry's route may exist: the general path answers from it
        decision = decided.row
        if decision.payment_type != "centralized":
            return None
        if self._opens is None:
            self._opens = store.OpenRoutesAndAttempts(self.rt.hot_path)
        recorded, payment = await store.open_route_and_attempt(self._opens, decision, uuid.uuid4(),
                                                               body.payment_method, claim)
        if not recorded:
            return None
        if payment is None:
            raise _no_payout_account()
        return await self._pay_on_platform(decision, payment, fresh=True, claim=claim)

    async def _route_again_or_anew(self, principal: Principal, body: ProcessIn,
                                   route_id: uuid.UUID | None) -> DecisionRow:
        """The route a retry of route-and-pay made before, else a new one."""
        if route_id is not None:
            async with self.rt.uow() as uow:
                existing = await store.load_decision(uow.session, route_id)
            if existing is not None:
                return await self.routing.load_decision(principal, route_id)  # the owner's only
        decided = await self.routing.decide(principal, body.as_route(), route_id=route_id)
        if await self.routing.record(decided, None):
            return decided.row
        return await self.routing.load_decision(principal, decided.row.route_id)

    # ---- through the barber's own processor -----------------------------------------------------

    async def _charge_external(self, decision: DecisionRow, payment_method: str, claim: Claim | None) -> ProcessOut:
        """Through the external service on the barber's own processor. When that surely did nothing
        (refused connection, unusable connection, the external service unreachable, its circuit
        open) and the barber has fallback on, the platform takes the payment instead: both attempts
        stay on record, and every answer about the route says it fell back."""
        connection_id = decision.connection_id
        if connection_id is None:  # cannot be: the database ties every external route to its connection
            raise RuntimeError(f"external route {decision.route_id} names no connection")
        if await self._claim_channel(decision) == "platform":  # fallen back before: the platform's now
            return await self._charge_centralized(await self._decision(decision.route_id), payment_method, claim)
        circuit = self.circuits.circuit(connection_circuit(connection_id))
        try:
            if not circuit.allow(time.monotonic()):  # kept back here: no failure of the account's to count
                raise ProblemError(503, "processor_unavailable", f"calls to this barber's {decision.processor} "
                                   "account keep failing; not sent", nothing_happened=True, circuit_open=True)
            tx = await self.external.charge(decision, connection_id, payment_method)
        except ProblemError as problem:
            if problem.code in ("payment_declined", "processor_rejected"):
                circuit.record_success()  # the account answered; the payment did not go through
            elif problem.status >= 500 and not problem.extra.get("circuit_open"):
                circuit.record_failure(time.monotonic())
            context = await self.contexts.get(decision.barber_id, fresh=True)
            if not (nothing_happened(problem) and context.config.fallback_enabled):
                await self._release_channel(decision.route_id, None)
                raise
            log.info("external_fallback", route_id=str(decision.route_id), processor=decision.processor,
                     reason=problem.code)
            await self._release_channel(decision.route_id, "platform", reason=problem.code,
                                        transaction_id=problem.extra.get("transaction_id"))
            return await self._charge_centralized(await self._decision(decision.route_id), payment_method, claim)
        except BaseException:
            await self._release_channel(decision.route_id, None)
            raise
        await self._release_channel(decision.route_id, None)
        circuit.record_success()
        return external_process_out(decision, tx)

    async def _decision(self, route_id: uuid.UUID) -> DecisionRow:
        async with self.rt.uow() as uow:
            row = await store.load_decision(uow.session, route_id)
        if row is None:
            raise not_found(f"route {route_id}")
        return row

    async def _claim_channel(self, decision: DecisionRow) -> str:
        """Take the route's external channel for one attempt (a lease), under the route's lock: a
        concurrent payment of the same route waits (409) instead of racing it, and a route that
        fell back to the platform stays there. Returns the channel to pay through."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            row = await store.load_decision(uow.session, decision.route_id, lock=True)
            if row is None:
                raise not_found(f"route {decision.route_id}")
            if row.channel == "platform":
                await uow.commit()
                return "platform"
            if row.channel_lease_until is not None and row.channel_lease_until > now:
                raise ProblemError(409, "payment_in_progress", "this route is being paid right now; retry shortly",
                                   route_id=str(decision.route_id), headers={"Retry-After": "2"})
            lease = now + timedelta(seconds=self.settings.external_timeout + 5)
            await store.set_channel(uow.session, decision.route_id, {"channel": "external",
                                                                        "channel_lease_until": lease})
            await uow.commit()
        return "external"

    async def _release_channel(self, route_id: uuid.UUID, channel: str | None, *, reason: str | None = None,
                               transaction_id: str | None = None) -> None:
        """End this attempt's lease; `platform` moves the route there for good (the fallback), with
        why and which external attempt it replaced."""
        async with self.rt.uow() as uow:
            await store.load_decision(uow.session, route_id, lock=True)
            values: store.Values = {"channel_lease_until": None}
            if channel is not None:
                values["channel"] = channel
            if channel == "platform":
                values["fallback_reason"] = reason
                values["fallback_transaction_id"] = _uuid(transaction_id)
            await store.set_channel(uow.session, route_id, values)
            await uow.commit()

    # ---- on the platform's own Stripe account ------------------------------------------------------

    async def _charge_centralized(self, decision: DecisionRow, payment_method: str, claim: Claim | None) -> ProcessOut:
        processor_required(self.processor)
        context = await self.contexts.get(decision.barber_id, fresh=True)
        destination = context.config.connect_account_id
        if not destination:
            raise _no_payout_account()
        payment, fresh = await self._open_attempt(decision, payment_method, destination)
        return await self._pay_on_platform(decision, payment, fresh=fresh, claim=claim)

    async def _pay_on_platform(self, decision: DecisionRow, payment: PaymentRow, *, fresh: bool,
                               claim: Claim | None) -> ProcessOut:
        """Charge an opened attempt (or answer the one already paid) and settle it."""
        processor = processor_required(self.processor)
        if payment.status != "pending":  # this route was already paid: answer that, charge nothing
            return process_out(payment, decision)
        outcome = await attempts.call(payment_operation(processor, payment, timeout=self.settings.stripe_timeout),
                                      payment_state(payment, fresh=fresh), now=datetime.now(UTC),
                                      circuit=self.circuits.circuit(PLATFORM))
        if outcome.kind == "answered" and outcome.result is not None:
            if fresh:
                settled = await self._settle_fresh(payment, outcome.result, claim, decision)
                if settled is not None:
                    return process_out(settled, decision)
            return process_out(await self.settle_result(payment, outcome.result, claim=claim, decision=decision),
                               decision)
        if outcome.kind in ("declined", "rejected"):
            error = outcome.error
            failed = await self.settle(payment, "failed", error.processor_payment_id if isinstance(
                error, PaymentDeclined) else None, failure=(error.code if error and error.code else outcome.kind,
                                                            outcome.message))
            raise attempts.problem_for(outcome, fresh=fresh, transaction_id=str(failed.id), who="Stripe")
        if outcome.kind == "absent" or (outcome.kind == "refused" and fresh):
            # Surely never reached Stripe: failed, no event (it is no payment); a retry makes a new one.
            await self.settle(payment, "failed", None, failure=("processor_unavailable", outcome.message),
                               reached=False)
            raise attempts.problem_for(attempts.Outcome("refused", error=outcome.error), fresh=True,
                                       transaction_id=str(payment.id), who="Stripe")
        # Unknown, or refused this time after an earlier send: it stays pending for a retry with the
        # same key, or the sweeper, to settle.
        raise attempts.problem_for(outcome, fresh=False, transaction_id=str(payment.id), who="Stripe")

    async def _open_attempt(self, decision: DecisionRow, payment_method: str,
                            destination: str) -> tuple[PaymentRow, bool]:
        """The route's live attempt (pending, with its lease taken, or paid), else a new pending one,
        committed before any charge; True when new (never sent)."""
        now = datetime.now(UTC)
        fresh = False
        async with self.rt.uow() as uow:
            # Lock the decision so two first attempts on one route cannot both be created.
            await store.load_decision(uow.session, decision.route_id, lock=True)
            live = await store.live_attempt(uow.session, decision.route_id)
            if live is not None and live.status == "pending":
                live = await store.touch_pending_payment(uow.session, live.id, now) or live
            if live is None:
                payment_id = uuid.uuid4()
                amount, currency = decision.amount, decision.currency
                # The platform's own Stripe fee: an external route that fell back was priced with the
                # barber's processor's fee, which this payment does not pay.
                fee = decision.estimated_processor_fee if decision.payment_type == "centralized" \
                    else estimate_fee("stripe", None, amount, currency)
                live = await store.insert_attempt(uow.session, dict(
                    id=payment_id, route_id=decision.route_id, barber_id=decision.barber_id,
                    appointment_id=decision.appointment_id, client_id=decision.client_id,
                    amount=amount, currency=currency, commission_rate=decision.commission_rate,
                    commission_amount=decision.commission_amount, processor_fee=fee, refunded_amount=Decimal(0),
                    destination_account=destination, payment_method=payment_method, status="pending",
                    processor_idempotency_key=f"hp-pay-{payment_id}", created_at=now, updated_at=now, version=1,
                ))
                fresh = True
            await uow.commit()
        return live, fresh

    async def _settle_fresh(self, payment: PaymentRow, result: PaymentResult, claim: Claim | None,
                            decision: DecisionRow) -> PaymentRow | None:
        """Settle an attempt this request opened, with its event and answer, in one statement; the
        row, event and answer are what `settle` would write. None when it does not apply (still
        pending at Stripe) or the row moved meanwhile: then `settle` decides."""
        status = settled_status(result.status)
        if status == "pending":
            return None
        now = datetime.now(UTC)
        failure = (result.failure_code or "payment_failed", result.failure_message or result.status) \
            if status in ("failed", "canceled") else None
        row = msgspec.structs.replace(
            payment, status=status,
            stripe_payment_intent_id=result.processor_payment_id or payment.stripe_payment_intent_id,
            stripe_charge_id=result.charge_id, failure_code=failure[0] if failure else None,
            failure_reason=failure[1] if failure else None, processor_response=_jsonable(result.raw),
            processed_at=now, updated_at=now, version=payment.version + 1)
        event = new_event(transaction_recorded(row))
        prefix = self.settings.event_subject_prefix
        answer = (claim.scope, claim.key, ANSWER.encode(process_out(row, decision))) if claim else None
        # Group-committed with the settlements of concurrent payments: one statement for all, each
        # request answered once its row, event and answer are durable.
        if self._settles is None:
            self._settles = GroupCommit(self.rt.hot_path, store.SETTLE_FRESH_BATCH)
        if not await self._settles.insert(
                store.settle_fresh_tuple(row, payment.version, outbox_row(event, prefix), answer), row.id):
            return None
        if claim is not None:
            claim.completed = True
        if self.rt.relay is not None:
            self.rt.relay.notify()
        return row

    async def settle_result(self, payment: PaymentRow, result: PaymentResult, *, claim: Claim | None = None,
                             decision: DecisionRow | None = None,
                             untouched_since: datetime | None = None) -> PaymentRow:
        return await self.settle(
            payment, settled_status(result.status), result.processor_payment_id, result.charge_id,
            failure=(result.failure_code or "payment_failed", result.failure_message or result.status)
            if result.status in ("failed", "canceled") else None,
            raw=result.raw, claim=claim, decision=decision, untouched_since=untouched_since,
        )

    async def settle(
        self, payment: PaymentRow, status: str, intent_id: str | None, charge_id: str | None = None, *,
        failure: tuple[str, str] | None = None, raw: dict[str, Any] | None = None, claim: Claim | None = None,
        decision: DecisionRow | None = None, untouched_since: datetime | None = None, reached: bool = True,
    ) -> PaymentRow:
        """Record the attempt's outcome and its `transaction.recorded` event in one transaction (no
        event for an attempt that never `reached` Stripe). Still pending at Stripe: note its id and
        keep the attempt pending (no event)."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            row = await store.settle_attempt(uow.session, payment.id, dict(
                status=status, stripe_payment_intent_id=intent_id or payment.stripe_payment_intent_id,
                stripe_charge_id=charge_id, failure_code=failure[0] if failure else None,
                failure_reason=failure[1] if failure else None, processor_response=_jsonable(raw),
                processed_at=None if status == "pending" else now, updated_at=now,
            ), untouched_since=untouched_since)
            if row is None:  # settled (or, for the sweeper, touched) by someone else first: theirs stands
                await uow.commit()
                return await self.payment(payment.id)
            if status != "pending" and reached:
                uow.emit(transaction_recorded(row))
            if claim and decision is not None:
                claim.record(uow, 200, process_out(row, decision))
            await uow.commit()
        return row

    async def payment(self, payment_id: uuid.UUID) -> PaymentRow:
        async with self.rt.uow() as uow:
            row = await store.load_payment(uow.session, payment_id)
        if row is None:
            raise not_found(f"transaction {payment_id}")
        return row


def _no_payout_account() -> ProblemError:
    return ProblemError(422, "connect_account_required",
                        "connect_account_id: the barber has no Stripe Connect account to pay out to",
                        field="connect_account_id")


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def _jsonable(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if raw is None else msgspec.json.decode(msgspec.json.encode(raw))
