"""Barber payment configs: read (a barber without a row gets the platform defaults), change
(-> `config.changed`), and `/my-options`.

A change locks the barber's row; the first write for a barber inserts it with `ON CONFLICT DO
NOTHING`, and a writer that lost that race locks the winner's row and applies its change on top,
so concurrent first writes serialise on the version instead of failing on the unique key.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime

from msgspec import UNSET

from services.router import store
from services.router.mapping import config_changed, config_out
from services.router.routing import BarberContexts
from services.router.settings import RouterSettings
from services.router.store import ConfigRow
from services.router.wire import (
    ConfigOut,
    CircuitOut,
    CircuitsOut,
    ConfigPage,
    ConfigUpdate,
    MyOptions,
    ProcessorOption,
    config_rule_error,
)
from shared.auth import Principal
from shared.circuit import CircuitBoard, connection_circuit
from shared.errors import ProblemError
from shared.idempotency import Claim
from shared.money import format_rate
from shared.operations import audit
from shared.pagination import page_of
from shared.service import ServiceRuntime

CONFIG_FIELDS = (
    "payment_mode", "preferred_processor", "fallback_enabled", "min_external_amount", "max_platform_amount",
    "split_threshold", "threshold_currency", "commission_rate", "commission_collection_frequency",
    "auto_collection_enabled", "webhook_notifications", "email_notifications", "analytics_enabled",
    "connect_account_id",
)


class ConfigService:
    def __init__(self, runtime: ServiceRuntime, settings: RouterSettings, contexts: BarberContexts,
                 circuits: CircuitBoard) -> None:
        self.rt = runtime
        self.settings = settings
        self.contexts = contexts
        self.circuits = circuits

    async def get_config(self, barber_id: int) -> ConfigOut:
        context = await self.contexts.get(barber_id, fresh=True)
        return config_out(context.config_row or self.contexts.defaults_row(barber_id),
                          is_default=context.config_row is None)

    async def update_config(
        self, principal: Principal, barber_id: int, update: ConfigUpdate, claim: Claim | None
    ) -> ConfigOut:
        changes = update.changes()
        if "commission_rate" in changes and principal.role != "admin":
            raise ProblemError(403, "forbidden", "commission_rate: only an admin may change it", field="commission_rate")
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            row = await store.load_config(uow.session, barber_id, lock=True)
            current = row or self.contexts.defaults_row(barber_id)
            _refuse_payout_change(principal, changes, current)
            expected = update.expected_version
            if expected is not UNSET and expected != current.version:
                raise ProblemError(409, "version_conflict", f"config is at version {current.version}, not {expected}",
                                   current_version=current.version)
            values = {**_config_fields(current), **changes}
            if problem := config_rule_error(values):
                raise ProblemError(422, "validation_error", problem, field=problem.split(":", 1)[0])
            saved = None
            if row is None:
                saved = await store.insert_config(uow.session, {
                    "barber_id": barber_id, **values, "effective_from": now, "created_at": now, "updated_at": now,
                    "version": 1})
                if saved is None:
                    # A concurrent first write won the insert; it has committed (ON CONFLICT waited for
                    # it), so lock its row and apply this change on top, as if this writer came second.
                    raced = await store.load_config(uow.session, barber_id, lock=True)
                    if raced is None:  # it could not be inserted, yet is not there: nothing sane to apply on
                        raise ProblemError(409, "version_conflict", "the config changed meanwhile; try again")
                    if expected is not UNSET:
                        raise ProblemError(409, "version_conflict",
                                           f"config is at version {raced.version}, not {expected}",
                                           current_version=raced.version)
                    values = {**_config_fields(raced), **changes}
                    if problem := config_rule_error(values):
                        raise ProblemError(422, "validation_error", problem, field=problem.split(":", 1)[0])
                    row = raced
            if saved is None:
                if row is None:  # cannot be: without an insert, a row was there (locked above) or raced in
                    raise RuntimeError(f"no config row of barber {barber_id} to update")
                saved = await store.update_config(uow.session, barber_id, row.version, {**values, "updated_at": now})
            out = config_out(saved, is_default=False)
            uow.emit(config_changed(out))
            audit(uow, principal, "config.update", f"barber:{barber_id}",
                  config_out(row or current, is_default=row is None), out)
            if claim:
                claim.record(uow, 200, out)
            await uow.commit()
        await self.contexts.changed(barber_id)  # in every replica, before the change is answered
        return out

    async def list_configs(self, *, payment_mode: str | None, processor: str | None,
                           fallback_enabled: bool | None, cursor: str | None, limit: int) -> ConfigPage:
        async with self.rt.uow() as uow:
            rows = await store.list_configs(uow.session, payment_mode=payment_mode, processor=processor,
                                            fallback_enabled=fallback_enabled, cursor=cursor, limit=limit)
        page, next_cursor = page_of(rows, limit, lambda row: (row.created_at, row.barber_id))
        return ConfigPage(items=[config_out(row, is_default=False) for row in page], next_cursor=next_cursor,
                          hybrid_payments_enabled=self.settings.hybrid_payments_enabled)

    def circuit_states(self) -> CircuitsOut:
        """This process's circuit breakers (kept per process: see CircuitsOut)."""
        prefix = connection_circuit(0)[:-1]
        return CircuitsOut(replica=f"{socket.gethostname()}:{os.getpid()}", items=[
            CircuitOut(name=name, connection_id=int(name.removeprefix(prefix)) if name.startswith(prefix) else None,
                       state=state, failures=failures)
            for name, (state, failures) in sorted(self.circuits.states(time.monotonic()).items())])

    async def my_options(self, barber_id: int) -> MyOptions:
        context = await self.contexts.get(barber_id, fresh=True)
        config = config_out(context.config_row or self.contexts.defaults_row(barber_id),
                            is_default=context.config_row is None)
        enabled = self.settings.hybrid_payments_enabled
        failing = self.circuits.open_connections(time.monotonic())
        return MyOptions(
            config=config,
            hybrid_payments_enabled=enabled,
            available_modes=["centralized", "decentralized", "hybrid"] if enabled else ["centralized"],
            processors=[
                ProcessorOption(
                    connection_id=conn.id, processor=conn.processor, account_id=row.account_id,
                    status=conn.status, default_currency=conn.default_currency,
                    supports_payments=conn.supports_payments, supports_refunds=row.supports_refunds,
                    usable=enabled and conn.can_take(conn.default_currency) and conn.id not in failing,
                )
                for conn, row in zip(context.connections, context.connection_rows, strict=True)
            ],
            platform_defaults={
                "payment_mode": self.settings.default_payment_mode,
                "commission_rate": format_rate(self.settings.default_commission_rate),
                "commission_collection_frequency": self.settings.commission_collection_frequency,
                "max_payment_amount": str(self.settings.max_payment_amount),
                "threshold_currency": "USD",
                "centralized_processor": "stripe",
            },
        )


def _config_fields(row: ConfigRow) -> dict[str, object]:
    """What a change may set, as the row has it: the base a change is applied on."""
    return {f: getattr(row, f) for f in CONFIG_FIELDS}


def _refuse_payout_change(principal: Principal, changes: dict[str, object], current: ConfigRow) -> None:
    """Where centralized payouts go and whence commission is debited is the platform's to say: a
    barber could otherwise point them at any Connect account. Only an admin changes it (sending the
    value it already has is no change)."""
    if principal.role == "admin" or "connect_account_id" not in changes:
        return
    if changes["connect_account_id"] != current.connect_account_id:
        raise ProblemError(403, "forbidden", "connect_account_id: only an admin may change it (payouts go to it and "
                           "commission is debited from it)", field="connect_account_id")
