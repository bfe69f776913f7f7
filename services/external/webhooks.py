"""Processor webhooks: `POST /api/v1/webhooks/{processor}/{connection_id}`.

Each is verified with that connection's own secret and the processor's own scheme before anything
is stored (a bad, missing or stale signature is 400 and writes nothing). Each processor event id is
applied once, in the same transaction as its effect; the effect is the ledger's merge, so a
redelivered, late or out-of-order event converges and emits `transaction.recorded` only on change.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime

import structlog

from services.external import store
from services.external.ledger import Ledger
from services.external.processors import Adapters
from services.external.settings import ExternalSettings
from services.external.wire import WebhookAck
from shared.errors import ProblemError, not_found
from shared.observability import WEBHOOKS_RECEIVED
from shared.processors import base as p
from shared.service import ServiceRuntime

log = structlog.get_logger("external.webhooks")


# Webhooks come in bursts for the same few connections: their rows are kept this long in memory.
# Staleness is harmless here: a rotated secret fails verification for at most this long (the
# processor redelivers), and a disconnected connection's notices are still verified and recorded.
CONNECTION_CACHE_SECONDS = 30.0


class WebhookService:
    def __init__(self, runtime: ServiceRuntime, settings: ExternalSettings, adapters: Adapters,
                 ledger: Ledger) -> None:
        self.rt = runtime
        self.settings = settings
        self.adapters = adapters
        self.ledger = ledger
        self._connections: dict[int, tuple[float, dict]] = {}

    async def _connection(self, connection_id: int) -> dict | None:
        now = time.monotonic()
        cached = self._connections.get(connection_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.rt.uow() as uow:
            connection = await store.load_connection(uow.session, connection_id)
        if connection is not None:
            if len(self._connections) > 10_000:
                self._connections.clear()
            self._connections[connection_id] = (now + CONNECTION_CACHE_SECONDS, connection)
        return connection

    def forget(self, connection_id: int) -> None:
        """This process changed the connection: read it afresh next time."""
        self._connections.pop(connection_id, None)

    async def receive(self, processor: str, connection_id: int, body: bytes, headers: Mapping[str, str],
                      url: str) -> WebhookAck:
        connection = await self._connection(connection_id)
        if connection is None or connection["processor_type"] != processor:
            WEBHOOKS_RECEIVED.labels(processor, "unknown_connection").inc()
            raise not_found(f"{processor} connection {connection_id}")
        secret = self.adapters.webhook_secret(connection)
        if secret is None:
            WEBHOOKS_RECEIVED.labels(processor, "no_secret").inc()
            raise ProblemError(400, "invalid_signature", "this connection has no webhook secret to verify with")
        adapter = self.adapters.for_connection(connection)
        try:
            await adapter.verify_webhook(body, headers, secret=secret, url=url)
            event = adapter.parse_webhook(body)
        except p.InvalidSignature as exc:
            WEBHOOKS_RECEIVED.labels(processor, "bad_signature").inc()
            raise ProblemError(400, "invalid_signature", exc.message) from None
        except p.ProcessorRequestError as exc:  # signed, but not an event we can read
            WEBHOOKS_RECEIVED.labels(processor, "unreadable").inc()
            raise ProblemError(400, "invalid_event", exc.message) from None
        except (p.ProcessorUnavailable, p.OutcomeUnknown) as exc:  # PayPal verifies through its API
            WEBHOOKS_RECEIVED.labels(processor, "verify_unavailable").inc()
            raise ProblemError(503, "verification_unavailable", f"could not verify with {processor}: {exc.message}",
                               headers={"Retry-After": "30"}) from None
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            first = await store.claim_webhook_event(uow.session, dict(
                processor_type=processor, event_id=event.event_id, connection_id=connection_id,
                event_type=event.event_type, understood=event.understood, received_at=now))
            if first and event.payment is not None:
                await self.ledger.record_payment(uow, connection, event.payment, origin="webhook", now=now)
            if first and event.refund is not None:
                await self.ledger.record_refund(uow, connection, event.refund, now=now)
            await uow.commit()
        outcome = "duplicate" if not first else "applied" if event.understood else "ignored"
        WEBHOOKS_RECEIVED.labels(processor, outcome).inc()
        return WebhookAck(event_id=event.event_id, duplicate=not first, ignored=not event.understood)
