"""What was paid, whichever processor took it: `GET /transactions/{id}` and `GET /transactions`.
Platform payments are the router's own rows; an external payment is asked of the external service."""

from __future__ import annotations

import uuid
from datetime import datetime

from services.router import store
from services.router.external import ExternalPayments
from services.router.mapping import external_transaction_out, transaction_out
from services.router.wire import TransactionOut, TransactionPage
from shared.auth import Principal
from shared.errors import ProblemError, not_found
from shared.internal_api import ExternalTransactionOut
from shared.pagination import page_of
from shared.service import ServiceRuntime


class TransactionLookups:
    def __init__(self, runtime: ServiceRuntime, external: ExternalPayments) -> None:
        self.rt = runtime
        self.external = external

    async def get_transaction(self, principal: Principal, transaction_id: uuid.UUID) -> TransactionOut:
        async with self.rt.uow() as uow:
            row = await store.load_payment(uow.session, transaction_id)
            refunds = await store.refunds_of(uow.session, transaction_id) if row else []
        if row is None:  # not a platform payment: perhaps an external one
            return external_transaction_out(await self.external_transaction(principal, transaction_id))
        if principal.role == "barber" and row.barber_id != principal.barber_id:
            raise not_found(f"transaction {transaction_id}")
        return transaction_out(row, refunds)

    async def external_transaction(self, principal: Principal, transaction_id: uuid.UUID) -> ExternalTransactionOut:
        """An external transaction as the external service has it (404 unless the caller may see it)."""
        try:
            tx = await self.external.transaction(transaction_id)
        except ProblemError as problem:
            if problem.status == 404:
                raise not_found(f"transaction {transaction_id}") from None
            raise
        if principal.role == "barber" and tx.barber_id != principal.barber_id:
            raise not_found(f"transaction {transaction_id}")
        return tx

    async def list_transactions(self, *, barber_id: int | None, status: str | None, payment_type: str | None,
                                since: datetime | None, until: datetime | None, cursor: str | None,
                                limit: int) -> TransactionPage:
        async with self.rt.uow() as uow:
            rows = await store.list_payments(uow.session, barber_id=barber_id, status=status,
                                             payment_type=payment_type, since=since, until=until,
                                             cursor=cursor, limit=limit)
        page, next_cursor = page_of(rows, limit, lambda row: (row.created_at, row.id))
        return TransactionPage(items=[transaction_out(row) for row in page], next_cursor=next_cursor)
