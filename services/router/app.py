"""Composition root of the router service: the one place that wires its adapters (database, NATS,
the platform's payment processor) to its use cases and routes them into a Litestar app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import structlog
from litestar import Litestar

import services.router as package
from services.router import settings as settings_module
from services.router.configs import ConfigService
from services.router.controllers import HybridPaymentsController
from services.router.external import ExternalPayments
from services.router.lookups import TransactionLookups
from services.router.payments import PaymentService
from services.router.read_model import ConnectionReadModel
from services.router.refunds import RefundService
from services.router.routing import BarberContexts, RoutingService
from services.router.sweeper import Sweeper
from services.router.tables import metadata
from services.router.usecases import RouterUseCases
from shared.circuit import CircuitBoard
from shared.processors.base import PaymentProcessor
from shared.processors.stripe import platform_stripe
from shared.service import ConsumerSpec, JobSpec, ServiceRuntime, build_app

log = structlog.get_logger("router")


def create_app(settings: settings_module.RouterSettings | None = None, *,
               processor: PaymentProcessor | None = None) -> Litestar:
    """`processor` replaces the platform's Stripe account (tests pass a fake through this door)."""
    settings = settings or settings_module.load()
    processor = processor or platform_stripe(settings)
    runtime = ServiceRuntime(settings=settings, metadata=metadata)
    circuits = CircuitBoard()
    contexts = BarberContexts(runtime, settings)
    routing = RoutingService(runtime, settings, contexts, circuits)
    external = ExternalPayments(settings)
    payments = PaymentService(runtime, settings, contexts, routing, circuits, processor, external)
    lookups = TransactionLookups(runtime, external)
    refunds = RefundService(runtime, circuits, processor, external, lookups)
    router = RouterUseCases(
        configs=ConfigService(runtime, settings, contexts, circuits),
        routing=routing,
        payments=payments,
        refunds=refunds,
        transactions=lookups,
        sweeper=Sweeper(runtime, settings, processor, payments, refunds),
        connections=ConnectionReadModel(runtime, settings, contexts),
        contexts=contexts,
    )
    runtime.consumer_specs = [
        ConsumerSpec("connections", ["connection.changed"], router.connections.apply_connection_changed),
    ]

    runtime.job_specs = [JobSpec("pending-sweeper", settings.sweep_interval, router.sweeper.sweep_pending)]

    @contextlib.asynccontextmanager
    async def cache_invalidation(_: Litestar) -> AsyncIterator[None]:
        """Other replicas' changes drop this replica's cached entries: `config.changed` (published
        after the writer committed) and the router's own post-commit hint for connections (the
        raw `connection.changed` arrives before the read model is updated, so it cannot serve)."""
        subscriptions = []

        async def drop_config(msg) -> None:
            try:
                contexts.invalidate(int(msgspec.json.decode(msg.data)["payload"]["barber_id"]))
            except Exception:
                contexts.invalidate(None)

        async def drop_barber(msg) -> None:
            try:
                contexts.invalidate(int(msg.data))
            except ValueError:
                contexts.invalidate(None)

        async def subscribe() -> None:
            await runtime.link.wait_ready()
            nc = runtime.link.nc
            subscriptions.append(await nc.subscribe(settings.event_subject_prefix + "config.changed", cb=drop_config))
            subscriptions.append(await nc.subscribe(contexts.invalidation_subject, cb=drop_barber))

        task = asyncio.create_task(subscribe())
        try:
            yield
        finally:
            task.cancel()
            for sub in subscriptions:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            if processor is not None:
                await processor.close()
            await external.close()

    app = build_app(
        settings=settings,
        runtime=runtime,
        route_handlers=[HybridPaymentsController],
        api_prefix="/api/v1/hybrid-payments",
        title="Hybrid Payments — router",
        description=(package.__doc__ or "").strip(),
        dependencies={"router": router},
        lifespans=[cache_invalidation],
    )
    app.state.router = router
    return app
