"""Read models from events: each transaction's latest state and its daily rollups
(`transaction.recorded`), and each collection's state and the commission collected per day
(`collection.due`, `collection.settled`).

Every handler runs in the consumer's unit of work, which has claimed the event id: a redelivery
changes nothing, and the fact and its rollups commit together. A transaction moves only to a
higher `sequence` (the producer's order), and the rollups move by the difference between its old
and new parts (`domain.rollup_deltas`), so duplicated and out-of-order events converge on the
same figures.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.analytics import store
from services.analytics.domain import NONE, Fact, Measures, RollupKey, rollup_deltas
from services.analytics.store import FactRow
from shared.events import CollectionDue, CollectionSettled, Event, TransactionImported, TransactionRecorded
from shared.observability import EVENT_LAG
from shared.outbox import UnitOfWork


def fact_of_row(row: FactRow) -> Fact:
    return Fact(barber_id=row.barber_id, payment_type=row.payment_type, processor=row.processor,
                currency=row.currency, source=row.source, status=row.status, amount=row.amount,
                refunded_amount=row.refunded_amount, commission_amount=row.commission_amount,
                processor_fee=row.processor_fee, day=row.day)


def fact_values(tx: TransactionRecorded, event: Event, now: datetime) -> FactRow:
    processed_at = tx.processed_at.astimezone(UTC)
    return FactRow(
        transaction_id=tx.transaction_id, barber_id=tx.barber_id, appointment_id=tx.appointment_id,
        client_id=tx.client_id, payment_type=tx.payment_type, processor=tx.processor,
        connection_id=tx.connection_id, external_transaction_id=tx.external_transaction_id,
        currency=tx.currency, status=tx.status, amount=tx.amount, refunded_amount=tx.refunded_amount,
        commission_rate=tx.commission_rate, commission_amount=tx.commission_amount,
        processor_fee=tx.processor_fee, processed_at=processed_at, day=processed_at.date(),
        sequence=tx.sequence, source=tx.source, updated_at=now, event_at=event.occurred_at)


class Projections:
    async def apply_transaction_recorded(self, uow: UnitOfWork, event: Event) -> None:
        await self.apply_transactions(uow, [event])

    async def apply_transactions(self, uow: UnitOfWork, events: list[Event]) -> None:
        """A batch of `transaction.recorded`: per transaction its highest state wins (in the batch
        and against the fact held), the rollups move by the sum of the deltas, in three statements
        whatever the batch's size."""
        await self._apply_recorded(uow, [(event, event.decode(TransactionRecorded)) for event in events])

    async def apply_transactions_imported(self, uow: UnitOfWork, event: Event) -> None:
        """`transaction.imported`: up to 500 legacy payments, applied as one batch of their
        `transaction.recorded` payloads."""
        await self._apply_recorded(uow, [(event, tx) for tx in event.decode(TransactionImported).transactions])

    async def apply_imports(self, uow: UnitOfWork, events: list[Event]) -> None:
        """Several `transaction.imported` events at once: one batch of every payment they carry."""
        await self._apply_recorded(uow, [(event, tx) for event in events
                                         for tx in event.decode(TransactionImported).transactions])

    async def _apply_recorded(self, uow: UnitOfWork, recorded: list[tuple[Event, TransactionRecorded]]) -> None:
        latest: dict[str, tuple[Event, TransactionRecorded]] = {}
        for event, tx in recorded:
            held = latest.get(tx.transaction_id)
            if held is None or tx.sequence > held[1].sequence:
                latest[tx.transaction_id] = (event, tx)
        session = uow.session
        current = await store.lock_facts(session, list(latest))
        deltas: dict[RollupKey, Measures] = {}
        facts = []
        now = datetime.now(UTC)
        for transaction_id, (event, tx) in latest.items():
            held = current.get(transaction_id)
            if held is not None and tx.sequence <= held.sequence:
                continue  # the same state again, or an older one than we hold
            values = fact_values(tx, event, now)
            for key, delta in rollup_deltas(fact_of_row(held) if held else None, fact_of_row(values)).items():
                deltas[key] = deltas.get(key, NONE) + delta
            facts.append(values)
        await store.add_to_daily_payments(session, {k: d for k, d in deltas.items() if not d.is_zero()})
        await store.save_facts(session, facts)
        for event in {id(event): event for event, _ in latest.values()}.values():
            _lag(event)

    async def apply_collection_due(self, uow: UnitOfWork, event: Event) -> None:
        due = event.decode(CollectionDue)
        collection_id = uuid.UUID(due.collection_id)
        current = await store.lock_collection(uow.session, collection_id)
        if current is not None and (current.status == "collected" or current.changed_at > event.occurred_at):
            return  # collected is final; an older notice changes nothing
        await store.save_collection(uow.session, dict(
            collection_id=collection_id, barber_id=due.barber_id, currency=due.currency, amount=due.amount,
            status="pending", failed_reason=None, collected_at=None, changed_at=event.occurred_at))
        _lag(event)

    async def apply_collection_settled(self, uow: UnitOfWork, event: Event) -> None:
        settled = event.decode(CollectionSettled)
        collection_id = uuid.UUID(settled.collection_id)
        current = await store.lock_collection(uow.session, collection_id)
        if current is not None and current.status == "collected":
            return  # counted once, when it was collected
        if settled.status != "collected" and current is not None and current.changed_at > event.occurred_at:
            return
        collected = settled.status == "collected"
        await store.save_collection(uow.session, dict(
            collection_id=collection_id, barber_id=settled.barber_id, currency=settled.currency,
            amount=settled.amount, status=settled.status, failed_reason=settled.failed_reason,
            collected_at=event.occurred_at if collected else None, changed_at=event.occurred_at))
        if collected:
            await store.add_collected(uow.session, day=event.occurred_at.astimezone(UTC).date(),
                                      barber_id=settled.barber_id, currency=settled.currency, amount=settled.amount)
        _lag(event)


def _lag(event: Event) -> None:
    EVENT_LAG.labels(event.event_type).observe(max(0.0, (datetime.now(UTC) - event.occurred_at).total_seconds()))
