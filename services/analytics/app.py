"""Composition root of the analytics service: wires its adapters and routes into a Litestar app."""

from litestar import Litestar

import services.analytics as package
from services.analytics import settings as settings_module
from services.analytics.tables import metadata
from shared.service import ServiceRuntime, build_app


def create_app(settings: settings_module.AnalyticsSettings | None = None) -> Litestar:
    settings = settings or settings_module.load()
    runtime = ServiceRuntime(settings=settings, metadata=metadata)
    return build_app(
        settings=settings,
        runtime=runtime,
        route_handlers=[],
        title="Hybrid Payments — analytics",
        description=(package.__doc__ or "").strip(),
    )
