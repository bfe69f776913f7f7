"""The router's read model of barbers' processor connections, fed by `connection.changed`.

An event older than the stored state never overwrites it. Cached barber contexts are dropped
after the read model's commit (a reader invalidated earlier could re-cache the old state before
the update lands), here and, over core NATS, in every other replica.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from services.router import store
from services.router.domain import PROCESSORS
from services.router.routing import BarberContexts
from services.router.settings import RouterSettings
from shared.events import ConnectionChanged, Event
from shared.outbox import UnitOfWork
from shared.service import ServiceRuntime


class ConnectionReadModel:
    def __init__(self, runtime: ServiceRuntime, settings: RouterSettings, contexts: BarberContexts) -> None:
        self.rt = runtime
        self.settings = settings
        self.contexts = contexts

    async def apply_connection_changed(self, uow: UnitOfWork, event: Event) -> None:
        data = event.decode(ConnectionChanged)
        if data.processor not in PROCESSORS:
            raise ValueError(f"unknown processor {data.processor!r}")
        fees = data.processing_fees
        await store.upsert_connection(uow.session, {
            "connection_id": data.connection_id,
            "barber_id": data.barber_id,
            "processor": data.processor,
            "account_id": data.account_id,
            "status": data.status,
            "default_currency": data.default_currency.upper(),
            "supports_payments": data.supports_payments,
            "supports_refunds": data.supports_refunds,
            "fee_percent": fees.percent if fees else None,
            "fee_fixed": fees.fixed if fees else None,
            "connected_at": event.occurred_at,
            "event_occurred_at": event.occurred_at,
            "version": data.connection_version,
            "updated_at": datetime.now(UTC),
        })
        # Dropped here and, over core NATS, in every other replica (`BarberContexts.changed`).
        uow.after_commit(lambda: asyncio.ensure_future(self.contexts.changed(data.barber_id)))
