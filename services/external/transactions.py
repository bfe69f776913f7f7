"""Lookups of external transactions (`GET /transactions`, internal `GET /internal/v1/transactions/{id}`)
and the barbers' commission rates read model (`config.changed`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from services.external import store
from services.external.mapping import transaction_out
from services.external.wire import TransactionPage
from shared.auth import Principal
from shared.errors import ProblemError, not_found
from shared.events import ConfigChanged, Event
from shared.internal_api import ExternalTransactionOut
from shared.outbox import UnitOfWork
from shared.pagination import page_of
from shared.service import ServiceRuntime


class TransactionService:
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.rt = runtime

    async def get(self, principal: Principal, transaction_id: uuid.UUID) -> ExternalTransactionOut:
        async with self.rt.uow() as uow:
            row = await store.load_transaction(uow.session, transaction_id)
        if row is None or (principal.role == "barber" and row.barber_id != principal.user_id):
            raise not_found(f"transaction {transaction_id}")
        return transaction_out(row)

    async def list(self, principal: Principal, *, barber_id: int | None, status: str | None, processor: str | None,
                   external_transaction_id: str | None, since: datetime | None, until: datetime | None,
                   cursor: str | None, limit: int) -> TransactionPage:
        if principal.role == "barber":
            if barber_id not in (None, principal.user_id):
                raise ProblemError(403, "forbidden", "barber_id: must be your own barber id", field="barber_id")
            barber_id = principal.user_id
        async with self.rt.uow() as uow:
            rows = await store.list_transactions(
                uow.session, barber_id=barber_id, status=status, processor=processor,
                external_transaction_id=external_transaction_id, since=since, until=until, cursor=cursor, limit=limit)
        page, next_cursor = page_of(rows, limit, lambda r: (r.created_at, r.id))
        return TransactionPage(items=[transaction_out(r) for r in page], next_cursor=next_cursor)

    async def apply_config_changed(self, uow: UnitOfWork, event: Event) -> None:
        """Keep each barber's commission rate (an older config never overwrites a newer one)."""
        config = event.decode(ConfigChanged)
        await store.upsert_barber_rate(uow.session, config.barber_id, Decimal(config.commission_rate),
                                       config.version, datetime.now(UTC))
