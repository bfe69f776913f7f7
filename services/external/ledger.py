"""What a processor says about a payment or a refund, written into our records, whoever asked it
(our own API call, a webhook's re-fetch, the sweeper, reconciliation). Only the processor's own word
comes here: a webhook body is a claim (the barber can sign anything with its own secret), so the
webhook service fetches the object first.

Every report is merged, never overwritten: a settled payment never goes back to pending, the first
settled outcome stands (a failed one may still complete), and the refunded total is the sum of
refunds the processor says succeeded. So duplicated, late and out-of-order reports converge on the
same rows, and `transaction.recorded` is emitted only when something changed.

Whose payment it is: ours by our reference (the attempt's id), else by the processor's id; a
payment nobody started is the connection's only when no other barber connected the same processor
account (otherwise it waits, unattributed, for an operator). A refund reported before its payment is
kept with the connection that heard it and adopted only by a payment of that processor account.
Locks: the processor payment's advisory lock, then the transaction row.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import structlog

from services.external import store
from services.external.domain import commission_for, processed_at_of
from services.external.mapping import fees_of, transaction_recorded
from services.external.settings import ExternalSettings
from services.external.store import ConnectionRow, RefundRow, TransactionRow
from shared.fees import processor_fee
from shared.lifecycle import merged_status, status_with_refunds
from shared.outbox import UnitOfWork
from shared.processors.base import PaymentResult, RefundResult

log = structlog.get_logger("external.ledger")
# The failure a sweeper records when the processor has no trace of a refund; the processor's own
# later word overrides it.
NOT_FOUND = "not found at the processor"


class _Foreign(enum.Enum):
    """What `Ledger._ours` finds for a report about another processor account's payment: a
    sentinel of its own type (not a row), so `row is _FOREIGN` also tells a type checker."""

    ROW = "foreign"


_FOREIGN = _Foreign.ROW


def as_uuid(value: str | None) -> uuid.UUID | None:
    """Our reference (an id of ours) in what a processor reports, or None when it is not one."""
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


class Ledger:
    def __init__(self, settings: ExternalSettings) -> None:
        self.settings = settings

    async def record_payment(self, uow: UnitOfWork, connection: ConnectionRow, report: PaymentResult, *,
                             origin: str, now: datetime, heard_at: datetime | None = None) -> TransactionRow | None:
        """Merge the processor's word on a payment into its row (our attempt, found by reference;
        else by the processor's id; else a payment we learn of now). Returns the row as it stands, or
        None when it is not this connection's to record (another account's, or a payment nobody
        started on an account several barbers connected: then it waits in `unattributed_payments`).
        `heard_at`: when the processor said it happened, if the object itself gives no time."""
        session = uow.session
        await store.lock_processor_payment(session, connection.processor_type, report.processor_payment_id)
        row = await self._ours(session, connection, report)
        if row is None:
            owners = await self._owners(session, connection)
            if len({c.barber_id for c in owners}) > 1:
                await self._hold(session, connection, owners, report, origin, now)
                return None
            learned = await self._learn_payment(uow, connection, report, origin=origin, now=now, heard_at=heard_at)
            if learned is None:  # a concurrent report recorded it first: merge into theirs
                return await self.record_payment(uow, connection, report, origin=origin, now=now, heard_at=heard_at)
            if learned.status != "pending":
                uow.emit(transaction_recorded(learned))
            return await self._refresh_refunds(uow, learned, now, adopt_only=True,
                                               account=connection.processor_account)
        if row is _FOREIGN:
            return None
        return await self._merge(uow, row, report, origin=origin, now=now, heard_at=heard_at,
                                 account=connection.processor_account)

    async def _ours(self, session, connection: ConnectionRow,
                    report: PaymentResult) -> TransactionRow | Literal[_Foreign.ROW] | None:
        """Our row for this payment: by our reference, else by the processor's id. `_FOREIGN` when
        the row is another processor account's (never moved by this connection's reports)."""
        row = None
        if (ours := as_uuid(report.reference)) is not None:
            row = await store.load_transaction(session, ours, lock=True)
        if row is None:
            row = await store.transaction_by_processor_id(session, connection.processor_type,
                                                          report.processor_payment_id, lock=True)
        if row is None or await self._same_account(session, connection, row):
            return row
        return _FOREIGN

    @staticmethod
    async def _same_account(session, connection: ConnectionRow, row: TransactionRow) -> bool:
        """Whether `row` (a payment) is on this connection's processor account: its own, or one of
        another connection to the same account (the processor's word about it is about that row too)."""
        if row.connection_id == connection.id:
            return True
        theirs = await store.load_connection(session, row.connection_id)
        if theirs is not None and connection.processor_account is not None \
                and theirs.processor_account == connection.processor_account:
            return True
        log.warning("report_about_another_account", connection_id=connection.id, transaction_id=str(row.id))
        return False

    async def _owners(self, session, connection: ConnectionRow) -> list[ConnectionRow]:
        if connection.processor_account is None:
            return [connection]
        return await store.account_connections(session, connection.processor_type, connection.processor_account)

    async def _hold(self, session, connection: ConnectionRow, owners: list[ConnectionRow], report: PaymentResult,
                    origin: str, now: datetime) -> None:
        log.warning("payment_unattributed", processor=connection.processor_type,
                    processor_payment_id=report.processor_payment_id, connections=[c.id for c in owners])
        await store.hold_unattributed(session, dict(
            processor_type=connection.processor_type, processor_account=connection.processor_account,
            external_transaction_id=report.processor_payment_id, amount=report.amount, currency=report.currency,
            status=merged_status(None, report.status), connection_ids=[c.id for c in owners],
            heard_from=origin), now)

    async def _merge(self, uow: UnitOfWork, row: TransactionRow, report: PaymentResult, *, origin: str,
                     now: datetime, heard_at: datetime | None, account: str | None) -> TransactionRow:
        session = uow.session
        base = merged_status(row.status, report.status)
        values: dict[str, Any] = {}
        if row.external_transaction_id is None:
            values["external_transaction_id"] = report.processor_payment_id
        if row.status == "pending" and base != "pending":
            values["processed_at"] = now if origin == "api" else processed_at_of(report.created_at, heard_at, now)
        if base in ("failed", "canceled") and row.status != base:
            values["failure_code"] = report.failure_code or row.failure_code or f"payment_{base}"
            values["failure_reason"] = report.failure_message or row.failure_reason
        if row.status in ("failed", "canceled") and base == "completed":
            values.update(failure_code=None, failure_reason=None)
            values["processed_at"] = row.processed_at or processed_at_of(report.created_at, heard_at, now)
            if row.route_id is not None and await store.other_live_attempt(session, row.route_id, row.id):
                # Failed (wrongly), then paid beside the route's live attempt: two payments for one
                # route. Both are money taken and both are recorded; this one is flagged to refund.
                values["flagged"] = "double_charge"  # counted by `external_double_charges`
                log.error("double_charge", transaction_id=str(row.id), route_id=str(row.route_id),
                          processor_payment_id=report.processor_payment_id)
        status = status_with_refunds(base, row.amount, row.refunded_amount)
        if status != row.status:
            values.update(status=status, updated_at=now)
            row = await store.update_transaction(session, row.id, values)
            uow.emit(transaction_recorded(row))
        elif values:
            row = await store.update_transaction(session, row.id, values, bump=False)
        if values.get("external_transaction_id"):
            return await self._refresh_refunds(uow, row, now, adopt_only=True, account=account)
        return row

    async def _learn_payment(self, uow: UnitOfWork, connection: ConnectionRow, report: PaymentResult, *,
                             origin: str, now: datetime, heard_at: datetime | None) -> TransactionRow | None:
        """A payment the barber took on its account that we did not start: recorded with the
        barber's commission rate (from `config.changed`, else the platform default). None when a
        concurrent report recorded it first."""
        rate = await store.barber_rate(uow.session, connection.barber_id)
        values = self.learned_values(connection, report, rate, origin=origin, now=now, heard_at=heard_at)
        # A concurrent report of the same payment may insert it first (ON CONFLICT waits for it).
        return await store.insert_learned_transaction(uow.session, values)

    def learned_values(self, connection: ConnectionRow, report: PaymentResult, rate: Decimal | None, *,
                       origin: str, now: datetime, heard_at: datetime | None) -> dict[str, Any]:
        """The row of a payment we learn of (`store.LEARNED_COLUMNS`), with the barber's commission
        rate (None: the platform default). Pure: the webhook's one-transaction path writes the same."""
        rate = self.settings.default_commission_rate if rate is None else rate  # 0 is a rate
        currency, amount = report.currency, report.amount
        status = merged_status(None, report.status)
        failed = status in ("failed", "canceled")
        return dict(
            id=uuid.uuid4(), connection_id=connection.id, processor_type=connection.processor_type,
            external_transaction_id=report.processor_payment_id, amount=amount, refunded_amount=Decimal(0),
            currency=currency, status=status, barber_id=connection.barber_id,
            external_metadata={"learned_from": origin}, commission_rate=rate,
            commission_amount=commission_for(amount, rate, currency),
            processor_fees=processor_fee(connection.processor_type, fees_of(connection), amount, currency),
            origin=origin, failure_code=report.failure_code if failed else None,
            failure_reason=report.failure_message if failed else None,
            processed_at=processed_at_of(report.created_at, heard_at, now) if status != "pending" else None,
            created_at=now, updated_at=now, version=1,
        )

    async def attribute(self, uow: UnitOfWork, connection: ConnectionRow, report: PaymentResult, *,
                        now: datetime) -> TransactionRow:
        """An operator's decision: this payment of a shared account is `connection`'s."""
        row = await store.transaction_by_processor_id(uow.session, connection.processor_type,
                                                      report.processor_payment_id, lock=True)
        if row is not None:
            return row
        learned = await self._learn_payment(uow, connection, report, origin="reconciliation", now=now, heard_at=None)
        if learned is None:  # a concurrent report recorded it first: it is theirs, as above
            return await self.attribute(uow, connection, report, now=now)
        if learned.status != "pending":
            uow.emit(transaction_recorded(learned))
        return await self._refresh_refunds(uow, learned, now, adopt_only=True, account=connection.processor_account)

    async def record_refund(self, uow: UnitOfWork, connection: ConnectionRow, report: RefundResult, *,
                            now: datetime) -> TransactionRow | None:
        """Merge the processor's word on a refund: ours (by reference) or one we learn of; kept aside,
        with the connection that heard it, when its payment is not on record. Returns the payment."""
        session = uow.session
        processor = connection.processor_type
        # The same lock as the payment's own reports: a refund that arrives while its payment is
        # being recorded for the first time is either adopted by it or finds it.
        await store.lock_processor_payment(session, processor, report.processor_payment_id)
        payment = await store.transaction_by_processor_id(session, processor, report.processor_payment_id, lock=True)
        if payment is not None and not await self._same_account(session, connection, payment):
            return None
        existing = await store.refund_by_processor_id(session, processor, report.processor_refund_id)
        if existing is None and (ours := as_uuid(report.reference)) is not None:
            existing = await store.load_refund(session, ours)
            if existing is not None and not self._is_ours(existing, report, payment):
                existing = None  # another refund that carries our reference: one of its own
        if existing is None:
            await store.insert_refund(session, dict(
                id=uuid.uuid4(), transaction_id=payment.id if payment else None, processor_type=processor,
                connection_id=connection.id, processor_payment_id=report.processor_payment_id,
                processor_refund_id=report.processor_refund_id, amount=report.amount, currency=report.currency,
                status=report.status, failure_reason=report.failure_reason, created_at=now, updated_at=now))
        elif self._moves(existing, report.status):
            await store.update_refund(session, existing.id, dict(
                status=report.status, processor_refund_id=report.processor_refund_id,
                processor_payment_id=report.processor_payment_id,
                failure_reason=report.failure_reason if report.status == "failed" else None, updated_at=now))
        elif existing.processor_refund_id is None:
            await store.update_refund(session, existing.id, dict(
                processor_refund_id=report.processor_refund_id, processor_payment_id=report.processor_payment_id))
        if payment is None:
            return None
        return await self._refresh_refunds(uow, payment, now, account=connection.processor_account)

    @staticmethod
    def _is_ours(existing: RefundRow, report: RefundResult, payment: TransactionRow | None) -> bool:
        """Whether a refund found by the reference it carries is the one we asked for. The reference
        is our refund's id, no secret, and whoever holds the account can put it on any refund: it
        only names ours when it is of the same payment, for the same amount and currency, and ours
        has no other processor id yet (a 0.01 refund bearing it must not settle our 70.00)."""
        return ((payment is None or existing.transaction_id == payment.id)
                and existing.processor_refund_id in (None, report.processor_refund_id)
                and existing.amount == report.amount and existing.currency == report.currency)

    @staticmethod
    def _moves(existing: RefundRow, reported: str) -> bool:
        """Refunds go pending -> succeeded | failed, and a succeeded one may still fail later
        (the card was closed); a failure we only inferred (not found at the processor) gives way to
        the processor's word; nothing else moves (a late "pending" is old news)."""
        current = existing.status
        inferred = current == "failed" and existing.failure_reason == NOT_FOUND
        return ((current == "pending" and reported != "pending") or (current == "succeeded" and reported == "failed")
                or (inferred and reported == "succeeded"))

    async def _refresh_refunds(self, uow: UnitOfWork, row: TransactionRow, now: datetime, *,
                               adopt_only: bool = False, account: str | None) -> TransactionRow:
        """Adopt refunds of this payment heard before it (through its own processor account), then
        recount what succeeded. (A payment heard of for the first time has refunds only if some were
        waiting for it.)"""
        session = uow.session
        adopted = 0
        if row.external_transaction_id is not None:
            adopted = await store.adopt_orphan_refunds(session, row.processor_type, row.external_transaction_id,
                                                       row.id, account)
        if adopt_only and not adopted:
            return row
        succeeded, _ = await store.refund_totals(session, row.id)
        succeeded = min(succeeded, row.amount)  # a processor never refunds more than was paid
        status = status_with_refunds(row.status, row.amount, succeeded)
        if succeeded == row.refunded_amount and status == row.status:
            return row
        moved = succeeded - row.refunded_amount
        row = await store.update_transaction(session, row.id, dict(refunded_amount=succeeded, status=status,
                                                                      updated_at=now))
        # Negative when a refund that had succeeded failed later (the money came back).
        uow.emit(transaction_recorded(row, refund_amount=moved))
        return row


