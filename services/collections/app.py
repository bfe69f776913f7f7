"""Composition root of the collections service: wires its adapters and routes into a Litestar app."""

from litestar import Litestar

import services.collections as package
from services.collections import settings as settings_module
from services.collections.tables import metadata
from shared.service import ServiceRuntime, build_app


def create_app(settings: settings_module.CollectionsSettings | None = None) -> Litestar:
    settings = settings or settings_module.load()
    runtime = ServiceRuntime(settings=settings, metadata=metadata)
    return build_app(
        settings=settings,
        runtime=runtime,
        route_handlers=[],
        title="Hybrid Payments — collections",
        description=(package.__doc__ or "").strip(),
    )
