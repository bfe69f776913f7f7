"""Barbers' processor connections: create (credentials checked with the processor, webhook endpoint
registered when no secret is given), read, change, disconnect; every change -> `connection.changed`.

Credentials are sealed before they touch the database and never leave it in the clear: responses
show a hint of the last characters. A new connection is committed `pending` first (its id names its
webhook URL), then checked: `active` when the processor accepts the credentials, `error` with the
reason when it refuses them, still `pending` (with the reason) when the processor cannot be reached.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import structlog

from services.external import store
from services.external.domain import published_status
from services.external.mapping import connection_changed, connection_out
from services.external.processors import (
    Adapters,
    build_adapter,
    credentials_hint,
    parse_credentials,
)
from services.external.settings import ExternalSettings
from services.external.store import ConnectionRow
from services.external.wire import ConnectionIn, ConnectionOut, ConnectionPage, ConnectionUpdate
from shared.auth import Principal, acting_barber_id
from shared.errors import ProblemError, not_found, validation_error
from shared.events import ConnectionChanged
from shared.idempotency import Claim
from shared.observability import DOUBLE_CHARGES, UNATTRIBUTED_PAYMENTS
from shared.pagination import page_of
from shared.processors import base as p
from shared.processors.base import PROCESSOR_NAMES
from shared.service import ServiceRuntime

log = structlog.get_logger("external.connections")


class ConnectionService:
    def __init__(self, runtime: ServiceRuntime, settings: ExternalSettings, adapters: Adapters) -> None:
        self.rt = runtime
        self.settings = settings
        self.adapters = adapters
        self.vault = adapters.vault
        # Told the id of every connection this process changes (caches drop it), after commit.
        self.listeners: list = []

    def webhook_url(self, processor: str, connection_id: int) -> str:
        return f"{self.settings.webhook_base_url.rstrip('/')}/api/v1/webhooks/{processor}/{connection_id}"

    def _out(self, row: ConnectionRow) -> ConnectionOut:
        return connection_out(row, processor_enabled=self.settings.enabled(row.processor_type))

    def _changed(self, row: ConnectionRow) -> ConnectionChanged:
        return connection_changed(row, processor_enabled=self.settings.enabled(row.processor_type))

    def _emit(self, uow, row: ConnectionRow) -> None:
        """`connection.changed` for this row, and (after commit) the local caches told."""
        uow.emit(self._changed(row))
        uow.after_commit(lambda: [listener(row.id) for listener in self.listeners])

    async def create(self, principal: Principal, body: ConnectionIn, claim: Claim | None) -> ConnectionOut:
        barber_id = acting_barber_id(principal, body.barber_id)
        if not self.settings.enabled(body.processor):
            raise ProblemError(422, "processor_disabled", f"processor: {body.processor} is switched off on this "
                               "platform (EXTERNAL_" + body.processor.upper() + "_ENABLED=false)", field="processor")
        try:
            credentials = parse_credentials(body.processor, body.credentials)
        except msgspec.ValidationError as exc:
            raise validation_error("credentials", str(exc).replace("$.", "")) from None
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            row = await store.insert_connection(uow.session, dict(
                barber_id=barber_id, processor_type=body.processor, account_id=body.account_id,
                account_name=body.account_name, status="pending", status_reason="credentials not checked yet",
                connection_data={"credentials_hint": credentials_hint(body.processor, credentials)},
                credentials=self.vault.seal(msgspec.to_builtins(credentials)),
                webhook_secret=self.vault.seal(body.webhook_secret) if body.webhook_secret else None,
                supports_payments=body.supports_payments, supports_refunds=body.supports_refunds,
                supports_recurring=body.supports_recurring, default_currency=body.default_currency,
                processing_fees=_fees(body.processing_fees), total_transactions=0, total_volume=Decimal(0),
                connected_at=now, created_at=now, updated_at=now, version=1,
            ))
            if row is None:
                raise ProblemError(409, "connection_exists", f"barber {barber_id} already has a {body.processor} "
                                   f"connection for account {body.account_id!r}", field="account_id")
            row = await store.update_connection(uow.session, row.id, {
                "webhook_url": self.webhook_url(body.processor, row.id),
                "published_status": published_status("pending", self.settings.enabled(body.processor))})
            self._emit(uow, row)
            await uow.commit()
        row = await self._check(row, credentials)
        out = self._out(row)
        if claim:
            async with self.rt.uow() as uow:
                claim.record(uow, 201, out)
                await uow.commit()
        return out

    async def _check(self, row: ConnectionRow, credentials: msgspec.Struct) -> ConnectionRow:
        """Ask the processor whether it accepts the credentials; register the webhook endpoint when
        the connection has no secret yet. Records the outcome with its event."""
        processor = row.processor_type
        adapter = build_adapter(processor, credentials, self.settings)
        values: dict[str, Any] = {}
        try:
            account = await adapter.check_credentials()
            if row.processor_account not in (None, account.account_id):
                raise AccountMismatch(account.account_id)
            values = {"status": "active", "status_reason": None, "last_sync_at": datetime.now(UTC),
                      "processor_account": account.account_id,
                      "connection_data": {**row.connection_data, "processor_account": account.account_id}}
            if row.webhook_secret is None:
                registration = await adapter.register_webhook(self.webhook_url(processor, row.id))
                values.update(webhook_secret=self.vault.seal(registration.secret.reveal()),
                              webhook_endpoint_id=registration.endpoint_id)
        except p.InvalidCredentials as exc:
            values = {"status": "error", "status_reason": f"{processor} refused the credentials: {exc.message}"}
        except (p.ProcessorUnavailable, p.OutcomeUnknown) as exc:
            values = {"status": "pending", "status_reason": f"could not check with {processor}: {exc.message}; "
                                                            "PATCH the credentials to try again"}
        except p.ProcessorRequestError as exc:
            values = {"status": "error", "status_reason": f"{processor} refused the check: {exc.message}"}
        except AccountMismatch as exc:
            values = {"status": "error", "status_reason": exc.reason(row)}
        finally:
            await adapter.close()
        async with self.rt.uow() as uow:
            current = await store.load_connection(uow.session, row.id, lock=True)
            if current is None or current.credentials != row.credentials or current.status == "disconnected":
                await uow.commit()  # changed meanwhile: the newer check decides
                return current or row
            values["updated_at"] = datetime.now(UTC)
            values["published_status"] = published_status(values.get("status", current.status),
                                                          self.settings.enabled(processor))
            updated = await store.update_connection(uow.session, row.id, values)
            self._emit(uow, updated)
            await uow.commit()
        log.info("connection_checked", connection_id=row.id, processor=processor, status=updated.status)
        return updated

    async def get(self, principal: Principal, connection_id: int) -> ConnectionOut:
        return self._out(await self._own(principal, connection_id))

    async def _own(self, principal: Principal, connection_id: int) -> ConnectionRow:
        async with self.rt.uow() as uow:
            row = await store.load_connection(uow.session, connection_id)
        if row is None or (principal.role == "barber" and row.barber_id != principal.user_id):
            raise not_found(f"connection {connection_id}")  # another barber's connection does not exist for you
        return row

    async def list(self, principal: Principal, *, barber_id: int | None, cursor: str | None,
                   limit: int) -> ConnectionPage:
        if principal.role == "barber":
            if barber_id not in (None, principal.user_id):
                raise ProblemError(403, "forbidden", "barber_id: must be your own barber id", field="barber_id")
            barber_id = principal.user_id
        async with self.rt.uow() as uow:
            rows = await store.list_connections(uow.session, barber_id=barber_id, cursor=cursor, limit=limit)
            page, next_cursor = page_of(rows, limit, lambda r: (r.created_at, r.id))
            heard = await store.last_webhooks(uow.session, [r.id for r in page])
        return ConnectionPage(items=[msgspec.structs.replace(self._out(r), last_webhook_at=heard.get(r.id))
                                     for r in page], next_cursor=next_cursor)

    async def update(self, principal: Principal, connection_id: int, body: ConnectionUpdate) -> ConnectionOut:
        row = await self._own(principal, connection_id)
        changes = body.changes()
        if not changes:
            return self._out(row)
        processor = row.processor_type
        values: dict[str, Any] = {}
        credentials = None
        if "credentials" in changes:
            try:
                credentials = parse_credentials(processor, changes.pop("credentials"))
            except msgspec.ValidationError as exc:
                raise validation_error("credentials", str(exc).replace("$.", "")) from None
            await self._same_account(row, credentials)
            values.update(credentials=self.vault.seal(msgspec.to_builtins(credentials)), status="pending",
                          status_reason="credentials not checked yet",
                          connection_data={**row.connection_data,
                                           "credentials_hint": credentials_hint(processor, credentials)})
        if "webhook_secret" in changes:
            values["webhook_secret"] = self.vault.seal(changes.pop("webhook_secret"))
        if "processing_fees" in changes:
            values["processing_fees"] = _fees(changes.pop("processing_fees"))
        values.update(changes)
        async with self.rt.uow() as uow:
            current = await store.load_connection(uow.session, connection_id, lock=True)
            if current is None or current.status == "disconnected":
                raise ProblemError(409, "connection_disconnected", f"connection {connection_id} is disconnected")
            values["updated_at"] = datetime.now(UTC)
            values["published_status"] = published_status(values.get("status", current.status),
                                                          self.settings.enabled(processor))
            row = await store.update_connection(uow.session, connection_id, values)
            self._emit(uow, row)
            await uow.commit()
        if credentials is not None:
            row = await self._check(row, credentials)
        return self._out(row)

    async def _same_account(self, row: ConnectionRow, credentials: msgspec.Struct) -> None:
        """New credentials must be accepted by the processor and belong to the account this
        connection was verified with: its payments, refunds and reconciliation all refer to it (a
        new account is a new connection). Nothing is stored when they are not."""
        processor = row.processor_type
        adapter = build_adapter(processor, credentials, self.settings)
        try:
            account = await adapter.check_credentials()
        except p.InvalidCredentials as exc:
            raise ProblemError(422, "invalid_credentials", f"credentials: {processor} refused them: {exc.message}",
                               field="credentials") from None
        except (p.ProcessorUnavailable, p.OutcomeUnknown) as exc:
            raise ProblemError(503, "processor_unavailable", f"could not check the new credentials with {processor} "
                               f"({exc.message}); nothing was changed, try again", headers={"Retry-After": "5"}) \
                from None
        except p.ProcessorRequestError as exc:
            raise ProblemError(422, "invalid_credentials", f"credentials: {processor} refused the check: "
                               f"{exc.message}", field="credentials") from None
        finally:
            await adapter.close()
        if row.processor_account not in (None, account.account_id):
            raise ProblemError(422, "account_mismatch", AccountMismatch(account.account_id).reason(row),
                               field="credentials")

    async def disconnect(self, principal: Principal, connection_id: int) -> ConnectionOut:
        row = await self._own(principal, connection_id)
        now = datetime.now(UTC)
        async with self.rt.uow() as uow:
            current = await store.load_connection(uow.session, connection_id, lock=True)
            if current is None or current.status == "disconnected":
                await uow.commit()
                return self._out(current or row)
            row = await store.update_connection(uow.session, connection_id, dict(
                status="disconnected", status_reason="disconnected by " + principal.role, disconnected_at=now,
                updated_at=now, published_status="disconnected"))
            self._emit(uow, row)
            await uow.commit()
        return self._out(row)

    async def refresh_totals(self, now: datetime) -> int:
        """The seed's per-connection counters (a write: once per interval across replicas)."""
        async with self.rt.uow() as uow:
            count = await store.refresh_connection_totals(uow.session)
            await uow.commit()
        return count

    async def refresh_integrity_gauges(self, now: datetime) -> None:
        """The integrity gauges (double charges to refund, payments waiting for attribution), read
        from the tables by every replica: the same whichever replica is scraped."""
        async with self.rt.uow() as uow:
            integrity = {r.processor: r for r in await store.integrity_counts(uow.session)}
        for processor in PROCESSOR_NAMES:
            found = integrity.get(processor)
            DOUBLE_CHARGES.labels(processor).set(found.double_charges if found else 0)
            UNATTRIBUTED_PAYMENTS.labels(processor).set(found.unattributed if found else 0)

    async def republish(self, now: datetime) -> int:
        """Tell the others again about every connection whose published status is stale (a processor
        was switched off or on since): a periodic job, in one replica at a time."""
        count = 0
        async with self.rt.uow() as uow:
            for row in await store.connections_to_republish(uow.session):
                status = published_status(row.status, self.settings.enabled(row.processor_type))
                if status != row.published_status:
                    row = await store.update_connection(uow.session, row.id, {"published_status": status})
                    self._emit(uow, row)
                    count += 1
            await uow.commit()
        if count:
            log.info("connections_republished", count=count)
        return count


class AccountMismatch(Exception):
    """Credentials that belong to another processor account than the connection's."""

    def __init__(self, account_id: str) -> None:
        super().__init__(account_id)
        self.account_id = account_id

    def reason(self, row: ConnectionRow) -> str:
        return (f"credentials: they belong to {row.processor_type} account {self.account_id}, not to this "
                f"connection's {row.processor_account}; connect the other account as a new connection")


def _fees(fees) -> dict[str, str] | None:
    return None if fees is None else {"percent": str(fees.percent), "fixed": str(fees.fixed)}

