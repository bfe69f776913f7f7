"""What a processor says about a payment or a refund, written into our records, whoever heard it
(our own API call, a webhook, the sweeper, reconciliation).

Every report is merged, never overwritten: a settled payment never goes back to pending, the first
settled outcome stands, and the refunded total is the sum of refunds the processor says succeeded.
So duplicated, late and out-of-order reports converge on the same rows, and `transaction.recorded`
is emitted only when something changed. A refund reported before its payment is kept and counted
when the payment arrives. Locks: the transaction row first, always.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from services.external import store
from services.external.domain import commission_for
from services.external.mapping import fees_of, transaction_recorded
from services.external.settings import ExternalSettings
from shared.fees import processor_fee
from shared.lifecycle import merged_status, status_with_refunds
from shared.outbox import UnitOfWork
from shared.processors.base import PaymentResult, RefundResult

Row = dict[str, Any]
log = structlog.get_logger("external.ledger")
# The failure a sweeper records when the processor has no trace of a refund; the processor's own
# later word overrides it.
NOT_FOUND = "not found at the processor"


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


class Ledger:
    def __init__(self, settings: ExternalSettings) -> None:
        self.settings = settings

    async def record_payment(self, uow: UnitOfWork, connection: Row, report: PaymentResult, *, origin: str,
                             now: datetime) -> Row:
        """Merge a report on a payment into its row (our attempt, found by reference; else by the
        processor's id; else a payment we learn of now). Returns the row as it stands."""
        session = uow.session
        processor = connection["processor_type"]
        await store.lock_processor_payment(session, processor, report.processor_payment_id)
        row = None
        if (ours := _uuid(report.reference)) is not None:
            row = await store.load_transaction(session, ours, lock=True)
            if row is not None and row["connection_id"] != connection["id"]:
                row = None  # a reference that is not ours on this account
        if row is None:
            row = await store.transaction_by_processor_id(session, processor, report.processor_payment_id, lock=True)
        if row is not None and row["connection_id"] != connection["id"]:
            # Signed with this connection's secret (which its barber may know) but about another
            # connection's payment: never let one account's notices move another's money.
            log.warning("report_about_another_connection", connection_id=connection["id"],
                        processor_payment_id=report.processor_payment_id)
            return row
        if row is None:
            row, inserted = await self._learn_payment(uow, connection, report, origin=origin, now=now)
            if not inserted:  # a concurrent report recorded it first: merge into theirs
                return await self.record_payment(uow, connection, report, origin=origin, now=now)
            if row["status"] != "pending":
                uow.emit(transaction_recorded(row))
            return await self._refresh_refunds(uow, row, now, adopt_only=True)
        base = merged_status(row["status"], report.status)
        values: Row = {}
        if row["external_transaction_id"] is None:
            values["external_transaction_id"] = report.processor_payment_id
        if row["status"] == "pending" and base != "pending":
            values["processed_at"] = report.created_at if origin != "api" else now
            if base in ("failed", "canceled"):
                values["failure_code"] = report.failure_code or row["failure_code"] or f"payment_{base}"
                values["failure_reason"] = report.failure_message or row["failure_reason"]
        status = status_with_refunds(base, row["amount"], row["refunded_amount"])
        if status != row["status"]:
            values.update(status=status, updated_at=now)
            row = await store.update_transaction(session, row["id"], values)
            uow.emit(transaction_recorded(row))
        elif values:
            row = await store.update_transaction(session, row["id"], values, bump=False)
        if values.get("external_transaction_id"):
            return await self._refresh_refunds(uow, row, now, adopt_only=True)
        return row

    async def _learn_payment(self, uow: UnitOfWork, connection: Row, report: PaymentResult, *, origin: str,
                             now: datetime) -> tuple[Row, bool]:
        """A payment the barber took on its account that we did not start: recorded with the
        barber's commission rate (from `config.changed`, else the platform default)."""
        session = uow.session
        rate = await store.barber_rate(session, connection["barber_id"]) or self.settings.default_commission_rate
        currency, amount = report.currency, report.amount
        status = merged_status(None, report.status)
        values = dict(
            id=uuid.uuid4(), connection_id=connection["id"], processor_type=connection["processor_type"],
            external_transaction_id=report.processor_payment_id, amount=amount, refunded_amount=Decimal(0),
            currency=currency, status=status, barber_id=connection["barber_id"],
            external_metadata={"learned_from": origin}, commission_rate=rate,
            commission_amount=commission_for(amount, rate, currency),
            processor_fees=processor_fee(connection["processor_type"], fees_of(connection), amount, currency),
            origin=origin, failure_code=report.failure_code if status in ("failed", "canceled") else None,
            failure_reason=report.failure_message if status in ("failed", "canceled") else None,
            processed_at=None if status == "pending" else report.created_at, created_at=now, updated_at=now,
            version=1,
        )
        # A concurrent report of the same payment may insert it first (ON CONFLICT waits for it).
        inserted = await store.insert_learned_transaction(session, values)
        return (values, False) if inserted is None else (inserted, True)

    async def record_refund(self, uow: UnitOfWork, connection: Row, report: RefundResult, *,
                            now: datetime) -> Row | None:
        """Merge a report on a refund: ours (by reference) or one we learn of; kept aside when its
        payment is unknown yet. Returns the transaction when it moved."""
        session = uow.session
        processor = connection["processor_type"]
        # The same lock as the payment's own reports: a refund that arrives while its payment is
        # being recorded for the first time is either adopted by it or finds it.
        await store.lock_processor_payment(session, processor, report.processor_payment_id)
        payment = await store.transaction_by_processor_id(session, processor, report.processor_payment_id, lock=True)
        if payment is not None and payment["connection_id"] != connection["id"]:
            log.warning("refund_report_about_another_connection", connection_id=connection["id"],
                        processor_payment_id=report.processor_payment_id)
            return None
        existing = await store.refund_by_processor_id(session, processor, report.processor_refund_id)
        if existing is None and (ours := _uuid(report.reference)) is not None:
            existing = await store.load_refund(session, ours)
        if existing is None:
            await store.insert_refund(session, dict(
                id=uuid.uuid4(), transaction_id=payment["id"] if payment else None, processor_type=processor,
                processor_payment_id=report.processor_payment_id, processor_refund_id=report.processor_refund_id,
                amount=report.amount, currency=report.currency, status=report.status,
                failure_reason=report.failure_reason, created_at=now, updated_at=now))
        elif self._moves(existing, report.status):
            await store.update_refund(session, existing["id"], dict(
                status=report.status, processor_refund_id=report.processor_refund_id,
                processor_payment_id=report.processor_payment_id,
                failure_reason=report.failure_reason if report.status == "failed" else None, updated_at=now))
        elif existing["processor_refund_id"] is None:
            await store.update_refund(session, existing["id"], dict(
                processor_refund_id=report.processor_refund_id, processor_payment_id=report.processor_payment_id))
        if payment is None:
            return None
        return await self._refresh_refunds(uow, payment, now)

    @staticmethod
    def _moves(existing: Row, reported: str) -> bool:
        """Refunds go pending -> succeeded | failed, and a succeeded one may still fail later
        (the card was closed); a failure we only inferred (not found at the processor) gives way to
        the processor's word; nothing else moves (a late "pending" is old news)."""
        current = existing["status"]
        inferred = current == "failed" and existing["failure_reason"] == NOT_FOUND
        return ((current == "pending" and reported != "pending") or (current == "succeeded" and reported == "failed")
                or (inferred and reported == "succeeded"))

    async def _refresh_refunds(self, uow: UnitOfWork, row: Row, now: datetime, *, adopt_only: bool = False) -> Row:
        """Adopt refunds that came before this payment, then recount what succeeded. (A payment
        heard of for the first time has refunds only if some were waiting for it.)"""
        session = uow.session
        adopted = 0
        if row["external_transaction_id"] is not None:
            adopted = await store.adopt_orphan_refunds(session, row["processor_type"], row["external_transaction_id"],
                                                       row["id"])
        if adopt_only and not adopted:
            return row
        succeeded, _ = await store.refund_totals(session, row["id"])
        succeeded = min(succeeded, row["amount"])  # a processor never refunds more than was paid
        status = status_with_refunds(row["status"], row["amount"], succeeded)
        if succeeded == row["refunded_amount"] and status == row["status"]:
            return row
        moved = succeeded - row["refunded_amount"]
        row = await store.update_transaction(session, row["id"], dict(refunded_amount=succeeded, status=status,
                                                                      updated_at=now))
        # Negative when a refund that had succeeded failed later (the money came back).
        uow.emit(transaction_recorded(row, refund_amount=moved))
        return row
