"""Processor webhooks: `POST /api/v1/webhooks/{processor}/{connection_id}`.

Each is verified with that connection's own secret and the processor's own scheme before anything
is stored (a bad, missing or stale signature is 400 and writes nothing). A verified webhook is still
only a notice: the barber holds its own signing secret and could sign any body, so the object it
names is fetched from the processor with the connection's credentials, and what the processor says
is merged by the ledger. An object the processor does not have on that account is not its notice
(recorded as `not_found`, moves nothing). Each event id is applied once per connection (two barbers
may connect one processor account: both endpoints hear it), in the same transaction as its effect.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from services.external import store
from services.external.ledger import Ledger, as_uuid
from services.external.mapping import transaction_recorded
from services.external.processors import Adapters
from services.external.settings import ExternalSettings
from services.external.store import ConnectionRow
from services.external.wire import WebhookAck, WebhookEventOut, WebhookEventPage, WebhookOutcome
from shared.errors import ProblemError, not_found
from shared.events import new_event
from shared.observability import WEBHOOKS_RECEIVED
from shared.pagination import page_of
from shared.outbox import outbox_row
from shared.processors import base as p
from shared.service import ServiceRuntime

log = structlog.get_logger("external.webhooks")


# Webhooks come in bursts for the same few connections: their rows are kept this long in memory.
# Staleness is harmless here: a rotated secret fails verification for at most this long (the
# processor redelivers), and a disconnected connection's notices are still verified and recorded.
CONNECTION_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class News:
    """What the processor says about the object a notice named."""

    payment: p.PaymentResult | None = None
    refunds: list[p.RefundResult] = field(default_factory=list)


async def fetch_news(adapter: p.PaymentProcessor, event: p.WebhookEvent) -> News:
    """Fetch what the notice is about. A refund comes with its payment, so a refund heard before
    its payment records the payment first (through the same attribution rules)."""
    if event.refund_id is not None:
        refund = await adapter.retrieve_refund(event.refund_id)
        return News(await adapter.retrieve_payment(refund.processor_payment_id), [refund])
    if event.payment_id is None:  # not a notice we act on
        return News()
    payment = await adapter.retrieve_payment(event.payment_id)
    return News(payment, await adapter.list_refunds(event.payment_id) if event.refunds_of_payment else [])


class _NotFresh(Exception):
    """Rolls back `_learn_fresh`'s transaction: the ledger decides this notice."""


def _unreadable(event: p.WebhookEvent) -> str | None:
    """Why the event's names cannot be kept (stored in text columns, sent in processor URLs):
    each at most 255 characters without control characters (Postgres refuses NUL)."""
    for what, value in (("id", event.event_id), ("type", event.event_type), ("payment id", event.payment_id),
                        ("refund id", event.refund_id)):
        if value is not None and (not value or len(value) > 255 or not value.isprintable()):
            return f"the event's {what} is not an id we can keep (1 to 255 printable characters)"
    return None


class WebhookService:
    def __init__(self, runtime: ServiceRuntime, settings: ExternalSettings, adapters: Adapters,
                 ledger: Ledger) -> None:
        self.rt = runtime
        self.settings = settings
        self.adapters = adapters
        self.ledger = ledger
        self._connections: dict[int, tuple[float, ConnectionRow]] = {}

    async def recent(self, *, connection_id: int | None, outcome: str | None, cursor: str | None,
                     limit: int) -> WebhookEventPage:
        """The notices received, newest first (for operators)."""
        async with self.rt.uow() as uow:
            rows = await store.list_webhook_events(uow.session, connection_id=connection_id, outcome=outcome,
                                                   cursor=cursor, limit=limit)
        page, next_cursor = page_of(rows, limit, lambda r: (r["received_at"], r["id"]))
        return WebhookEventPage(items=[WebhookEventOut(
            id=r["id"], processor=r["processor_type"], event_id=r["event_id"], connection_id=r["connection_id"],
            barber_id=r["barber_id"], event_type=r["event_type"], understood=r["understood"], outcome=r["outcome"],
            received_at=r["received_at"]) for r in page], next_cursor=next_cursor)

    async def _connection(self, connection_id: int) -> ConnectionRow | None:
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
        if connection is None or connection.processor_type != processor:
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
            raise ProblemError(400, "invalid_event", f"not a {processor} event we can read: {exc.message}") from None
        except (p.ProcessorUnavailable, p.OutcomeUnknown) as exc:  # PayPal verifies through its API
            WEBHOOKS_RECEIVED.labels(processor, "verify_unavailable").inc()
            raise ProblemError(503, "verification_unavailable", f"could not verify with {processor}: {exc.message}",
                               headers={"Retry-After": "30"}) from None
        if (unreadable := _unreadable(event)) is not None:
            WEBHOOKS_RECEIVED.labels(processor, "unreadable").inc()
            raise ProblemError(400, "invalid_event", unreadable)
        news = None
        outcome: WebhookOutcome = "ignored"
        if event.understood:
            # A redelivery is answered without asking the processor again.
            if await store.event_seen(self.rt.hot_path, connection_id, event.event_id):
                return self._ack(processor, event, "duplicate")
            try:
                news = await fetch_news(adapter, event)
                outcome = "applied"
            except p.NotFound:
                outcome = "not_found"  # not on this account: not the processor's notice
                log.warning("webhook_object_not_found", connection_id=connection_id, event_id=event.event_id,
                            payment_id=event.payment_id, refund_id=event.refund_id)
            except p.ProcessorRequestError as exc:
                if exc.code != "invalid_id":
                    raise self._unavailable(processor, exc) from None
                # It names no object the processor could have: asking again would never help.
                WEBHOOKS_RECEIVED.labels(processor, "unreadable").inc()
                raise ProblemError(400, "invalid_event", f"the event names no {processor} object: {exc.message}") \
                    from None
            except p.ProcessorError as exc:
                raise self._unavailable(processor, exc) from None
        now = datetime.now(UTC)
        claim = dict(processor_type=processor, event_id=event.event_id, connection_id=connection_id,
                     event_type=event.event_type, understood=event.understood, outcome=outcome, received_at=now)
        if news is not None and await self._learn_fresh(connection, news, event, claim, now):
            return self._ack(processor, event, "applied")
        async with self.rt.uow() as uow:
            claimed = await store.claim_webhook_event(uow.session, claim)
            if claimed is None:
                outcome = "duplicate"
            elif news is not None:
                outcome = await self._apply(uow, connection, news, event, now)
                if outcome != "applied":
                    await store.set_webhook_outcome(uow.session, claimed, outcome)
            await uow.commit()
        return self._ack(processor, event, outcome)

    async def _learn_fresh(self, connection: ConnectionRow, news: News, event: p.WebhookEvent,
                           claim: dict[str, Any], now: datetime) -> bool:
        """The usual notice, a payment the barber took that nobody recorded yet, written in one short
        transaction (the payment lock, then one statement: payment, claim and event), without the
        ledger's dozen ORM statements: the same row (`Ledger.learned_values`), claim and event.
        False, having written nothing, whenever the ledger has more to decide (a payment on record,
        a shared account, refunds waiting, an event claimed meanwhile): then `_apply` does."""
        report = news.payment
        if report is None or news.refunds:
            return False
        try:
            async with self.rt.hot_path.transaction() as conn:
                rate = await store.lock_and_rate(conn, connection.processor_type, report.processor_payment_id,
                                                 connection.barber_id)
                values = self.ledger.learned_values(connection, report, rate, origin="webhook", now=now,
                                                    heard_at=event.occurred_at)
                row = store.TransactionRow(**values, **store.LEARNED_DEFAULTS)
                recorded = None if row.status == "pending" else \
                    outbox_row(new_event(transaction_recorded(row)), self.settings.event_subject_prefix)
                if not await store.learn_fresh(conn, values, as_uuid(report.reference), connection.processor_account,
                                               claim, recorded):
                    raise _NotFresh
        except _NotFresh:
            return False
        if recorded is not None and self.rt.relay is not None:
            self.rt.relay.notify()
        return True

    async def _apply(self, uow, connection: ConnectionRow, news: News, event: p.WebhookEvent,
                     now: datetime) -> WebhookOutcome:
        if news.payment is not None:
            row = await self.ledger.record_payment(uow, connection, news.payment, origin="webhook", now=now,
                                                   heard_at=event.occurred_at)
            if row is None:
                return "unattributed"
        for refund in news.refunds:
            await self.ledger.record_refund(uow, connection, refund, now=now)
        return "applied"

    @staticmethod
    def _unavailable(processor: str, exc: p.ProcessorError) -> ProblemError:
        """The processor cannot be asked now: answered so that it delivers the event again later."""
        WEBHOOKS_RECEIVED.labels(processor, "fetch_unavailable").inc()
        return ProblemError(503, "processor_unavailable", f"could not fetch what the event is about from "
                            f"{processor}: {exc.message}", headers={"Retry-After": "30"})

    @staticmethod
    def _ack(processor: str, event: p.WebhookEvent, outcome: WebhookOutcome) -> WebhookAck:
        WEBHOOKS_RECEIVED.labels(processor, outcome).inc()
        return WebhookAck(event_id=event.event_id, duplicate=outcome == "duplicate",
                          ignored=outcome in ("ignored", "not_found"), outcome=outcome)
