"""The router's service layer: each use case opens a unit of work, loads, asks the domain,
writes rows and outbox events, commits.

Flows: configs (read, change -> `config.changed`), `/route` (cached config and connections ->
`decide_route` -> one insert), `/process` (record the attempt, charge Stripe with a key derived
from the attempt, record the outcome -> `transaction.recorded`), refunds, and the
`connection.changed` read model.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import sqlalchemy as sa
import structlog
from msgspec import UNSET
from sqlalchemy.dialects.postgresql import insert as pg_insert

from services.router import tables as t
from services.router.domain import (
    PROCESSORS,
    Connection,
    NoPaymentRoute,
    PaymentConfig,
    RoutingInput,
    decide_route,
    price_route,
)
from services.router.settings import RouterSettings
from services.router.wire import (
    ConfigOut,
    ConfigUpdate,
    MyOptions,
    ProcessIn,
    ProcessOut,
    ProcessorOption,
    RefundIn,
    RefundOut,
    RouteIn,
    RouteOut,
    rule_error,
)
from shared.auth import Principal, acting_barber_id
from shared.circuit import CircuitBoard
from shared.errors import ProblemError, not_found
from shared.events import Event
from shared.idempotency import Claim
from shared.money import MoneyError, amount_field, format_amount, format_rate, to_minor_units
from shared.outbox import UnitOfWork
from shared.processors.base import (
    InvalidCredentials,
    PaymentDeclined,
    ProcessorRequestError,
    ProcessorTimeout,
    ProcessorUnavailable,
)
from shared.processors.stripe import StripeGateway
from shared.service import ServiceRuntime

log = structlog.get_logger("router")

CONFIG_FIELDS = (
    "payment_mode", "preferred_processor", "fallback_enabled", "min_external_amount", "max_platform_amount",
    "split_threshold", "commission_rate", "commission_collection_frequency", "auto_collection_enabled",
    "webhook_notifications", "email_notifications", "analytics_enabled", "connect_account_id",
)
# How long a barber's config and connections are served from memory. Changes made through this
# process, and every replica's config/connection events on NATS, invalidate at once; the TTL only
# bounds staleness if such a message is lost. Jittered so entries do not all expire together.
CACHE_TTL = 60.0
# Built once: the hot path only binds parameters to it.
_INSERT_DECISION = pg_insert(t.routing_decisions).on_conflict_do_nothing().returning(t.routing_decisions.c.route_id)
_ROUTE_NAMESPACE = uuid.UUID("6f0b7a52-3f0e-4c55-9d55-6a1f2d0c9e41")


@dataclass(frozen=True)
class BarberContext:
    config: PaymentConfig
    config_row: dict[str, Any] | None
    connections: tuple[Connection, ...]


class RouterService:
    def __init__(self, runtime: ServiceRuntime, settings: RouterSettings, stripe: StripeGateway | None) -> None:
        self.rt = runtime
        self.settings = settings
        self.stripe = stripe
        self.circuits = CircuitBoard()
        self._cache: dict[int, tuple[float, BarberContext]] = {}

    # ---- configs -------------------------------------------------------------------------

    def defaults_row(self, barber_id: int) -> dict[str, Any]:
        s = self.settings
        return {
            "barber_id": barber_id,
            "payment_mode": s.default_payment_mode,
            "preferred_processor": None,
            "fallback_enabled": True,
            "min_external_amount": None,
            "max_platform_amount": None,
            "split_threshold": None,
            "commission_rate": s.default_commission_rate,
            "commission_collection_frequency": s.commission_collection_frequency,
            "auto_collection_enabled": s.auto_collection_enabled,
            "webhook_notifications": True,
            "email_notifications": True,
            "analytics_enabled": True,
            "connect_account_id": None,
            "version": 0,
            "updated_at": None,
        }

    async def barber_context(self, barber_id: int, *, fresh: bool = False) -> BarberContext:
        now = time.monotonic()
        cached = self._cache.get(barber_id)
        if cached is not None and cached[0] > now and not fresh:
            return cached[1]
        async with self.rt.uow() as uow:
            row = (
                await uow.session.execute(
                    sa.select(t.hybrid_payment_configs).where(t.hybrid_payment_configs.c.barber_id == barber_id)
                )
            ).mappings().first()
            connections = await _load_connections(uow, barber_id)
        context = BarberContext(_to_config(dict(row) if row else None, self.defaults_row(barber_id)),
                                dict(row) if row else None, connections)
        self._cache[barber_id] = (now + CACHE_TTL * random.uniform(0.8, 1.0), context)
        return context

    def invalidate(self, barber_id: int | None) -> None:
        if barber_id is None:
            self._cache.clear()
        else:
            self._cache.pop(barber_id, None)

    async def get_config(self, barber_id: int) -> ConfigOut:
        context = await self.barber_context(barber_id, fresh=True)
        return _config_out(context.config_row or self.defaults_row(barber_id), is_default=context.config_row is None)

    async def update_config(
        self, principal: Principal, barber_id: int, update: ConfigUpdate, claim: Claim | None
    ) -> ConfigOut:
        changes = update.changes()
        if "commission_rate" in changes and principal.role != "admin":
            raise ProblemError(403, "forbidden", "commission_rate: only an admin may change it", field="commission_rate")
        now = datetime.now(UTC)
        c = t.hybrid_payment_configs
        async with self.rt.uow() as uow:
            row = (
                await uow.session.execute(sa.select(c).where(c.c.barber_id == barber_id).with_for_update())
            ).mappings().first()
            current = dict(row) if row else self.defaults_row(barber_id)
            expected = update.expected_version
            if expected is not UNSET and expected != current["version"]:
                raise ProblemError(409, "version_conflict",
                                   f"config is at version {current['version']}, not {expected}",
                                   current_version=current["version"])
            if problem := rule_error(changes, current):
                field = problem.split(":", 1)[0]
                raise ProblemError(422, "validation_error", problem, field=field)
            values = {**{f: current[f] for f in CONFIG_FIELDS}, **changes}
            if row is None:
                saved = (
                    await uow.session.execute(
                        pg_insert(c)
                        .values(barber_id=barber_id, **values, effective_from=now, created_at=now, updated_at=now,
                                version=1)
                        .returning(c)
                    )
                ).mappings().one()
            else:
                saved = (
                    await uow.session.execute(
                        sa.update(c)
                        .where(c.c.barber_id == barber_id, c.c.version == current["version"])
                        .values(**values, updated_at=now, version=c.c.version + 1)
                        .returning(c)
                    )
                ).mappings().one()
            out = _config_out(dict(saved), is_default=False)
            uow.emit("config.changed", _config_event(out))
            if claim:
                claim.record(uow, 200, out)
            await uow.commit()
        self.invalidate(barber_id)
        return out

    async def my_options(self, barber_id: int) -> MyOptions:
        context = await self.barber_context(barber_id, fresh=True)
        config = _config_out(context.config_row or self.defaults_row(barber_id), is_default=context.config_row is None)
        enabled = self.settings.hybrid_payments_enabled
        open_now = self.circuits.open_names(time.monotonic())
        return MyOptions(
            config=config,
            hybrid_payments_enabled=enabled,
            available_modes=["centralized", "decentralized", "hybrid"] if enabled else ["centralized"],
            processors=[
                ProcessorOption(
                    connection_id=conn.id, processor=conn.processor, account_id=acct, status=conn.status,
                    default_currency=conn.default_currency, supports_payments=conn.supports_payments,
                    supports_refunds=refunds, usable=enabled and conn.can_take(conn.default_currency)
                    and conn.processor not in open_now,
                )
                for conn, acct, refunds in await self._connection_details(barber_id)
            ],
            platform_defaults={
                "payment_mode": self.settings.default_payment_mode,
                "commission_rate": format_rate(self.settings.default_commission_rate),
                "commission_collection_frequency": self.settings.commission_collection_frequency,
                "max_payment_amount": str(self.settings.max_payment_amount),
                "centralized_processor": "stripe",
            },
        )

    async def _connection_details(self, barber_id: int) -> list[tuple[Connection, str, bool]]:
        pc = t.processor_connections
        async with self.rt.uow() as uow:
            rows = (
                await uow.session.execute(sa.select(pc).where(pc.c.barber_id == barber_id).order_by(pc.c.connected_at))
            ).mappings().all()
        return [(_to_connection(r), r["account_id"], r["supports_refunds"]) for r in rows]

    # ---- routing -------------------------------------------------------------------------

    async def route_payment(
        self, principal: Principal, body: RouteIn, claim: Claim | None, *, route_id: uuid.UUID | None = None
    ) -> RouteOut:
        """Decide and record. A given `route_id` that is already recorded returns that decision."""
        barber_id = acting_barber_id(principal, body.barber_id)
        if body.amount > self.settings.max_payment_amount:
            raise ProblemError(422, "validation_error",
                               f"amount: {body.amount} exceeds the maximum of {self.settings.max_payment_amount}",
                               field="amount")
        context = await self.barber_context(barber_id)
        decided_at = datetime.now(UTC)
        try:
            route = decide_route(
                RoutingInput(
                    config=context.config,
                    connections=context.connections,
                    amount=body.amount,
                    currency=body.currency,
                    hybrid_enabled=self.settings.hybrid_payments_enabled,
                    unavailable_processors=self.circuits.open_names(time.monotonic()),
                )
            )
        except NoPaymentRoute as refused:
            raise ProblemError(422, "no_payment_route", refused.detail, reason=refused.reason) from None
        priced = price_route(route, body.amount, body.currency, context.config.commission_rate)
        currency = body.currency
        out = RouteOut(
            route_id=route_id or uuid.uuid4(),
            barber_id=barber_id,
            appointment_id=body.appointment_id,
            payment_type=route.payment_type,
            processor=route.processor,
            connection_id=route.connection.id if route.connection else None,
            amount=format_amount(body.amount, currency),
            currency=currency,
            commission_rate=format_rate(priced.commission_rate),
            commission_amount=format_amount(priced.commission_amount, currency),
            estimated_processor_fee=format_amount(priced.estimated_processor_fee, currency),
            barber_net=format_amount(priced.barber_net, currency),
            reason=route.reason,
            fallback_used=route.fallback_used,
            decided_at=decided_at,
        )
        decision = dict(
            route_id=out.route_id, barber_id=barber_id, appointment_id=body.appointment_id,
            client_id=body.client_id, amount=body.amount, currency=currency,
            payment_type=route.payment_type, processor=route.processor, connection_id=out.connection_id,
            commission_rate=priced.commission_rate, commission_amount=priced.commission_amount,
            estimated_processor_fee=priced.estimated_processor_fee, barber_net=priced.barber_net,
            reason=route.reason, fallback_used=route.fallback_used, decided_at=decided_at,
        )
        if claim is None:
            # The hot path: one insert, nothing else to keep atomic with it.
            row = await self.rt.write_one(_INSERT_DECISION, decision)
        else:
            async with self.rt.uow() as uow:
                row = (await uow.session.execute(_INSERT_DECISION, decision)).first()
                if row is not None:
                    claim.record(uow, 200, out)
                await uow.commit()
        if row is None:  # this route id was recorded before (a retry of route-and-pay): answer that
            return _route_out(await self._load_decision(principal, out.route_id))
        return out

    # ---- payments ------------------------------------------------------------------------

    async def process_payment(self, principal: Principal, body: ProcessIn, claim: Claim | None) -> ProcessOut:
        if body.route_id is None:
            # Route and pay at once. Under an Idempotency-Key the route id is derived from the key,
            # so a retry after a timeout finds the same route (and its pending charge) again.
            derived = uuid.uuid5(_ROUTE_NAMESPACE, f"{claim.scope}\n{claim.key}") if claim else None
            route_id = (await self.route_payment(principal, body.as_route(), None, route_id=derived)).route_id
        else:
            route_id = body.route_id
        decision = await self._load_decision(principal, route_id)
        if decision["payment_type"] == "external":
            raise ProblemError(
                503, "external_processing_unavailable",
                "external (barber-processor) payments are not wired yet; this route is external",
                route_id=str(route_id), retryable=False,
            )
        return await self._charge_centralized(decision, body.payment_method, claim)

    async def _load_decision(self, principal: Principal, route_id: uuid.UUID) -> dict[str, Any]:
        async with self.rt.uow() as uow:
            row = (
                await uow.session.execute(sa.select(t.routing_decisions).where(t.routing_decisions.c.route_id == route_id))
            ).mappings().first()
        if row is None or (principal.role == "barber" and row["barber_id"] != principal.barber_id):
            raise not_found(f"route {route_id}")  # another barber's route does not exist for you
        return dict(row)

    async def _charge_centralized(self, decision: dict[str, Any], payment_method: str, claim: Claim | None) -> ProcessOut:
        if self.stripe is None:
            raise ProblemError(503, "processor_not_configured", "STRIPE_SECRET_KEY is not set for the platform account")
        context = await self.barber_context(decision["barber_id"], fresh=True)
        destination = context.config.connect_account_id
        if not destination:
            raise ProblemError(
                422, "connect_account_required",
                "connect_account_id: the barber has no Stripe Connect account to pay out to",
                field="connect_account_id",
            )
        payment = await self._open_attempt(decision, payment_method, destination)
        if payment["status"] != "pending":  # this route was already paid: answer that, charge nothing
            return _process_out(payment)
        currency = payment["currency"]
        try:
            result = await self.stripe.create_payment(
                amount_minor=to_minor_units(payment["amount"], currency),
                currency=currency,
                payment_method=payment["payment_method"],
                idempotency_key=payment["processor_idempotency_key"],
                application_fee_minor=to_minor_units(payment["commission_amount"], currency),
                destination=payment["destination_account"],
                metadata={"transaction_id": str(payment["id"]), "route_id": str(payment["route_id"]),
                          "barber_id": str(payment["barber_id"]),
                          "appointment_id": str(payment["appointment_id"])},
            )
        except PaymentDeclined as declined:
            self.circuits.circuit("stripe").record_success()  # Stripe answered; the card said no
            failed = await self._settle(payment, "failed", declined.processor_payment_id, None,
                                        failure=(declined.code or "card_declined", declined.message))
            raise ProblemError(
                402, "payment_declined", declined.message,
                transaction_id=str(failed["id"]), decline_code=declined.code,
            ) from None
        except ProcessorTimeout:
            self.circuits.circuit("stripe").record_failure(time.monotonic())
            raise ProblemError(
                504, "processor_timeout",
                "Stripe did not answer in time; the outcome is unknown. Retry with the same Idempotency-Key "
                "to settle it (it will not charge twice).",
                transaction_id=str(payment["id"]),
            ) from None
        except ProcessorUnavailable as exc:
            self.circuits.circuit("stripe").record_failure(time.monotonic())
            raise ProblemError(502, "processor_unavailable", exc.message, transaction_id=str(payment["id"])) from None
        except (ProcessorRequestError, InvalidCredentials) as exc:
            failed = await self._settle(payment, "failed", None, None, failure=(exc.code or "processor_error",
                                                                                 exc.message))
            raise ProblemError(
                422, "processor_rejected", f"payment_method: Stripe refused the request: {exc.message}",
                transaction_id=str(failed["id"]), field="payment_method",
            ) from None
        self.circuits.circuit("stripe").record_success()
        status = {"completed": "completed", "pending": "pending"}.get(result.status, "failed")
        settled = await self._settle(payment, status, result.processor_payment_id, result.charge_id,
                                     raw=result.raw, claim=claim)
        return _process_out(settled)

    async def _open_attempt(self, decision: dict[str, Any], payment_method: str, destination: str) -> dict[str, Any]:
        """The route's live attempt (pending or paid), or a new pending one, committed before any charge."""
        p = t.platform_payments
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            # Lock the decision so two first attempts on one route cannot both be created.
            await uow.session.execute(
                sa.select(t.routing_decisions.c.route_id)
                .where(t.routing_decisions.c.route_id == decision["route_id"])
                .with_for_update()
            )
            live = (
                await uow.session.execute(
                    sa.select(p).where(p.c.route_id == decision["route_id"], p.c.status != "failed")
                )
            ).mappings().first()
            if live is not None:
                await uow.commit()
                return dict(live)
            payment_id = uuid.uuid4()
            row = (
                await uow.session.execute(
                    sa.insert(p)
                    .values(
                        id=payment_id, route_id=decision["route_id"], barber_id=decision["barber_id"],
                        appointment_id=decision["appointment_id"], client_id=decision["client_id"],
                        amount=decision["amount"], currency=decision["currency"],
                        commission_rate=decision["commission_rate"],
                        commission_amount=decision["commission_amount"],
                        processor_fee=decision["estimated_processor_fee"], refunded_amount=Decimal(0),
                        destination_account=destination, payment_method=payment_method, status="pending",
                        processor_idempotency_key=f"hp-pay-{payment_id}", created_at=now, updated_at=now,
                        version=1,
                    )
                    .returning(p)
                )
            ).mappings().one()
            await uow.commit()
        return dict(row)

    async def _settle(
        self,
        payment: dict[str, Any],
        status: str,
        intent_id: str | None,
        charge_id: str | None,
        *,
        failure: tuple[str, str] | None = None,
        raw: dict[str, Any] | None = None,
        claim: Claim | None = None,
    ) -> dict[str, Any]:
        """Record the attempt's outcome and its `transaction.recorded` event in one transaction."""
        p = t.platform_payments
        async with self.rt.uow() as uow:
            row = (
                await uow.session.execute(
                    sa.update(p)
                    .where(p.c.id == payment["id"], p.c.status == "pending")
                    .values(
                        status=status, stripe_payment_intent_id=intent_id, stripe_charge_id=charge_id,
                        failure_code=failure[0] if failure else None, failure_reason=failure[1] if failure else None,
                        processor_response=_jsonable(raw), updated_at=datetime.now(UTC), version=p.c.version + 1,
                    )
                    .returning(p)
                )
            ).mappings().first()
            if row is None:  # someone settled it first (a concurrent retry): their record stands
                await uow.commit()
                return await self._payment(payment["id"])
            row = dict(row)
            if status != "pending":
                uow.emit("transaction.recorded", transaction_event(row))
            if claim:
                claim.record(uow, 200, _process_out(row))
            await uow.commit()
        return row

    async def _payment(self, payment_id: uuid.UUID) -> dict[str, Any]:
        async with self.rt.uow() as uow:
            row = (
                await uow.session.execute(sa.select(t.platform_payments).where(t.platform_payments.c.id == payment_id))
            ).mappings().first()
        if row is None:
            raise not_found(f"transaction {payment_id}")
        return dict(row)

    async def refund_payment(
        self, principal: Principal, transaction_id: uuid.UUID, body: RefundIn, claim: Claim | None
    ) -> RefundOut:
        if self.stripe is None:
            raise ProblemError(503, "processor_not_configured", "STRIPE_SECRET_KEY is not set for the platform account")
        p, r = t.platform_payments, t.platform_refunds
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            payment = (
                await uow.session.execute(sa.select(p).where(p.c.id == transaction_id).with_for_update())
            ).mappings().first()
            if payment is None or (principal.role == "barber" and payment["barber_id"] != principal.barber_id):
                raise not_found(f"transaction {transaction_id}")
            if payment["status"] not in ("completed", "partially_refunded"):
                raise ProblemError(409, "not_refundable", f"a {payment['status']} payment cannot be refunded")
            reserved = await uow.session.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(r.c.amount), 0)).where(
                    r.c.payment_id == transaction_id, r.c.status.in_(("pending", "succeeded"))
                )
            )
            remaining = payment["amount"] - reserved
            currency = payment["currency"]
            try:
                amount = remaining if body.amount is None else amount_field("amount", body.amount, currency,
                                                                            max_amount=None)
            except MoneyError as exc:
                raise ProblemError(422, "validation_error", str(exc), field="amount") from None
            if amount <= 0 or amount > remaining:
                raise ProblemError(422, "refund_exceeds_payment",
                                   f"amount: {format_amount(amount, currency)} exceeds the refundable "
                                   f"{format_amount(remaining, currency)}", field="amount")
            refund_id = uuid.uuid4()
            await uow.session.execute(
                sa.insert(r).values(id=refund_id, payment_id=transaction_id, amount=amount, status="pending",
                                    processor_idempotency_key=f"hp-refund-{refund_id}", created_at=now,
                                    updated_at=now)
            )
            await uow.commit()
        try:
            result = await self.stripe.refund(
                payment_intent_id=payment["stripe_payment_intent_id"],
                amount_minor=to_minor_units(amount, currency),
                idempotency_key=f"hp-refund-{refund_id}",
                destination_charge=True,
            )
        except ProcessorTimeout:
            raise ProblemError(504, "processor_timeout", "Stripe did not answer in time; retry with the same "
                               "Idempotency-Key", transaction_id=str(transaction_id)) from None
        except (ProcessorUnavailable, ProcessorRequestError, InvalidCredentials) as exc:
            async with self.rt.uow() as uow:
                await uow.session.execute(
                    sa.update(r).where(r.c.id == refund_id).values(status="failed", failure_reason=exc.message,
                                                                   updated_at=datetime.now(UTC))
                )
                await uow.commit()
            raise ProblemError(502, "refund_failed", exc.message, transaction_id=str(transaction_id)) from None
        async with self.rt.uow() as uow:
            await uow.session.execute(
                sa.update(r).where(r.c.id == refund_id).values(
                    status="succeeded" if result.status == "succeeded" else result.status,
                    stripe_refund_id=result.refund_id, updated_at=datetime.now(UTC))
            )
            refunded = payment["refunded_amount"] + amount
            status = "refunded" if refunded == payment["amount"] else "partially_refunded"
            row = dict(
                (
                    await uow.session.execute(
                        sa.update(p)
                        .where(p.c.id == transaction_id)
                        .values(refunded_amount=p.c.refunded_amount + amount, status=status,
                                updated_at=datetime.now(UTC), version=p.c.version + 1)
                        .returning(p)
                    )
                ).mappings().one()
            )
            uow.emit("transaction.recorded", transaction_event(row, refund_amount=amount))
            out = RefundOut(
                transaction_id=transaction_id, refund_id=refund_id, status=row["status"],
                refund_amount=format_amount(amount, currency),
                refunded_amount=format_amount(row["refunded_amount"], currency),
                amount=format_amount(row["amount"], currency), currency=currency,
            )
            if claim:
                claim.record(uow, 200, out)
            await uow.commit()
        return out

    # ---- read model ------------------------------------------------------------------------

    async def apply_connection_changed(self, uow: UnitOfWork, event: Event) -> None:
        """Upsert the connection; an older event never overwrites a newer one."""
        data = event.payload
        pc = t.processor_connections
        fees = data.get("processing_fees") or {}
        values = {
            "connection_id": int(data["connection_id"]),
            "barber_id": int(data["barber_id"]),
            "processor": data["processor"],
            "account_id": str(data.get("account_id") or ""),
            "status": data["status"],
            "default_currency": str(data.get("default_currency") or "USD").upper(),
            "supports_payments": bool(data.get("supports_payments", True)),
            "supports_refunds": bool(data.get("supports_refunds", True)),
            "fee_percent": Decimal(str(fees["percent"])) if fees.get("percent") is not None else None,
            "fee_fixed": Decimal(str(fees["fixed"])) if fees.get("fixed") is not None else None,
            "connected_at": event.occurred_at,
            "event_occurred_at": event.occurred_at,
            "updated_at": datetime.now(UTC),
        }
        if values["processor"] not in PROCESSORS:
            raise ValueError(f"unknown processor {values['processor']!r}")
        update = {k: v for k, v in values.items() if k not in ("connection_id", "connected_at")}
        stmt = pg_insert(pc).values(**values)
        await uow.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[pc.c.connection_id],
                set_=update,
                where=pc.c.event_occurred_at <= stmt.excluded.event_occurred_at,
            )
        )
        # After commit: a reader invalidated earlier could re-cache the old state before it lands.
        uow.after_commit(lambda: self.connections_changed(values["barber_id"]))

    def connections_changed(self, barber_id: int) -> None:
        """Drop the barber's cached context here and, over core NATS, in every other replica."""
        self.invalidate(barber_id)
        nc = self.rt.link.nc
        if nc is not None and nc.is_connected:
            asyncio.ensure_future(nc.publish(self.invalidation_subject, str(barber_id).encode()))

    @property
    def invalidation_subject(self) -> str:
        # Core NATS, outside the PAYMENTS stream: a hint between replicas, not a recorded event.
        return f"{self.settings.event_subject_prefix}router.cache.invalidate"


def transaction_event(row: dict[str, Any], *, refund_amount: Decimal | None = None) -> dict[str, Any]:
    currency = row["currency"]
    payload = {
        "transaction_id": str(row["id"]),
        "barber_id": row["barber_id"],
        "appointment_id": row["appointment_id"],
        "client_id": row["client_id"],
        "payment_type": "centralized",
        "processor": "stripe",
        "connection_id": None,
        "external_transaction_id": row["stripe_payment_intent_id"],
        "amount": format_amount(row["amount"], currency),
        "refunded_amount": format_amount(row["refunded_amount"], currency),
        "currency": currency,
        "status": row["status"],
        "commission_rate": format_rate(row["commission_rate"]),
        "commission_amount": format_amount(row["commission_amount"], currency),
        "processor_fee": format_amount(row["processor_fee"], currency),
        "failure_code": row["failure_code"],
        "source": "live",
    }
    if refund_amount is not None:
        payload["refund_amount"] = format_amount(refund_amount, currency)
    return payload


def _route_out(row: dict[str, Any]) -> RouteOut:
    currency = row["currency"]
    return RouteOut(
        route_id=row["route_id"], barber_id=row["barber_id"], appointment_id=row["appointment_id"],
        payment_type=row["payment_type"], processor=row["processor"], connection_id=row["connection_id"],
        amount=format_amount(row["amount"], currency), currency=currency,
        commission_rate=format_rate(row["commission_rate"]),
        commission_amount=format_amount(row["commission_amount"], currency),
        estimated_processor_fee=format_amount(row["estimated_processor_fee"], currency),
        barber_net=format_amount(row["barber_net"], currency), reason=row["reason"],
        fallback_used=row["fallback_used"], decided_at=row["decided_at"],
    )


def _process_out(row: dict[str, Any]) -> ProcessOut:
    currency = row["currency"]
    return ProcessOut(
        transaction_id=row["id"], route_id=row["route_id"], status=row["status"], payment_type="centralized",
        processor="stripe", external_transaction_id=row["stripe_payment_intent_id"],
        amount=format_amount(row["amount"], currency), currency=currency,
        commission_amount=format_amount(row["commission_amount"], currency),
    )


def _to_config(row: dict[str, Any] | None, defaults: dict[str, Any]) -> PaymentConfig:
    source = row or defaults
    return PaymentConfig(
        barber_id=source["barber_id"],
        payment_mode=source["payment_mode"],
        commission_rate=Decimal(source["commission_rate"]),
        preferred_processor=source["preferred_processor"],
        fallback_enabled=source["fallback_enabled"],
        min_external_amount=source["min_external_amount"],
        max_platform_amount=source["max_platform_amount"],
        split_threshold=source["split_threshold"],
        connect_account_id=source["connect_account_id"],
        is_default=row is None,
    )


def _to_connection(row: Any) -> Connection:
    fees = (row["fee_percent"], row["fee_fixed"] or Decimal(0)) if row["fee_percent"] is not None else None
    return Connection(
        id=row["connection_id"], processor=row["processor"], status=row["status"],
        default_currency=row["default_currency"], supports_payments=row["supports_payments"],
        connected_at=row["connected_at"], processing_fees=fees,
    )


async def _load_connections(uow: UnitOfWork, barber_id: int) -> tuple[Connection, ...]:
    pc = t.processor_connections
    rows = (await uow.session.execute(sa.select(pc).where(pc.c.barber_id == barber_id))).mappings().all()
    return tuple(_to_connection(r) for r in rows)


def _money_or_none(value: Decimal | None) -> str | None:
    return None if value is None else format_amount(value)


def _config_out(row: dict[str, Any], *, is_default: bool) -> ConfigOut:
    return ConfigOut(
        barber_id=row["barber_id"],
        payment_mode=row["payment_mode"],
        preferred_processor=row["preferred_processor"],
        fallback_enabled=row["fallback_enabled"],
        min_external_amount=_money_or_none(row["min_external_amount"]),
        max_platform_amount=_money_or_none(row["max_platform_amount"]),
        split_threshold=_money_or_none(row["split_threshold"]),
        commission_rate=format_rate(Decimal(row["commission_rate"])),
        commission_collection_frequency=row["commission_collection_frequency"],
        auto_collection_enabled=row["auto_collection_enabled"],
        webhook_notifications=row["webhook_notifications"],
        email_notifications=row["email_notifications"],
        analytics_enabled=row["analytics_enabled"],
        connect_account_id=row["connect_account_id"],
        is_default=is_default,
        version=row["version"],
        updated_at=row["updated_at"],
    )


def _config_event(out: ConfigOut) -> dict[str, Any]:
    return msgspec.to_builtins(out)


def _jsonable(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if raw is None else msgspec.json.decode(msgspec.json.encode(raw))
