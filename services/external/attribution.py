"""Payments nobody started, on a processor account several barbers connected: they wait in
`unattributed_payments` (the ledger puts them there) until an operator says whose they are.

`GET /unattributed` lists them; `POST /unattributed/{id}/attribute` records one for the chosen
connection, as the processor says it is now (fetched again, with its refunds), with its event.
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.external import store
from services.external.ledger import Ledger
from services.external.mapping import transaction_out, unattributed_out
from services.external.processors import Adapters
from services.external.wire import UnattributedPage
from shared.auth import Principal
from shared.errors import ProblemError, not_found
from shared.internal_api import ExternalTransactionOut
from shared.operations import audit
from shared.pagination import page_of
from shared.processors import base as p
from shared.service import ServiceRuntime


class AttributionService:
    def __init__(self, runtime: ServiceRuntime, adapters: Adapters, ledger: Ledger) -> None:
        self.rt = runtime
        self.adapters = adapters
        self.ledger = ledger

    async def list(self, *, waiting_only: bool, cursor: str | None, limit: int) -> UnattributedPage:
        async with self.rt.uow() as uow:
            rows = await store.list_unattributed(uow.session, waiting_only=waiting_only, cursor=cursor, limit=limit)
        page, next_cursor = page_of(rows, limit, lambda r: (r.first_heard_at, r.id))
        return UnattributedPage(items=[unattributed_out(r) for r in page], next_cursor=next_cursor)

    async def attribute(self, unattributed_id: int, connection_id: int,
                        actor: Principal | None = None) -> ExternalTransactionOut:
        async with self.rt.uow() as uow:
            held = await store.load_unattributed(uow.session, unattributed_id)
            connection = await store.load_connection(uow.session, connection_id)
        if held is None:
            raise not_found(f"unattributed payment {unattributed_id}")
        if held.attributed_to is not None:
            raise ProblemError(409, "already_attributed", f"it was attributed to connection {held.attributed_to}")
        if connection is None or connection_id not in held.connection_ids \
                or connection.processor_account != held.processor_account:
            raise ProblemError(422, "validation_error", f"connection_id: {connection_id} is not one of the connections "
                               f"to this account ({held.connection_ids})", field="connection_id")
        adapter = self.adapters.for_connection(connection)
        try:  # as the processor says it is now, not as it was first heard
            report = await adapter.retrieve_payment(held.external_transaction_id)
            refunds = await adapter.list_refunds(held.external_transaction_id)
        except p.ProcessorError as exc:
            raise ProblemError(503, "processor_unavailable", f"could not fetch the payment from "
                               f"{connection.processor_type}: {exc.message}", headers={"Retry-After": "5"}) from None
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            current = await store.load_unattributed(uow.session, unattributed_id, lock=True)
            if current is None or current.attributed_to is not None:
                raise ProblemError(409, "already_attributed", "it was attributed meanwhile")
            row = await self.ledger.attribute(uow, connection, report, now=now)
            for refund in refunds:
                row = await self.ledger.record_refund(uow, connection, refund, now=now) or row
            await store.resolve_unattributed(uow.session, unattributed_id, connection_id, row.id, now)
            if actor is not None:
                audit(uow, actor, "unattributed.attribute", f"unattributed:{unattributed_id}",
                      {"connection_ids": current.connection_ids, "attributed_to": None},
                      {"attributed_to": connection_id, "transaction_id": str(row.id)})
            await uow.commit()
        return transaction_out(row)
