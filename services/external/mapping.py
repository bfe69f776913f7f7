"""Rows to what leaves the external service: responses and event payloads (no I/O, no decisions)."""

from __future__ import annotations

from decimal import Decimal

from services.external.domain import published_status
from services.external.store import ConnectionRow, TransactionRow, UnattributedRow
from services.external.wire import ConnectionOut, FeesOut, UnattributedOut
from shared.events import ConnectionChanged, ProcessingFees, TransactionRecorded
from shared.internal_api import ExternalTransactionOut
from shared.money import format_amount, format_rate


def fees_of(row: ConnectionRow) -> tuple[Decimal, Decimal] | None:
    fees = row.processing_fees
    return None if not fees else (Decimal(fees["percent"]), Decimal(fees.get("fixed") or 0))


def connection_out(row: ConnectionRow, *, processor_enabled: bool) -> ConnectionOut:
    fees = fees_of(row)
    return ConnectionOut(
        id=row.id, barber_id=row.barber_id, processor=row.processor_type, account_id=row.account_id,
        account_name=row.account_name, status=row.status, status_reason=row.status_reason,
        usable=row.status == "active" and processor_enabled,
        credentials_hint=row.connection_data.get("credentials_hint", "…"), webhook_url=row.webhook_url,
        webhook_secret_set=row.webhook_secret is not None, default_currency=row.default_currency,
        supports_payments=row.supports_payments, supports_refunds=row.supports_refunds,
        supports_recurring=row.supports_recurring,
        processing_fees=None if fees is None else FeesOut(percent=str(fees[0].normalize()),
                                                          fixed=format_amount(fees[1], row.default_currency)),
        total_transactions=row.total_transactions,
        total_volume=format_amount(row.total_volume, row.default_currency),
        last_transaction_at=row.last_transaction_at, last_sync_at=row.last_sync_at,
        connected_at=row.connected_at, disconnected_at=row.disconnected_at, created_at=row.created_at,
        updated_at=row.updated_at, version=row.version,
    )


def connection_changed(row: ConnectionRow, *, processor_enabled: bool) -> ConnectionChanged:
    fees = fees_of(row)
    return ConnectionChanged(
        connection_id=row.id, barber_id=row.barber_id, processor=row.processor_type,
        account_id=row.account_id, status=published_status(row.status, processor_enabled),
        default_currency=row.default_currency, supports_payments=row.supports_payments,
        supports_refunds=row.supports_refunds,
        processing_fees=None if fees is None else ProcessingFees(percent=fees[0], fixed=fees[1]),
        connection_version=row.version,
    )


def transaction_out(row: TransactionRow) -> ExternalTransactionOut:
    currency = row.currency
    return ExternalTransactionOut(
        id=row.id, connection_id=row.connection_id, barber_id=row.barber_id, processor=row.processor_type,
        external_transaction_id=row.external_transaction_id, appointment_id=row.appointment_id,
        client_id=row.client_id, route_id=row.route_id, amount=format_amount(row.amount, currency),
        refunded_amount=format_amount(row.refunded_amount, currency), currency=currency, status=row.status,
        processor_fee=format_amount(row.processor_fees, currency),
        commission_rate=format_rate(row.commission_rate),
        commission_amount=format_amount(row.commission_amount, currency), failure_code=row.failure_code,
        failure_reason=row.failure_reason, processed_at=row.processed_at, created_at=row.created_at,
        reconciliation_status=row.reconciliation_status, reconciled_at=row.reconciled_at,
    )


def transaction_recorded(row: TransactionRow, *, refund_amount: Decimal | None = None) -> TransactionRecorded:
    return TransactionRecorded(
        transaction_id=str(row.id), barber_id=row.barber_id, appointment_id=row.appointment_id,
        client_id=row.client_id, payment_type="external", processor=row.processor_type,
        connection_id=row.connection_id, external_transaction_id=row.external_transaction_id,
        amount=row.amount, refunded_amount=row.refunded_amount, currency=row.currency,
        status=row.status, commission_rate=row.commission_rate, commission_amount=row.commission_amount,
        processor_fee=row.processor_fees, processed_at=row.processed_at or row.created_at,
        sequence=row.version, failure_code=row.failure_code, refund_amount=refund_amount,
    )


def unattributed_out(row: UnattributedRow) -> UnattributedOut:
    return UnattributedOut(
        id=row.id, processor=row.processor_type, processor_account=row.processor_account,
        external_transaction_id=row.external_transaction_id, amount=format_amount(row.amount, row.currency),
        currency=row.currency, status=row.status, connection_ids=list(row.connection_ids),
        heard_from=row.heard_from, first_heard_at=row.first_heard_at, last_heard_at=row.last_heard_at,
        attributed_to=row.attributed_to,
        transaction_id=str(row.transaction_id) if row.transaction_id else None,
        attributed_at=row.attributed_at)
