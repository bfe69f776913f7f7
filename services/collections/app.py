"""Composition root of the collections service: the one place that wires its adapters (database,
NATS, the platform's Stripe account, the clock) to its use cases and routes them into a Litestar app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from litestar import Litestar

import services.collections as package
from services.collections import settings as settings_module
from services.collections.accruals import AccrualService
from services.collections.aggregation import AggregationService
from services.collections.collecting import CollectingService
from services.collections.controllers import PlatformCollectionsController
from services.collections.lookups import LookupService
from services.collections.tables import metadata
from services.collections.usecases import CollectionsUseCases
from shared.processors.base import PlatformProcessor
from shared.processors.stripe import platform_stripe
from shared.service import ConsumerSpec, JobSpec, ServiceRuntime, build_app


def create_app(settings: settings_module.CollectionsSettings | None = None, *,
               processor: PlatformProcessor | None = None,
               clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Litestar:
    """`processor` replaces the platform's Stripe account and `clock` the time (tests walk a
    collection through its whole dunning schedule with it)."""
    settings = settings or settings_module.load()
    processor = processor or platform_stripe(settings)
    runtime = ServiceRuntime(settings=settings, metadata=metadata)
    collections = CollectionsUseCases(
        accruals=AccrualService(),
        aggregation=AggregationService(runtime, settings, clock),
        collecting=CollectingService(runtime, settings, processor, clock=clock),
        lookups=LookupService(runtime, clock),
    )
    runtime.consumer_specs = [
        ConsumerSpec("accruals", ["transaction.recorded"], collections.accruals.apply_transaction_recorded,
                     batch_handler=collections.accruals.apply_transactions_recorded, batch=500, linger=0.1),
        ConsumerSpec("settings", ["config.changed"], collections.accruals.apply_config_changed,
                     batch_handler=collections.accruals.apply_configs_changed, batch=500),
        ConsumerSpec("collecting", ["collection.due"], collections.collecting.apply_collection_due),
    ]
    runtime.job_specs = [
        JobSpec("aggregation", settings.collection_run_interval, collections.aggregation.scheduled_run),
        JobSpec("dunning", settings.dunning_interval, collections.collecting.dunning),
        JobSpec("pending-sweeper", settings.sweep_interval, collections.collecting.sweep_pending),
        JobSpec("metrics", 15.0, collections.lookups.refresh_metrics, once=False),
    ]

    @contextlib.asynccontextmanager
    async def close(_: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await collections.collecting.close()
            if processor is not None:
                await processor.close()

    app = build_app(
        settings=settings,
        runtime=runtime,
        route_handlers=[PlatformCollectionsController],
        api_prefix="/api/v1/platform-collections",
        title="Hybrid Payments — collections",
        description=(package.__doc__ or "").strip(),
        dependencies={"collections": collections},
        lifespans=[close],
    )
    app.state.collections = collections
    return app
