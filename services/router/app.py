"""Composition root of the router service: wires its adapters and routes into a Litestar app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import structlog
from litestar import Litestar

import services.router as package
from services.router import settings as settings_module
from services.router.controllers import HybridPaymentsController
from services.router.service import RouterService
from services.router.tables import metadata
from shared.processors.base import Secret
from shared.processors.stripe import StripeGateway
from shared.service import ConsumerSpec, ServiceRuntime, build_app

log = structlog.get_logger("router")


def create_app(settings: settings_module.RouterSettings | None = None) -> Litestar:
    settings = settings or settings_module.load()
    stripe = (
        StripeGateway(Secret(settings.stripe_secret_key), api_base=settings.stripe_api_base,
                      timeout=settings.stripe_timeout)
        if settings.stripe_secret_key
        else None
    )
    runtime = ServiceRuntime(settings=settings, metadata=metadata)
    router = RouterService(runtime, settings, stripe)
    runtime.consumer_specs = [ConsumerSpec("connections", ["connection.changed"], router.apply_connection_changed)]

    @contextlib.asynccontextmanager
    async def cache_invalidation(_: Litestar) -> AsyncIterator[None]:
        """Other replicas' changes drop this replica's cached entries: `config.changed` (published
        after the writer committed) and the router's own post-commit hint for connections (the
        raw `connection.changed` arrives before the read model is updated, so it cannot serve)."""
        subscriptions = []

        async def drop_config(msg) -> None:
            try:
                router.invalidate(int(msgspec.json.decode(msg.data)["payload"]["barber_id"]))
            except Exception:
                router.invalidate(None)

        async def drop_barber(msg) -> None:
            try:
                router.invalidate(int(msg.data))
            except ValueError:
                router.invalidate(None)

        async def subscribe() -> None:
            await runtime.link.wait_ready()
            nc = runtime.link.nc
            subscriptions.append(await nc.subscribe(settings.event_subject_prefix + "config.changed", cb=drop_config))
            subscriptions.append(await nc.subscribe(router.invalidation_subject, cb=drop_barber))

        task = asyncio.create_task(subscribe())
        try:
            yield
        finally:
            task.cancel()
            for sub in subscriptions:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            if stripe is not None:
                await stripe.close()

    return build_app(
        settings=settings,
        runtime=runtime,
        route_handlers=[HybridPaymentsController],
        title="Hybrid Payments — router",
        description=(package.__doc__ or "").strip(),
        dependencies={"router": router},
        lifespans=[cache_invalidation],
    )
