"""Composition root of the router service: wires its adapters and routes into a Litestar app."""

from litestar import Litestar

import services.router as package
from services.router import settings as settings_module
from services.router.tables import metadata
from shared.service import ServiceRuntime, build_app


def create_app(settings: settings_module.RouterSettings | None = None) -> Litestar:
    settings = settings or settings_module.load()
    runtime = ServiceRuntime(settings=settings, metadata=metadata)
    return build_app(
        settings=settings,
        runtime=runtime,
        route_handlers=[],
        title="Hybrid Payments — router",
        description=(package.__doc__ or "").strip(),
    )
