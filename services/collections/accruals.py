"""Accruals from `transaction.recorded`, and each barber's collection settings from `config.changed`.

Per transaction the service keeps the state its accruals were computed from; an event with a
higher `sequence` moves it, and the accrual rows written are the difference between what the
transaction owed before and what it owes now (`domain.owed`). Duplicated or out-of-order events
change nothing (the consumer skips a seen event id; an older sequence is old news), and the
accruals of a transaction always add up to exactly what it owes.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

from services.collections import store
from services.collections.store import Values
from services.collections.domain import Owed, accrual_deltas, owed
from shared.events import ConfigChanged, Event, TransactionRecorded
from shared.observability import ACCRUALS_APPLIED
from shared.outbox import UnitOfWork


class AccrualService:
    async def apply_transactions_recorded(self, uow: UnitOfWork, events: list[Event]) -> None:
        """A fetched batch in one transaction (one commit and one ack round for all of them). Payments
        heard of for the first time, each once in the batch, are started in one statement
        (`store.start_transaction_states`); every other event is applied as on its own, in delivery
        order (events of one transaction keep their order; different transactions are independent)."""
        now = datetime.now(UTC)
        heard = [(event, event.decode(TransactionRecorded)) for event in events]
        heard = [(event, tx) for event, tx in heard if tx.payment_type == "external"]
        times = Counter(tx.transaction_id for _, tx in heard)
        first = {tx.transaction_id: _changes(event, tx, NOTHING_OWED, now) for event, tx in heard
                 if times[tx.transaction_id] == 1 and tx.sequence > 0}
        started = await store.start_transaction_states(
            uow.session, [state for state, _ in first.values()],
            [accrual for _, accruals in first.values() for accrual in accruals])
        for event, tx in heard:
            if tx.transaction_id in started:
                _count(first[tx.transaction_id][1])
            else:
                await self._apply(uow, event, tx, now)

    async def apply_transaction_recorded(self, uow: UnitOfWork, event: Event) -> None:
        tx = event.decode(TransactionRecorded)
        if tx.payment_type != "external":  # centralized: the commission was the application fee
            return
        await self._apply(uow, event, tx, datetime.now(UTC))

    async def _apply(self, uow: UnitOfWork, event: Event, tx: TransactionRecorded, now: datetime) -> None:
        session = uow.session
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
        values, accruals = _changes(event, tx, Owed(state.commission_accrued, state.commission_reversed), now)
        await store.insert_accruals(session, accruals)
        await store.update_transaction_state(session, tx.transaction_id, values)
        _count(accruals)

    async def apply_config_changed(self, uow: UnitOfWork, event: Event) -> None:
        await self.apply_configs_changed(uow, [event])

    async def apply_configs_changed(self, uow: UnitOfWork, events: list[Event]) -> None:
        """A batch of barbers' configs (the legacy import sends thousands at once) in one statement:
        each barber's newest version in the batch, and only over an older one on record."""
        now = datetime.now(UTC)
        newest: dict[int, ConfigChanged] = {}
        for event in events:
            config = event.decode(ConfigChanged)
            kept = newest.get(config.barber_id)
            if kept is None or config.version >= kept.version:
                newest[config.barber_id] = config
        await store.upsert_settings(uow.session, [dict(
            barber_id=c.barber_id, commission_collection_frequency=c.commission_collection_frequency,
            auto_collection_enabled=c.auto_collection_enabled, connect_account_id=c.connect_account_id,
            commission_rate=Decimal(c.commission_rate), config_version=c.version, updated_at=now)
            for c in newest.values()])


NOTHING_OWED = Owed(Decimal(0), Decimal(0))


def _changes(event: Event, tx: TransactionRecorded, before: Owed, now: datetime) -> tuple[Values, list[Values]]:
    """The transaction's state after this event, and the accrual rows that move what it owes from
    `before` to that (`domain.accrual_deltas`)."""
    after = owed(payment_type=tx.payment_type, status=tx.status, amount=tx.amount,
                 refunded_amount=tx.refunded_amount, commission=tx.commission_amount, currency=tx.currency)
    # A commission falls in the window of the payment; a reversal in the window it was heard of.
    accruals = [dict(barber_id=tx.barber_id, transaction_id=tx.transaction_id, currency=tx.currency, kind=kind,
                     amount=amount, accrued_at=tx.processed_at if kind == "commission" else event.occurred_at,
                     event_id=event.event_id, created_at=now)
                for kind, amount in accrual_deltas(before, after)]
    state = dict(transaction_id=tx.transaction_id, barber_id=tx.barber_id, currency=tx.currency,
                 sequence=tx.sequence, status=tx.status, amount=tx.amount, refunded_amount=tx.refunded_amount,
                 commission_amount=tx.commission_amount, commission_accrued=after.commission,
                 commission_reversed=after.reversed, updated_at=now)
    return state, accruals


def _count(accruals: list[Values]) -> None:
    for accrual in accruals:
        ACCRUALS_APPLIED.labels(accrual["kind"]).inc()
