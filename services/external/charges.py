"""Charges through a barber's own connection, for the router (internal API), on the shared attempt
pipeline (`shared.attempts`).

An attempt is committed `pending` with its processor key (`hp-ext-pay-<id>`) before the processor
is called; a retry for the same route finds it (one live attempt per route, a unique index) and
re-sends the same key, or retrieves the payment once the processor has named it. Whoever calls the
processor first takes the row's lease (`updated_at`); the sweeper only settles rows untouched for
`PENDING_SWEEP_AFTER`. What the processor says is merged by the ledger, which is also what webhooks
use, so the API answer and the webhook can race and still leave one record and one event per change.
An attempt that never reached the processor fails without `transaction.recorded`: it is no payment.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import structlog

from services.external import store
from services.external.ledger import Ledger
from services.external.mapping import transaction_out, transaction_recorded
from services.external.processors import Adapters
from services.external.settings import ExternalSettings
from services.external.store import ConnectionRow, TransactionRow
from shared import attempts
from shared.circuit import CircuitBoard, connection_circuit
from shared.errors import ProblemError, not_found, validation_error
from shared.internal_api import ChargeRequest, ExternalTransactionOut
from shared.money import MoneyError, amount_field, normalise_currency
from shared.observability import EXTERNAL_CHARGES
from shared.processors import base as p
from shared.service import ServiceRuntime

log = structlog.get_logger("external.charges")
CLOCK_SKEW = timedelta(minutes=5)


def payment_operation(adapter: p.PaymentProcessor, attempt: TransactionRow, *,
                      timeout: float) -> attempts.Operation[p.PaymentResult]:
    """How the pipeline creates, retrieves and finds this attempt's payment. It is found by our
    reference among the payments the processor created while the attempt could have been in flight
    (from its creation to its last send plus the timeout, with room for clock skew)."""
    request = p.PaymentRequest(
        amount=attempt.amount, currency=attempt.currency, payment_method=attempt.payment_method or "",
        idempotency_key=attempt.processor_idempotency_key, reference=str(attempt.id),
        description=f"Appointment {attempt.appointment_id}",
        metadata={"transaction_id": str(attempt.id), "route_id": str(attempt.route_id),
                  "barber_id": str(attempt.barber_id), "appointment_id": str(attempt.appointment_id)},
    )
    since = attempt.created_at - CLOCK_SKEW
    until = max(attempt.updated_at, attempt.created_at) + timedelta(seconds=timeout) + CLOCK_SKEW
    return attempts.Operation(
        create=lambda: adapter.create_payment(request), retrieve=adapter.retrieve_payment,
        find=lambda: p.find_payment(adapter, str(attempt.id), since=since, until=until), processor=adapter)


def attempt_state(row: TransactionRow, *, fresh: bool = False) -> attempts.Attempt:
    return attempts.Attempt(processor_id=row.external_transaction_id, created_at=row.created_at, fresh=fresh)


class ChargeService:
    def __init__(self, runtime: ServiceRuntime, settings: ExternalSettings, adapters: Adapters, ledger: Ledger,
                 circuits: CircuitBoard) -> None:
        self.rt = runtime
        self.settings = settings
        self.adapters = adapters
        self.ledger = ledger
        self.circuits = circuits

    async def charge(self, body: ChargeRequest) -> ExternalTransactionOut:
        """Charge the route on the barber's connection, or learn what became of its pending attempt.

        `nothing_happened: true` (the router may then pay on the platform instead) is only ever
        said of an attempt that surely never reached the processor: one this very request created
        and that was refused before sending, or one the processor was asked about and has no trace of."""
        try:
            currency = normalise_currency(body.currency)
            amount = amount_field("amount", body.amount, currency, max_amount=None)
        except MoneyError as exc:
            raise validation_error("amount", str(exc)) from None
        live = await self._live_attempt(body.route_id)
        if live is not None and live.status != "pending":  # paid (or in flight elsewhere): answer that
            return transaction_out(live)
        connection = (await self._connection(live.connection_id) if live is not None
                      else await self._usable_connection(body.connection_id, body.barber_id, currency))
        adapter = self.adapters.for_connection(connection)  # before any attempt: its secret must open
        attempt, fresh = await self._open_attempt(body, connection, amount, currency)
        if attempt.status != "pending":
            return transaction_out(attempt)
        outcome = await attempts.call(payment_operation(adapter, attempt, timeout=self.settings.processor_timeout),
                                      attempt_state(attempt, fresh=fresh), now=datetime.now(UTC),
                                      circuit=self.circuits.circuit(connection_circuit(connection.id)))
        EXTERNAL_CHARGES.labels(connection.processor_type, outcome.kind).inc()
        return await self._settle(attempt, connection, outcome, fresh=fresh)

    async def _settle(self, attempt: TransactionRow, connection: ConnectionRow,
                      outcome: attempts.Outcome[p.PaymentResult], *, fresh: bool) -> ExternalTransactionOut:
        """Record what the call learned and answer it."""
        now = datetime.now(UTC)
        who = f"the barber's {connection.processor_type}"
        if outcome.kind == "answered" and outcome.result is not None:
            async with self.rt.uow() as uow:
                row = await self.ledger.record_payment(uow, connection, outcome.result, origin="api", now=now)
                await uow.commit()
            return transaction_out(row or attempt)
        if outcome.kind in ("declined", "rejected"):
            error = outcome.error
            pid = error.processor_payment_id if isinstance(error, p.PaymentDeclined) else None
            row, moved = await self._fail(attempt, connection, error, pid, reached=True)
            if not moved:  # the processor's own word came first: it stands
                return transaction_out(row)
            raise attempts.problem_for(outcome, fresh=fresh, transaction_id=str(row.id), who=who)
        if outcome.kind == "absent" or (outcome.kind == "refused" and fresh):
            # Surely never reached the processor: the attempt failed, and the router may pay elsewhere.
            row, moved = await self._fail(attempt, connection, outcome.error, None, reached=False)
            if not moved:
                return transaction_out(row)
            fresh = True
            outcome = attempts.Outcome("refused", error=outcome.error)
        raise attempts.problem_for(outcome, fresh=fresh, transaction_id=str(attempt.id), who=who)

    async def _live_attempt(self, route_id: uuid.UUID) -> TransactionRow | None:
        async with self.rt.uow() as uow:
            return await store.live_attempt(uow.session, route_id)

    async def _connection(self, connection_id: int) -> ConnectionRow:
        async with self.rt.uow() as uow:
            connection = await store.load_connection(uow.session, connection_id)
        if connection is None:
            raise not_found(f"connection {connection_id}")
        return connection

    async def _usable_connection(self, connection_id: int, barber_id: int, currency: str) -> ConnectionRow:
        async with self.rt.uow() as uow:
            connection = await store.load_connection(uow.session, connection_id)
        if connection is None or connection.barber_id != barber_id:
            raise not_found(f"connection {connection_id} of barber {barber_id}")
        problems = [why for ok, why in (
            (connection.status == "active", f"it is {connection.status}"),
            (self.settings.enabled(connection.processor_type), f"{connection.processor_type} is switched off"),
            (connection.supports_payments, "it does not take payments"),
            (connection.default_currency == currency, f"it takes {connection.default_currency}, not {currency}"),
        ) if not ok]
        if problems:
            raise ProblemError(409, "connection_unusable", f"connection {connection_id} cannot take this payment: "
                               + "; ".join(problems), nothing_happened=True)
        return connection

    async def _open_attempt(self, body: ChargeRequest, connection: ConnectionRow, amount: Decimal,
                            currency: str) -> tuple[TransactionRow, bool]:
        """The route's live attempt with its lease taken, or a new one; True when new (this request
        created it, so it has never been sent)."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            live = await store.live_attempt(uow.session, body.route_id)
            if live is None:
                attempt_id = uuid.uuid4()
                inserted = await store.insert_live_attempt(uow.session, dict(
                    id=attempt_id, connection_id=connection.id, processor_type=connection.processor_type,
                    amount=amount, refunded_amount=Decimal(0), currency=currency, status="pending",
                    barber_id=body.barber_id, appointment_id=body.appointment_id, client_id=body.client_id,
                    route_id=body.route_id, processor_fees=body.estimated_processor_fee,
                    commission_rate=body.commission_rate, commission_amount=body.commission_amount,
                    payment_method=body.payment_method, processor_idempotency_key=f"hp-ext-pay-{attempt_id}",
                    origin="api", created_at=now, updated_at=now, version=1,
                ))
                if inserted is not None:
                    await uow.commit()
                    return inserted, True
                # A concurrent request for this route inserted first: use theirs.
                live = await store.live_attempt(uow.session, body.route_id)
                if live is None:
                    raise ProblemError(409, "payment_in_progress", "this route is being paid right now; retry shortly",
                                       headers={"Retry-After": "2"})
            if live.status == "pending":
                live = await store.touch_pending(uow.session, live.id, now) or live
            await uow.commit()
        return live, False

    async def _fail(self, attempt: TransactionRow, connection: ConnectionRow, error: p.ProcessorError | None,
                    processor_payment_id: str | None, *, reached: bool) -> tuple[TransactionRow, bool]:
        """The attempt failed for good: declined or refused by the processor (`reached`: it is a
        failed payment, with its event), or never sent (no event: it is no payment at all). Returns
        the row and whether this call moved it (False: settled already)."""
        now = datetime.now(UTC)
        code = (error.code if error is not None else None) or ("card_declined" if reached else "processor_unavailable")
        message = error.message if error is not None else "the processor has no payment for this attempt"
        async with self.rt.uow() as uow:
            if processor_payment_id is not None:  # the processor's failed payment: merged like any report
                row = await self.ledger.record_payment(uow, connection, p.PaymentResult(
                    processor_payment_id=processor_payment_id, status="failed", amount=attempt.amount,
                    currency=attempt.currency, created_at=now, reference=str(attempt.id), failure_code=code,
                    failure_message=message), origin="api", now=now)
                row = row or attempt
                moved = row.status == "failed"
            else:
                row = await store.settle_unsent(uow.session, attempt.id, code, message, now)
                moved = row is not None
                if row is not None and reached:
                    uow.emit(transaction_recorded(row))
                row = row or await store.load_transaction(uow.session, attempt.id) or attempt
            await uow.commit()
        return row, moved
