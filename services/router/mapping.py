"""Rows to what leaves the router: response structs and event payloads (no I/O, no decisions)."""

from __future__ import annotations

from decimal import Decimal

from services.router.domain import Connection, PaymentConfig
from services.router.store import ConfigRow, ConnectionRow, DecisionRow, PaymentRow, RefundRow
from services.router.wire import (
    ConfigOut,
    FallbackOut,
    ProcessOut,
    RefundOut,
    RefundSummary,
    RouteOut,
    TransactionOut,
)
from shared.events import ConfigChanged, TransactionRecorded
from shared.internal_api import ExternalTransactionOut, RefundOutcome
from shared.money import format_amount, format_rate


def config_of(row: ConfigRow | None, defaults: ConfigRow) -> PaymentConfig:
    source = row or defaults
    return PaymentConfig(
        barber_id=source.barber_id,
        payment_mode=source.payment_mode,
        commission_rate=Decimal(source.commission_rate),
        preferred_processor=source.preferred_processor,
        fallback_enabled=source.fallback_enabled,
        min_external_amount=source.min_external_amount,
        max_platform_amount=source.max_platform_amount,
        split_threshold=source.split_threshold,
        threshold_currency=source.threshold_currency,
        connect_account_id=source.connect_account_id,
        is_default=row is None,
    )


def connection_of(row: ConnectionRow) -> Connection:
    fees = (row.fee_percent, row.fee_fixed or Decimal(0)) if row.fee_percent is not None else None
    return Connection(
        id=row.connection_id, processor=row.processor, status=row.status,
        default_currency=row.default_currency, supports_payments=row.supports_payments,
        connected_at=row.connected_at, processing_fees=fees,
    )


def config_out(row: ConfigRow, *, is_default: bool) -> ConfigOut:
    currency = row.threshold_currency

    def threshold(value: Decimal | None) -> str | None:
        return None if value is None else format_amount(value, currency)

    return ConfigOut(
        barber_id=row.barber_id,
        payment_mode=row.payment_mode,
        preferred_processor=row.preferred_processor,
        fallback_enabled=row.fallback_enabled,
        min_external_amount=threshold(row.min_external_amount),
        max_platform_amount=threshold(row.max_platform_amount),
        split_threshold=threshold(row.split_threshold),
        threshold_currency=currency,
        commission_rate=format_rate(Decimal(row.commission_rate)),
        commission_collection_frequency=row.commission_collection_frequency,
        auto_collection_enabled=row.auto_collection_enabled,
        webhook_notifications=row.webhook_notifications,
        email_notifications=row.email_notifications,
        analytics_enabled=row.analytics_enabled,
        connect_account_id=row.connect_account_id,
        is_default=is_default,
        version=row.version,
        updated_at=row.updated_at,
    )


def config_changed(out: ConfigOut) -> ConfigChanged:
    fields = {name: getattr(out, name) for name in ConfigChanged.__struct_fields__}
    return ConfigChanged(**fields)


def route_out(row: DecisionRow) -> RouteOut:
    currency = row.currency
    return RouteOut(
        route_id=row.route_id, barber_id=row.barber_id, appointment_id=row.appointment_id,
        payment_type=row.payment_type, processor=row.processor, connection_id=row.connection_id,
        amount=format_amount(row.amount, currency), currency=currency,
        commission_rate=format_rate(row.commission_rate),
        commission_amount=format_amount(row.commission_amount, currency),
        estimated_processor_fee=format_amount(row.estimated_processor_fee, currency),
        barber_net=format_amount(row.barber_net, currency), reason=row.reason,
        fallback_used=row.fallback_used, decided_at=row.decided_at,
    )


def process_out(row: PaymentRow, decision: DecisionRow) -> ProcessOut:
    """A platform payment of `decision`'s route. An external route paid on the platform fell back,
    and every answer about it says so (the first, a replay, paying the route again)."""
    currency = row.currency
    fell_back = decision.payment_type == "external" and decision.channel == "platform"
    return ProcessOut(
        transaction_id=row.id, route_id=row.route_id, status=row.status, payment_type="centralized",
        processor="stripe", external_transaction_id=row.stripe_payment_intent_id,
        amount=format_amount(row.amount, currency), currency=currency,
        commission_amount=format_amount(row.commission_amount, currency),
        fallback_used=fell_back or decision.fallback_used,
        fallback_from=FallbackOut(
            processor=decision.processor, reason=decision.fallback_reason or "processor_unavailable",
            transaction_id=str(decision.fallback_transaction_id) if decision.fallback_transaction_id else None,
        ) if fell_back else None,
    )


def transaction_out(row: PaymentRow, refunds: list[RefundRow] | None = None) -> TransactionOut:
    currency = row.currency
    return TransactionOut(
        transaction_id=row.id, route_id=row.route_id, barber_id=row.barber_id,
        appointment_id=row.appointment_id, client_id=row.client_id, status=row.status,
        payment_type="centralized", processor="stripe", external_transaction_id=row.stripe_payment_intent_id,
        amount=format_amount(row.amount, currency),
        refunded_amount=format_amount(row.refunded_amount, currency), currency=currency,
        commission_rate=format_rate(row.commission_rate),
        commission_amount=format_amount(row.commission_amount, currency),
        processor_fee=format_amount(row.processor_fee, currency),
        failure_code=row.failure_code, failure_reason=row.failure_reason,
        created_at=row.created_at, processed_at=row.processed_at,
        refunds=None if refunds is None else [
            RefundSummary(refund_id=f.id, amount=format_amount(f.amount, currency), status=f.status,
                          failure_reason=f.failure_reason, created_at=f.created_at)
            for f in refunds
        ],
    )


def refund_out(payment: PaymentRow, refund: RefundRow) -> RefundOut:
    currency = payment.currency
    return RefundOut(
        transaction_id=payment.id, refund_id=refund.id, refund_status=refund.status,
        status=payment.status, refund_amount=format_amount(refund.amount, currency),
        refunded_amount=format_amount(payment.refunded_amount, currency),
        amount=format_amount(payment.amount, currency), currency=currency,
        failure_reason=refund.failure_reason,
    )


def transaction_recorded(row: PaymentRow, *, refund_amount: Decimal | None = None) -> TransactionRecorded:
    """`transaction.recorded` for a platform payment; `sequence` is the row's version, which grows
    with every state change, so consumers keep the latest."""
    return TransactionRecorded(
        transaction_id=str(row.id),
        barber_id=row.barber_id,
        appointment_id=row.appointment_id,
        client_id=row.client_id,
        payment_type="centralized",
        processor="stripe",
        connection_id=None,
        external_transaction_id=row.stripe_payment_intent_id,
        amount=row.amount,
        refunded_amount=row.refunded_amount,
        currency=row.currency,
        status=row.status,
        commission_rate=row.commission_rate,
        commission_amount=row.commission_amount,
        processor_fee=row.processor_fee,
        processed_at=row.processed_at or row.created_at,
        sequence=row.version,
        failure_code=row.failure_code,
        refund_amount=refund_amount,
    )


def external_process_out(decision: DecisionRow, tx: ExternalTransactionOut) -> ProcessOut:
    return ProcessOut(
        transaction_id=tx.id, route_id=decision.route_id, status=tx.status, payment_type="external",
        processor=tx.processor, external_transaction_id=tx.external_transaction_id, amount=tx.amount,
        currency=tx.currency, commission_amount=tx.commission_amount,
    )


def external_transaction_out(tx: ExternalTransactionOut) -> TransactionOut:
    return TransactionOut(
        transaction_id=tx.id, route_id=tx.route_id, barber_id=tx.barber_id, appointment_id=tx.appointment_id,
        client_id=tx.client_id, status=tx.status, payment_type="external", processor=tx.processor,
        external_transaction_id=tx.external_transaction_id, amount=tx.amount, refunded_amount=tx.refunded_amount,
        currency=tx.currency, commission_rate=tx.commission_rate, commission_amount=tx.commission_amount,
        processor_fee=tx.processor_fee, failure_code=tx.failure_code, failure_reason=tx.failure_reason,
        created_at=tx.created_at, processed_at=tx.processed_at,
    )


def external_refund_out(outcome: RefundOutcome) -> RefundOut:
    tx = outcome.transaction
    return RefundOut(
        transaction_id=tx.id, refund_id=outcome.refund_id, refund_status=outcome.refund_status, status=tx.status,
        refund_amount=outcome.refund_amount, refunded_amount=tx.refunded_amount, amount=tx.amount,
        currency=tx.currency, failure_reason=outcome.failure_reason,
    )
