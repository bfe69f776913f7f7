"""The collections service's use cases as one object: what controllers call (wired in `app.create_app`)."""

from __future__ import annotations

from dataclasses import dataclass

from services.collections.accruals import AccrualService
from services.collections.aggregation import AggregationService
from services.collections.collecting import CollectingService
from services.collections.lookups import LookupService
from shared.idempotency import IdempotencyStore


@dataclass(frozen=True)
class CollectionsUseCases:
    accruals: AccrualService
    aggregation: AggregationService
    collecting: CollectingService
    lookups: LookupService

    @property
    def idempotency(self) -> IdempotencyStore:
        store = self.aggregation.rt.idempotency
        if store is None:
            raise RuntimeError("the runtime is not started")
        return store
