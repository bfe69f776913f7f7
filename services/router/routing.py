"""Routing: `/route` (the hot path) and `GET /routes/{id}`, over a per-process cache of each
barber's config and connections.

Flow of `/route`: cached context -> `domain.decide_route` -> `domain.price_route` -> one insert.
Without an `Idempotency-Key` the insert is a single autocommit statement on the hot-path pool;
with one, the decision and the remembered answer commit together.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from services.router import store
from services.router.domain import (
    Connection,
    NoPaymentRoute,
    PaymentConfig,
    RoutingInput,
    decide_route,
    price_route,
)
from services.router.mapping import config_of, connection_of, route_out
from services.router.settings import RouterSettings
from services.router.store import ConfigRow, ConnectionRow, DecisionRow
from services.router.wire import RouteIn, RouteOut
from shared.auth import Principal, acting_barber_id
from shared.circuit import CircuitBoard
from shared.db import GroupCommit
from shared.errors import ProblemError, not_found, validation_error
from shared.idempotency import Claim
from shared.money import format_amount, format_rate
from shared.service import ServiceRuntime

# How long a barber's config and connections are served from memory. A change made through any
# replica drops the entry in every replica before the change is answered (`BarberContexts.changed`);
# the TTL only bounds staleness if such a hint is lost. Jittered so entries do not all expire together.
CACHE_TTL = 60.0
# How long a writer waits for NATS to take its invalidation hint before answering anyway.
HINT_TIMEOUT = 0.5


@dataclass(frozen=True)
class BarberContext:
    config: PaymentConfig
    config_row: ConfigRow | None
    connections: tuple[Connection, ...]
    connection_rows: tuple[ConnectionRow, ...]


class BarberContexts:
    """Each barber's effective config and connections, cached per process.

    With N replicas: a change is committed, then `changed()` drops the entry here and publishes a
    hint on core NATS (`invalidation_subject`) that every replica's subscription turns into
    `invalidate()`; the writer answers only after the NATS server has the hint (a flush), so a
    client that saw the change answered cannot reach a replica that has not been told, short of
    that replica's own NATS link being behind. A load that raced an invalidation is not cached (the
    generation check), and a reconnected NATS link drops everything (hints may have been missed)."""

    def __init__(self, runtime: ServiceRuntime, settings: RouterSettings) -> None:
        self.rt = runtime
        self.settings = settings
        self._cache: dict[int, tuple[float, BarberContext]] = {}
        self._generation = 0
        runtime.link.reconnect_listeners.append(lambda: self.invalidate(None))

    @property
    def invalidation_subject(self) -> str:
        # Core NATS, outside the PAYMENTS stream: a hint between replicas, not a recorded event.
        return f"{self.settings.event_subject_prefix}router.cache.invalidate"

    def defaults_row(self, barber_id: int) -> ConfigRow:
        return default_config_row(self.settings, barber_id)

    async def get(self, barber_id: int, *, fresh: bool = False) -> BarberContext:
        now = time.monotonic()
        cached = self._cache.get(barber_id)
        if cached is not None and cached[0] > now and not fresh:
            return cached[1]
        generation = self._generation
        async with self.rt.uow() as uow:
            row = await store.load_config(uow.session, barber_id)
            connections = await store.load_connections(uow.session, barber_id)
        context = BarberContext(config_of(row, self.defaults_row(barber_id)), row,
                                tuple(connection_of(c) for c in connections), tuple(connections))
        if generation == self._generation:  # else an invalidation came while loading: it may be stale
            self._cache[barber_id] = (now + CACHE_TTL * random.uniform(0.8, 1.0), context)
        return context

    def invalidate(self, barber_id: int | None) -> None:
        self._generation += 1
        if barber_id is None:
            self._cache.clear()
        else:
            self._cache.pop(barber_id, None)

    async def changed(self, barber_id: int) -> None:
        """After a change to the barber's config or connections committed: drop the entry here and
        in every other replica, waiting (briefly) until NATS has the hint."""
        self.invalidate(barber_id)
        nc = self.rt.link.nc
        if nc is None or not nc.is_connected:
            return  # the others reconnect later and drop everything then, or the TTL ends it
        try:
            await nc.publish(self.invalidation_subject, str(barber_id).encode())
            await nc.flush(timeout=HINT_TIMEOUT)
        except Exception:  # answered anyway: the change is committed; the TTL bounds the staleness
            pass


@dataclass(frozen=True)
class Decided:
    """A decision made and not yet recorded: the answer, and the row that records it."""

    out: RouteOut
    row: DecisionRow


class RoutingService:
    def __init__(self, runtime: ServiceRuntime, settings: RouterSettings, contexts: BarberContexts,
                 circuits: CircuitBoard) -> None:
        self.rt = runtime
        self.settings = settings
        self.contexts = contexts
        self.circuits = circuits
        self._decisions: GroupCommit | None = None

    async def route_payment(
        self, principal: Principal, body: RouteIn, claim: Claim | None, *, route_id: uuid.UUID | None = None
    ) -> RouteOut:
        """Decide and record. A given `route_id` that is already recorded returns that decision."""
        decided = await self.decide(principal, body, route_id=route_id)
        if not await self.record(decided, claim):  # recorded before (a retry of route-and-pay): answer that
            return route_out(await self.load_decision(principal, decided.out.route_id))
        return decided.out

    async def decide(self, principal: Principal, body: RouteIn, *, route_id: uuid.UUID | None = None) -> Decided:
        """The decision for `body`, from the cached context and the pure rules; nothing written."""
        barber_id = acting_barber_id(principal, body.barber_id)
        if body.amount > self.settings.max_payment_amount:
            raise validation_error("amount", f"{body.amount} exceeds the maximum of {self.settings.max_payment_amount}")
        context = await self.contexts.get(barber_id)
        decided_at = datetime.now(UTC)
        try:
            route = decide_route(RoutingInput(
                config=context.config, connections=context.connections, amount=body.amount,
                currency=body.currency, hybrid_enabled=self.settings.hybrid_payments_enabled,
                unavailable_connections=self.circuits.open_connections(time.monotonic()),
            ))
        except NoPaymentRoute as refused:
            raise ProblemError(422, "no_payment_route", refused.detail, reason=refused.reason) from None
        priced = price_route(route, body.amount, body.currency, context.config.commission_rate)
        currency = body.currency
        out = RouteOut(
            route_id=route_id or uuid.uuid4(), barber_id=barber_id, appointment_id=body.appointment_id,
            payment_type=route.payment_type, processor=route.processor,
            connection_id=route.connection.id if route.connection else None,
            amount=format_amount(body.amount, currency), currency=currency,
            commission_rate=format_rate(priced.commission_rate),
            commission_amount=format_amount(priced.commission_amount, currency),
            estimated_processor_fee=format_amount(priced.estimated_processor_fee, currency),
            barber_net=format_amount(priced.barber_net, currency), reason=route.reason,
            fallback_used=route.fallback_used, decided_at=decided_at,
        )
        row = DecisionRow(
            route_id=out.route_id, barber_id=barber_id, appointment_id=body.appointment_id,
            client_id=body.client_id, amount=body.amount, currency=currency,
            payment_type=route.payment_type, processor=route.processor, connection_id=out.connection_id,
            commission_rate=priced.commission_rate, commission_amount=priced.commission_amount,
            estimated_processor_fee=priced.estimated_processor_fee, barber_net=priced.barber_net,
            reason=route.reason, fallback_used=route.fallback_used, decided_at=decided_at,
            channel=None, channel_lease_until=None, fallback_reason=None, fallback_transaction_id=None,
        )
        return Decided(out, row)

    async def record(self, decided: Decided, claim: Claim | None) -> bool:
        """Write the decision; False when its route id was recorded before (nothing written)."""
        if claim is None:
            # The hot path: nothing else to keep atomic with it, so it is group-committed with the
            # decisions of concurrent requests (one statement for all; answered once durable).
            if self._decisions is None:
                self._decisions = GroupCommit(self.rt.hot_path, store.INSERT_DECISIONS)
            return await self._decisions.insert(store.decision_tuple(decided.row), decided.row.route_id)
        values = store.decision_values(decided.row)
        async with self.rt.uow() as uow:
            inserted = await store.insert_decision(uow.session, values)
            if inserted:
                claim.record(uow, 200, decided.out)
            await uow.commit()
        return inserted

    async def load_decision(self, principal: Principal, route_id: uuid.UUID) -> DecisionRow:
        async with self.rt.uow() as uow:
            row = await store.load_decision(uow.session, route_id)
        if row is None or (principal.role == "barber" and row.barber_id != principal.barber_id):
            raise not_found(f"route {route_id}")  # another barber's route does not exist for you
        return row

    async def get_route(self, principal: Principal, route_id: uuid.UUID) -> RouteOut:
        return route_out(await self.load_decision(principal, route_id))


def default_config_row(s: RouterSettings, barber_id: int) -> ConfigRow:
    """The config a barber without a row has: the platform defaults (version 0: never saved, so no
    id and no times)."""
    return ConfigRow(
        id=None, barber_id=barber_id, payment_mode=s.default_payment_mode, preferred_processor=None,
        fallback_enabled=True, min_external_amount=None, max_platform_amount=None,
        split_threshold=None, threshold_currency="USD", commission_rate=s.default_commission_rate,
        commission_collection_frequency=s.commission_collection_frequency,
        auto_collection_enabled=s.auto_collection_enabled, webhook_notifications=True,
        email_notifications=True, analytics_enabled=True, connect_account_id=None,
        effective_from=None, created_at=None, updated_at=None, version=0,
    )
