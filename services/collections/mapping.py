"""Rows to what leaves the collections service: responses and event payloads."""

from __future__ import annotations

from services.collections.store import CollectionRow
from services.collections.wire import CollectionOut
from shared.events import CollectionDue, CollectionSettled
from shared.money import format_amount, format_rate


def collection_out(row: CollectionRow) -> CollectionOut:
    currency = row.currency
    return CollectionOut(
        id=row.id, barber_id=row.barber_id, amount=format_amount(row.amount, currency), currency=currency,
        status=row.status, collection_type=row.collection_type,
        transaction_ids=list(row.external_transaction_ids),
        commission_rate=None if row.commission_rate is None else format_rate(row.commission_rate),
        due_date=row.due_date, attempts=row.attempts, next_attempt_at=row.next_attempt_at,
        collection_method=row.collection_method, payment_intent_id=row.payment_intent_id,
        collected_at=row.collected_at, failed_reason=row.failed_reason, created_at=row.created_at,
    )


def collection_due(row: CollectionRow, attempt: int) -> CollectionDue:
    return CollectionDue(
        collection_id=str(row.id), barber_id=row.barber_id, amount=row.amount, currency=row.currency,
        transaction_ids=list(row.external_transaction_ids), due_date=row.due_date, attempt=attempt,
    )


def collection_settled(row: CollectionRow) -> CollectionSettled:
    return CollectionSettled(
        collection_id=str(row.id), barber_id=row.barber_id, amount=row.amount, currency=row.currency,
        status=row.status, failed_reason=row.failed_reason,
    )
