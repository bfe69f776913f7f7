"""Composition root of the external service: the one place that wires its adapters (database, NATS,
barbers' processors, the credential vault) to its use cases and routes them into a Litestar app."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

from litestar import Litestar

import services.external as package
from services.external import settings as settings_module
from services.external.attribution import AttributionService
from services.external.charges import ChargeService
from services.external.connections import ConnectionService
from services.external.controllers import (
    ExternalPaymentsController,
    InternalController,
    WebhooksController,
)
from services.external.ledger import Ledger
from services.external.processors import Adapters
from services.external.reconciliation import ReconcileService
from services.external.refunds import RefundService
from services.external.sweeper import Sweeper
from services.external.tables import metadata
from services.external.transactions import TransactionService
from services.external.usecases import ExternalUseCases
from services.external.vault import CredentialVault
from services.external.webhooks import WebhookService
from shared.circuit import CircuitBoard
from shared.service import ConsumerSpec, JobSpec, ServiceRuntime, build_app

_WEBHOOK_PATH = re.compile(r"^/api/v1/webhooks/(\w+)/(\d+)")


def webhook_rate_key(scope) -> str | None:
    """Webhooks count per connection, not per sender address (processors send from many)."""
    match = _WEBHOOK_PATH.match(scope.get("path", ""))
    return f"webhook:{match.group(1)}:{match.group(2)}" if match else None


def create_app(settings: settings_module.ExternalSettings | None = None) -> Litestar:
    settings = settings or settings_module.load()
    runtime = ServiceRuntime(settings=settings, metadata=metadata)
    adapters = Adapters(settings, CredentialVault(settings.encryption_keys))
    ledger = Ledger(settings)
    external = ExternalUseCases(
        connections=ConnectionService(runtime, settings, adapters),
        charges=ChargeService(runtime, settings, adapters, ledger, CircuitBoard()),
        refunds=RefundService(runtime, adapters, ledger),
        sweeper=Sweeper(runtime, settings, adapters, ledger),
        webhooks=WebhookService(runtime, settings, adapters, ledger),
        reconciliation=ReconcileService(runtime, settings, adapters, ledger),
        attribution=AttributionService(runtime, adapters, ledger),
        transactions=TransactionService(runtime),
    )
    external.connections.listeners.append(external.webhooks.forget)
    runtime.consumer_specs = [ConsumerSpec("rates", ["config.changed"], external.transactions.apply_config_changed)]
    runtime.job_specs = [
        JobSpec("pending-sweeper", settings.sweep_interval, external.sweeper.sweep_pending),
        JobSpec("reconciliation", settings.reconcile_interval, external.reconciliation.scheduled),
        JobSpec("republish-connections", 300.0, external.connections.republish),
        JobSpec("connection-totals", settings.stats_interval, external.connections.refresh_totals),
        JobSpec("integrity-gauges", settings.stats_interval, external.connections.refresh_integrity_gauges,
                once=False),
    ]

    @contextlib.asynccontextmanager
    async def close_adapters(_: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await adapters.close()

    app = build_app(
        settings=settings,
        runtime=runtime,
        route_handlers=[ExternalPaymentsController, WebhooksController, InternalController],
        api_prefix="/api/v1/external-payments",
        title="Hybrid Payments — external",
        description=(package.__doc__ or "").strip(),
        dependencies={"external": external},
        lifespans=[close_adapters],
        rate_limit_key=webhook_rate_key,
    )
    app.state.external = external
    return app
