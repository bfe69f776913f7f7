"""The router's use cases as one object: what controllers call (wired in `app.create_app`)."""

from __future__ import annotations

from dataclasses import dataclass

from services.router.configs import ConfigService
from services.router.lookups import TransactionLookups
from services.router.payments import PaymentService
from services.router.read_model import ConnectionReadModel
from services.router.refunds import RefundService
from services.router.routing import BarberContexts, RoutingService
from services.router.sweeper import Sweeper
from shared.idempotency import IdempotencyStore


@dataclass(frozen=True)
class RouterUseCases:
    configs: ConfigService
    routing: RoutingService
    payments: PaymentService
    refunds: RefundService
    transactions: TransactionLookups
    sweeper: Sweeper
    connections: ConnectionReadModel
    contexts: BarberContexts

    @property
    def idempotency(self) -> IdempotencyStore:
        store = self.routing.rt.idempotency
        if store is None:
            raise RuntimeError("the runtime is not started")
        return store
