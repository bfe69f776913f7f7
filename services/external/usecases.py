"""The external service's use cases as one object: what controllers call (wired in `app.create_app`)."""

from __future__ import annotations

from dataclasses import dataclass

from services.external.attribution import AttributionService
from services.external.charges import ChargeService
from services.external.connections import ConnectionService
from services.external.reconciliation import ReconcileService
from services.external.refunds import RefundService
from services.external.sweeper import Sweeper
from services.external.transactions import TransactionService
from services.external.webhooks import WebhookService
from shared.idempotency import IdempotencyStore


@dataclass(frozen=True)
class ExternalUseCases:
    connections: ConnectionService
    charges: ChargeService
    refunds: RefundService
    sweeper: Sweeper
    webhooks: WebhookService
    reconciliation: ReconcileService
    attribution: AttributionService
    transactions: TransactionService

    @property
    def idempotency(self) -> IdempotencyStore:
        store = self.connections.rt.idempotency
        if store is None:
            raise RuntimeError("the runtime is not started")
        return store
