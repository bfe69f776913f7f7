"""Charges and refunds through a barber's own connection, for the router (internal API), in the
router's crash-safe shape, and the sweeper that settles what nobody came back for.

An attempt is committed `pending` with its processor key (`hp-ext-pay-<id>`) before the processor
is called; a retry for the same route finds it (one live attempt per route, a unique index) and
re-sends the same key. Whoever calls the processor first takes the row's lease (`updated_at`);
the sweeper only settles rows untouched for `PENDING_SWEEP_AFTER`. What the processor says is
merged by the ledger, which is also what webhooks use, so the API answer and the webhook can race
and still leave one record and one event per change.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from litestar import Response

from services.external import store
from services.external.ledger import NOT_FOUND, Ledger
from services.external.mapping import transaction_out, transaction_recorded
from services.external.processors import Adapters
from services.external.settings import ExternalSettings
from shared.circuit import CircuitBoard
from shared.errors import ProblemError, not_found, validation_error
from shared.internal_api import ChargeRequest, ExternalTransactionOut, RefundOutcome, RefundRequest
from shared.lifecycle import RefundRefused, plan_refund
from shared.money import MoneyError, amount_field, format_amount, normalise_currency
from shared.observability import EXTERNAL_CHARGES
from shared.processors import base as p
from shared.processors.base import find_payment, find_refund, listing_lag
from shared.scheduler import settle_each
from shared.service import ServiceRuntime

log = structlog.get_logger("external.charges")
_CLOCK_SKEW = timedelta(minutes=5)


class ChargeService:
    def __init__(self, runtime: ServiceRuntime, settings: ExternalSettings, adapters: Adapters, ledger: Ledger,
                 circuits: CircuitBoard) -> None:
        self.rt = runtime
        self.settings = settings
        self.adapters = adapters
        self.ledger = ledger
        self.circuits = circuits

    # ---- charges --------------------------------------------------------------------------------------

    async def charge(self, body: ChargeRequest) -> ExternalTransactionOut:
        """Charge the route on the barber's connection, or re-send its pending attempt.

        `nothing_happened: true` (the router may then pay on the platform instead) is only ever
        said of an attempt this very request created and that never reached the processor: a
        pending attempt found again may have been sent before, and its outcome is unknown until the
        processor says (a re-send with its key, the sweeper, or a webhook settles it)."""
        try:
            currency = normalise_currency(body.currency)
            amount = amount_field("amount", body.amount, currency, max_amount=None)
        except MoneyError as exc:
            raise validation_error("amount", str(exc)) from None
        live = await self._live_attempt(body.route_id)
        if live is not None and live["status"] != "pending":  # paid (or in flight elsewhere): answer that
            return transaction_out(live)
        connection = (await self._connection(live["connection_id"]) if live is not None
                      else await self._usable_connection(body.connection_id, body.barber_id, currency))
        adapter = self.adapters.for_connection(connection)  # before any attempt: its secret must open
        attempt, fresh = await self._open_attempt(body, connection, amount, currency)
        if attempt["status"] != "pending":
            return transaction_out(attempt)
        circuit = self.circuits.circuit(f"connection:{connection['id']}")
        if circuit.is_open(time.monotonic()):
            EXTERNAL_CHARGES.labels(connection["processor_type"], "circuit_open").inc()
            return await self._refused(attempt, fresh, "processor_unavailable",
                                       f"calls to this {connection['processor_type']} account keep failing; "
                                       "try again shortly")
        try:
            report = await adapter.create_payment(p.PaymentRequest(
                amount=amount, currency=currency, payment_method=attempt["payment_method"],
                idempotency_key=attempt["processor_idempotency_key"], reference=str(attempt["id"]),
                description=f"Appointment {body.appointment_id}",
                metadata={"transaction_id": str(attempt["id"]), "route_id": str(body.route_id),
                          "barber_id": str(body.barber_id), "appointment_id": str(body.appointment_id)},
            ))
        except p.PaymentDeclined as declined:
            circuit.record_success()
            failed, _ = await self._fail(attempt, declined.code or "card_declined", declined.message,
                                         declined.processor_payment_id)
            EXTERNAL_CHARGES.labels(connection["processor_type"], "declined").inc()
            if failed["status"] != "failed":  # the processor's own word came first: it stands
                return transaction_out(failed)
            raise ProblemError(402, "payment_declined", declined.message, transaction_id=str(failed["id"]),
                               decline_code=declined.code) from None
        except p.ProcessorUnavailable as exc:
            circuit.record_failure(time.monotonic())
            EXTERNAL_CHARGES.labels(connection["processor_type"], "unavailable").inc()
            return await self._refused(attempt, fresh, "processor_unavailable", exc.message)
        except p.OutcomeUnknown as exc:  # pending: a retry with the same route re-sends the same key
            circuit.record_failure(time.monotonic())
            EXTERNAL_CHARGES.labels(connection["processor_type"], "unknown").inc()
            timeout = isinstance(exc, p.ProcessorTimeout)
            raise ProblemError(504 if timeout else 502, "processor_timeout" if timeout else "processor_outcome_unknown",
                               f"{exc.message}; the outcome is unknown. Retry with the same Idempotency-Key to "
                               "settle it (it will not charge twice).", transaction_id=str(attempt["id"]),
                               nothing_happened=False) from None
        except (p.InvalidCredentials, p.ProcessorRequestError) as exc:
            circuit.record_success()
            failed, _ = await self._fail(attempt, exc.code or "processor_rejected", exc.message, None)
            EXTERNAL_CHARGES.labels(connection["processor_type"], "rejected").inc()
            if failed["status"] != "failed":
                return transaction_out(failed)
            raise ProblemError(422, "processor_rejected",
                               f"payment_method: the barber's {connection['processor_type']} refused the request: "
                               f"{exc.message}", transaction_id=str(failed["id"]), field="payment_method") from None
        circuit.record_success()
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            row = await self.ledger.record_payment(uow, connection, report, origin="api", now=now)
            await uow.commit()
        EXTERNAL_CHARGES.labels(connection["processor_type"], row["status"]).inc()
        return transaction_out(row)

    async def _refused(self, attempt: dict[str, Any], fresh: bool, code: str, message: str) -> ExternalTransactionOut:
        """The processor was not reached this time. A fresh attempt surely never reached it: it
        failed, and the router may pay elsewhere. One found again may have been sent before: it
        stays pending and nothing is promised."""
        if fresh:
            failed, moved = await self._fail(attempt, code, message, None)
            if not moved:  # settled by the processor's own word meanwhile
                return transaction_out(failed)
        raise ProblemError(503, code, message, transaction_id=str(attempt["id"]), nothing_happened=fresh,
                           headers={"Retry-After": "5"})

    async def _live_attempt(self, route_id: uuid.UUID) -> dict[str, Any] | None:
        async with self.rt.uow() as uow:
            return await store.live_attempt(uow.session, route_id)

    async def _connection(self, connection_id: int) -> dict[str, Any]:
        async with self.rt.uow() as uow:
            connection = await store.load_connection(uow.session, connection_id)
        assert connection is not None
        return connection

    async def _usable_connection(self, connection_id: int, barber_id: int, currency: str) -> dict[str, Any]:
        async with self.rt.uow() as uow:
            connection = await store.load_connection(uow.session, connection_id)
        if connection is None or connection["barber_id"] != barber_id:
            raise not_found(f"connection {connection_id} of barber {barber_id}")
        problems = [why for ok, why in (
            (connection["status"] == "active", f"it is {connection['status']}"),
            (self.settings.enabled(connection["processor_type"]), f"{connection['processor_type']} is switched off"),
            (connection["supports_payments"], "it does not take payments"),
            (connection["default_currency"] == currency, f"it takes {connection['default_currency']}, not {currency}"),
        ) if not ok]
        if problems:
            raise ProblemError(409, "connection_unusable", f"connection {connection_id} cannot take this payment: "
                               + "; ".join(problems), nothing_happened=True)
        return connection

    async def _open_attempt(self, body: ChargeRequest, connection: dict[str, Any], amount: Decimal,
                            currency: str) -> tuple[dict[str, Any], bool]:
        """The route's live attempt with its lease taken, or a new one; True when new (this request
        created it, so it has never been sent)."""
        now = datetime.now(UTC)
        fresh = False
        async with self.rt.uow() as uow:
            live = await store.live_attempt(uow.session, body.route_id)
            if live is None:
                attempt_id = uuid.uuid4()
                values = dict(
                    id=attempt_id, connection_id=connection["id"], processor_type=connection["processor_type"],
                    amount=amount, refunded_amount=Decimal(0), currency=currency, status="pending",
                    barber_id=body.barber_id, appointment_id=body.appointment_id, client_id=body.client_id,
                    route_id=body.route_id, processor_fees=body.estimated_processor_fee,
                    commission_rate=body.commission_rate, commission_amount=body.commission_amount,
                    payment_method=body.payment_method, processor_idempotency_key=f"hp-ext-pay-{attempt_id}",
                    origin="api", created_at=now, updated_at=now, version=1,
                )
                live = await store.insert_live_attempt(uow.session, values)
                fresh = live is not None
                if live is None:  # a concurrent request for this route inserted first: use theirs
                    live = await store.live_attempt(uow.session, body.route_id)
                    assert live is not None
            if live["status"] == "pending" and not fresh:
                live = await store.touch_pending(uow.session, live["id"], now) or live
            await uow.commit()
        return live, fresh

    async def _fail(self, attempt: dict[str, Any], code: str, message: str,
                    processor_payment_id: str | None) -> tuple[dict[str, Any], bool]:
        """The attempt failed for good (declined, refused, never sent): record it, with its event.
        Returns the row and whether this call moved it (False: it was settled already)."""
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            connection = await store.load_connection(uow.session, attempt["connection_id"])
            report = p.PaymentResult(
                processor_payment_id=processor_payment_id or f"unsent:{attempt['id']}", status="failed",
                amount=attempt["amount"], currency=attempt["currency"], created_at=now, reference=str(attempt["id"]),
                failure_code=code, failure_message=message)
            if processor_payment_id is None:  # nothing at the processor to point at
                row = await store.settle_unsent(uow.session, attempt["id"], code, message, now)
                moved = row is not None
                if row is not None:
                    uow.emit(transaction_recorded(row))
                else:
                    row = await store.load_transaction(uow.session, attempt["id"])
            else:
                row = await self.ledger.record_payment(uow, connection, report, origin="api", now=now)
                moved = row["status"] == "failed"
            await uow.commit()
        assert row is not None
        return row, moved

    # ---- refunds ----------------------------------------------------------------------------------

    async def refund(self, body: RefundRequest) -> Response[RefundOutcome]:
        payment, refund, connection = await self._open_refund(body)
        if refund["status"] == "pending":
            adapter = self.adapters.for_connection(connection)
            try:
                report = await adapter.refund(p.RefundRequest(
                    processor_payment_id=payment["external_transaction_id"], amount=refund["amount"],
                    currency=payment["currency"], idempotency_key=refund["processor_idempotency_key"],
                    reference=str(refund["id"])))
            except (p.ProcessorRequestError, p.InvalidCredentials) as exc:
                payment, refund = await self._settle_refund(refund, "failed", exc.message, None, connection)
                return self._refund_answer(payment, refund)
            except (p.OutcomeUnknown, p.ProcessorUnavailable) as exc:
                timeout = isinstance(exc, p.ProcessorTimeout)
                raise ProblemError(
                    504 if timeout else 502, "processor_timeout" if timeout else "processor_outcome_unknown",
                    f"{exc.message}; the refund stays pending. Retry with the same Idempotency-Key to settle it "
                    "(it will not refund twice).", transaction_id=str(payment["id"]), refund_id=str(refund["id"]),
                ) from None
            now = datetime.now(UTC)
            async with self.rt.uow() as uow:
                await self.ledger.record_refund(uow, connection, report, now=now)
                await uow.commit()
            payment, refund = await self._reload(payment["id"], refund["id"])
        return self._refund_answer(payment, refund)

    async def _open_refund(self, body: RefundRequest) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            payment = await store.load_transaction(uow.session, body.transaction_id, lock=True)
            if payment is None:
                raise not_found(f"transaction {body.transaction_id}")
            connection = await store.load_connection(uow.session, payment["connection_id"])
            assert connection is not None
            if not connection["supports_refunds"]:
                raise ProblemError(409, "not_refundable", "the barber's connection does not take refunds")
            refund = await store.load_refund(uow.session, body.refund_id)
            if refund is not None and refund["transaction_id"] != body.transaction_id:
                raise ProblemError(422, "idempotency_key_reused", "this Idempotency-Key refunded another payment")
            if refund is not None:
                refund = await store.touch_pending_refund(uow.session, refund["id"], now) or refund
            else:
                currency = payment["currency"]
                try:
                    requested = None if body.amount is None else amount_field("amount", body.amount, currency,
                                                                              max_amount=None)
                except MoneyError as exc:
                    raise validation_error("amount", str(exc).removeprefix("amount: ")) from None
                _, pending = await store.refund_totals(uow.session, payment["id"])
                try:
                    amount = plan_refund(status=payment["status"], amount=payment["amount"],
                                         refunded_amount=payment["refunded_amount"], pending_refunds=pending,
                                         requested=requested, currency=currency)
                except RefundRefused as refused:
                    raise ProblemError(refused.status, refused.code, refused.detail) from None
                refund = await store.insert_refund(uow.session, dict(
                    id=body.refund_id, transaction_id=payment["id"], processor_type=payment["processor_type"],
                    processor_payment_id=payment["external_transaction_id"], amount=amount, currency=currency,
                    status="pending", processor_idempotency_key=f"hp-ext-refund-{body.refund_id}",
                    created_at=now, updated_at=now))
            await uow.commit()
        return payment, refund, connection

    async def _settle_refund(self, refund: dict[str, Any], status: str, reason: str | None,
                             processor_refund_id: str | None, connection: dict[str, Any]):
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            payment = await store.load_transaction(uow.session, refund["transaction_id"], lock=True)
            current = await store.load_refund(uow.session, refund["id"])
            assert payment is not None and current is not None
            if current["status"] == "pending":
                await store.update_refund(uow.session, refund["id"], dict(
                    status=status, failure_reason=reason, processor_refund_id=processor_refund_id, updated_at=now))
            await uow.commit()
        return await self._reload(payment["id"], refund["id"])

    async def _reload(self, transaction_id: uuid.UUID, refund_id: uuid.UUID):
        async with self.rt.uow() as uow:
            payment = await store.load_transaction(uow.session, transaction_id)
            refund = await store.load_refund(uow.session, refund_id)
        assert payment is not None and refund is not None
        return payment, refund

    @staticmethod
    def _refund_answer(payment: dict[str, Any], refund: dict[str, Any]) -> Response[RefundOutcome]:
        if refund["status"] == "failed":
            raise ProblemError(422, "refund_failed", f"the processor refused the refund: {refund['failure_reason']}",
                               transaction_id=str(payment["id"]), refund_id=str(refund["id"]))
        out = RefundOutcome(transaction=transaction_out(payment), refund_id=refund["id"],
                            refund_status=refund["status"],
                            refund_amount=format_amount(refund["amount"], payment["currency"]))
        return Response(out, status_code=200 if refund["status"] == "succeeded" else 202)

    # ---- the sweeper ----------------------------------------------------------------------------------

    async def sweep_pending(self, now: datetime) -> dict[str, int]:
        """Settle our attempts and refunds left pending and untouched for `pending_sweep_after`."""
        untouched_since = now - timedelta(seconds=self.settings.pending_sweep_after)
        async with self.rt.uow() as uow:
            attempts = await store.pending_attempts(uow.session, untouched_since, limit=200)
            refunds = await store.pending_refunds(uow.session, untouched_since, limit=200)
        outcomes = {f"payment_{k}": n for k, n in (await settle_each(
            attempts, lambda row: self._sweep_attempt(row, now, untouched_since))).items()}
        outcomes |= {f"refund_{k}": n for k, n in (await settle_each(
            refunds, lambda row: self._sweep_refund(row, now, untouched_since))).items()}
        if outcomes:
            log.info("external_pending_swept", **outcomes)
        return outcomes

    async def _sweep_attempt(self, attempt: dict[str, Any], now: datetime, untouched_since: datetime) -> str:
        async with self.rt.uow() as uow:
            connection = await store.load_connection(uow.session, attempt["connection_id"])
        assert connection is not None
        adapter = self.adapters.for_connection(connection)
        if attempt["external_transaction_id"]:
            report = await adapter.retrieve_payment(attempt["external_transaction_id"])
        else:
            report = await find_payment(adapter, str(attempt["id"]), since=attempt["created_at"] - _CLOCK_SKEW,
                                        until=now)
        async with self.rt.uow() as uow:
            fresh = await store.load_transaction(uow.session, attempt["id"], lock=True)
            assert fresh is not None
            if fresh["status"] != "pending" or fresh["updated_at"] >= untouched_since:
                await uow.commit()  # settled or touched meanwhile: theirs stands
                return "skipped"
            if report is None and now - attempt["created_at"] < listing_lag(adapter) + timedelta(
                    seconds=self.settings.pending_sweep_after):
                # Not listed yet, but this processor's listing lags: look again later.
                await store.touch_pending(uow.session, attempt["id"], now)
                row = fresh
            elif report is None:  # the processor never saw it: nothing was charged
                row = await store.settle_unsent(uow.session, attempt["id"], "not_found_at_processor",
                                                "the processor has no payment for this attempt", now)
                assert row is not None
                uow.emit(transaction_recorded(row))
            else:
                row = await self.ledger.record_payment(uow, connection, report, origin="api", now=now)
                if row["status"] == "pending":
                    await store.touch_pending(uow.session, row["id"], now)
            await uow.commit()
        return row["status"]

    async def _sweep_refund(self, refund: dict[str, Any], now: datetime, untouched_since: datetime) -> str:
        async with self.rt.uow() as uow:
            payment = await store.load_transaction(uow.session, refund["transaction_id"])
            connection = await store.load_connection(uow.session, payment["connection_id"]) if payment else None
        assert payment is not None and connection is not None
        adapter = self.adapters.for_connection(connection)
        if refund["processor_refund_id"]:
            report = await adapter.retrieve_refund(refund["processor_refund_id"])
        else:
            report = await find_refund(adapter, payment["external_transaction_id"], str(refund["id"]))
        async with self.rt.uow() as uow:
            await store.load_transaction(uow.session, payment["id"], lock=True)
            current = await store.load_refund(uow.session, refund["id"])
            assert current is not None
            if current["status"] != "pending" or current["updated_at"] >= untouched_since:
                await uow.commit()
                return "skipped"
            if report is None:
                await store.update_refund(uow.session, refund["id"], dict(
                    status="failed", failure_reason=NOT_FOUND, updated_at=now))
                status = "failed"
            else:
                await self.ledger.record_refund(uow, connection, report, now=now)
                status = report.status
                if status == "pending":
                    await store.touch_pending_refund(uow.session, refund["id"], now)
            await uow.commit()
        return status
