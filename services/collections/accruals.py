"""Accruals from `transaction.recorded`, and each barber's collection settings from `config.changed`.

Per transaction the service keeps the state its accruals were computed from; an event with a
higher `sequence` moves it, and the accrual rows written are the difference between what the
transaction owed before and what it owes now (`domain.owed`). Duplicated or out-of-order events
change nothing (the consumer skips a seen event id; an older sequence is old news), and the
accruals of a transaction always add up to exactly what it owes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.collections import store
from services.collections.domain import Owed, accrual_deltas, owed
from shared.events import ConfigChanged, Event, TransactionRecorded
from shared.observability import ACCRUALS_APPLIED
from shared.outbox import UnitOfWork


class AccrualService:
    async def apply_transactions_recorded(self, uow: UnitOfWork, events: list[Event]) -> None:
        """A fetched batch in one transaction (one commit and one ack round for all of them);
        each event as on its own, in delivery order."""
        for event in events:
            await self.apply_transaction_recorded(uow, event)

    async def apply_transaction_recorded(self, uow: UnitOfWork, event: Event) -> None:
        tx = event.decode(TransactionRecorded)
        if tx.payment_type != "external":  # centralized: the commission was the application fee
            return
        session = uow.session
        now = datetime.now(UTC)
        state = await store.lock_transaction_state(session, tx.transaction_id)
        if state is None:
            await store.insert_transaction_state(session, dict(
                transaction_id=tx.transaction_id, barber_id=tx.barber_id, currency=tx.currency, sequence=0,
                status="pending", amount=tx.amount, refunded_amount=Decimal(0), commission_amount=Decimal(0),
                commission_accrued=Decimal(0), commission_reversed=Decimal(0), updated_at=now))
            state = await store.lock_transaction_state(session, tx.transaction_id)
            if state is None:  # inserted (or raced in) just now in this very transaction
                raise RuntimeError(f"transaction state {tx.transaction_id} vanished after its insert")
        if tx.sequence <= state.sequence:
            return  # an older state than the one already applied
        before = Owed(state.commission_accrued, state.commission_reversed)
        after = owed(payment_type=tx.payment_type, status=tx.status, amount=tx.amount,
                     refunded_amount=tx.refunded_amount, commission=tx.commission_amount, currency=tx.currency)
        deltas = accrual_deltas(before, after)
        # A commission falls in the window of the payment; a reversal in the window it was heard of.
        await store.insert_accruals(session, [
            dict(barber_id=tx.barber_id, transaction_id=tx.transaction_id, currency=tx.currency, kind=kind,
                 amount=amount, accrued_at=tx.processed_at if kind == "commission" else event.occurred_at,
                 event_id=event.event_id, created_at=now)
            for kind, amount in deltas
        ])
        await store.update_transaction_state(session, tx.transaction_id, dict(
            sequence=tx.sequence, status=tx.status, amount=tx.amount, refunded_amount=tx.refunded_amount,
            commission_amount=tx.commission_amount, commission_accrued=after.commission,
            commission_reversed=after.reversed, updated_at=now))
        for kind, _ in deltas:
            ACCRUALS_APPLIED.labels(kind).inc()

    async def apply_config_changed(self, uow: UnitOfWork, event: Event) -> None:
        config = event.decode(ConfigChanged)
        await store.upsert_settings(uow.session, dict(
            barber_id=config.barber_id, commission_collection_frequency=config.commission_collection_frequency,
            auto_collection_enabled=config.auto_collection_enabled, connect_account_id=config.connect_account_id,
            commission_rate=Decimal(config.commission_rate), config_version=config.version,
            updated_at=datetime.now(UTC)))
