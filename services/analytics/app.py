"""Composition root of the analytics service: the one place that wires its adapters (database,
NATS, the clock) to its projections and reports and routes them into a Litestar app."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from litestar import Litestar

import services.analytics as package
from services.analytics import settings as settings_module
from services.analytics.controllers import AnalyticsController
from services.analytics.projections import Projections
from services.analytics.reports import Reports
from services.analytics.tables import metadata
from services.analytics.usecases import AnalyticsUseCases
from shared.service import ConsumerSpec, JobSpec, ServiceRuntime, build_app


def create_app(settings: settings_module.AnalyticsSettings | None = None, *,
               clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Litestar:
    """`clock` replaces the time the reports measure from (tests pin it)."""
    settings = settings or settings_module.load()
    runtime = ServiceRuntime(settings=settings, metadata=metadata)
    analytics = AnalyticsUseCases(projections=Projections(), reports=Reports(runtime, settings, clock=clock))
    projections, reports = analytics.projections, analytics.reports
    runtime.consumer_specs = [
        ConsumerSpec("transactions", ["transaction.recorded"], projections.apply_transaction_recorded,
                     batch_handler=projections.apply_transactions, batch=500, linger=0.02),
        # The legacy import's bulk subject: up to 500 payments an event, 20 events a transaction.
        ConsumerSpec("imports", ["transaction.imported"], projections.apply_transactions_imported,
                     batch_handler=projections.apply_imports, batch=20),
        ConsumerSpec("collections-due", ["collection.due"], projections.apply_collection_due),
        ConsumerSpec("collections-settled", ["collection.settled"], projections.apply_collection_settled),
    ]
    runtime.job_specs = [JobSpec("metrics", settings.analytics_metrics_interval, reports.refresh_metrics, once=False)]
    app = build_app(
        settings=settings,
        runtime=runtime,
        route_handlers=[AnalyticsController],
        api_prefix="/api/v1/unified-payment-analytics",
        title="Hybrid Payments — analytics",
        description=(package.__doc__ or "").strip(),
        dependencies={"analytics": analytics},
    )
    app.state.analytics = analytics
    app.state.reports = reports
    return app
