"""Aggregation: unbilled accruals become collections (`POST /run`, and on a schedule in one replica
at a time). One set-based statement under an advisory lock (`store.bill_unbilled`) plans exactly
what `domain.plan_collections` plans; each new collection's `collection.due` is written in the same
transaction, so every collection is charged once it exists, and only then."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from services.collections import store
from services.collections.domain import due_date, window_ends
from services.collections.mapping import collection_due, collection_out
from services.collections.settings import CollectionsSettings
from services.collections.wire import RunOut
from shared.auth import Principal
from shared.idempotency import Claim
from shared.operations import audit
from shared.service import ServiceRuntime

log = structlog.get_logger("collections.aggregation")


class AggregationService:
    def __init__(self, runtime: ServiceRuntime, settings: CollectionsSettings, clock: Callable[[], datetime]) -> None:
        self.rt = runtime
        self.settings = settings
        self.clock = clock

    async def run(self, *, barber_id: int | None = None, force: bool = False, now: datetime | None = None,
                  claim: Claim | None = None, actor: Principal | None = None) -> RunOut:
        """Aggregate now; under an Idempotency-Key the answer is remembered with the collections it made.
        An operator's run (`actor`) is audited with what it made."""
        now = now or self.clock()
        s = self.settings
        async with self.rt.uow() as uow:
            rows, billed = await store.bill_unbilled(
                uow.session, ends=window_ends(now), now=now, minimum=s.minimum_collection_amount,
                default_frequency=s.commission_collection_frequency, default_auto=s.auto_collection_enabled,
                force=force, barber_id=barber_id, due=due_date(now))
            for row in rows:
                uow.emit(collection_due(row, attempt=1))
            out = RunOut(created=[collection_out(r) for r in rows], accruals_billed=billed)
            if actor is not None:
                audit(uow, actor, "collections.run", f"barber:{barber_id}" if barber_id else "collections",
                      {"barber_id": barber_id, "force": force},
                      {"created": [str(c.id) for c in out.created], "accruals_billed": billed})
            if claim:
                claim.record(uow, 200, out)
            await uow.commit()
        if rows:
            log.info("collections_created", count=len(rows), accruals=billed)
        return out

    async def scheduled_run(self, now: datetime) -> None:
        await self.run(now=now)
