"""Composition root of the external service: wires its adapters and routes into a Litestar app."""

from litestar import Litestar

import services.external as package
from services.external import settings as settings_module
from services.external.tables import metadata
from shared.service import ServiceRuntime, build_app


def create_app(settings: settings_module.ExternalSettings | None = None) -> Litestar:
    settings = settings or settings_module.load()
    runtime = ServiceRuntime(settings=settings, metadata=metadata)
    return build_app(
        settings=settings,
        runtime=runtime,
        route_handlers=[],
        title="Hybrid Payments — external",
        description=(package.__doc__ or "").strip(),
    )
