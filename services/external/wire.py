"""The external service's wire types: request structs validated at the edge, responses as sent."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from shared.internal_api import ExternalTransactionOut
from shared.money import MAX_STORABLE_AMOUNT, MoneyError, PlainDecimal, normalise_currency, to_decimal
from shared.requests import text

Processor = Literal["stripe", "square", "paypal"]
BarberId = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Name = text(255)
AccountId = text(255)
WebhookSecret = text(512)


class FeesIn(msgspec.Struct, forbid_unknown_fields=True):
    """A connection's own fee structure: `percent` of the amount plus `fixed` (in its currency)."""

    percent: PlainDecimal
    fixed: PlainDecimal = PlainDecimal(0)

    def __post_init__(self) -> None:
        try:
            self.percent, self.fixed = to_decimal(self.percent), to_decimal(self.fixed)
        except MoneyError as exc:
            raise ValueError(f"processing_fees: {exc}") from None
        if not Decimal(0) <= self.percent < Decimal(100):
            raise ValueError("processing_fees: percent must be at least 0 and below 100")
        if not Decimal(0) <= self.fixed <= MAX_STORABLE_AMOUNT:
            raise ValueError(f"processing_fees: fixed must be from 0 to {MAX_STORABLE_AMOUNT}")


def _currency(value: str) -> str:
    try:
        return normalise_currency(value)
    except MoneyError as exc:
        raise ValueError(f"default_currency: {exc}") from None


class ConnectionIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    processor: Processor
    account_id: AccountId
    # Processor-specific: Stripe {"secret_key"}, Square {"access_token", "location_id"},
    # PayPal {"client_id", "client_secret"}. Checked against the processor before it is active.
    credentials: dict[str, Any]
    account_name: Name | None = None
    # Stripe signing secret, Square signature key or PayPal webhook id; absent: the service
    # registers its webhook endpoint with the processor and keeps what the processor returns.
    webhook_secret: WebhookSecret | None = None
    default_currency: str = "USD"
    supports_payments: bool = True
    supports_refunds: bool = True
    supports_recurring: bool = False
    processing_fees: FeesIn | None = None
    barber_id: BarberId | None = None  # admins create for a barber; a barber for itself

    def __post_init__(self) -> None:
        self.default_currency = _currency(self.default_currency)


class ConnectionUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    account_name: Name | None | UnsetType = UNSET
    credentials: dict[str, Any] | UnsetType = UNSET  # new credentials are checked again
    webhook_secret: WebhookSecret | UnsetType = UNSET
    default_currency: str | UnsetType = UNSET
    supports_payments: bool | UnsetType = UNSET
    supports_refunds: bool | UnsetType = UNSET
    supports_recurring: bool | UnsetType = UNSET
    processing_fees: FeesIn | None | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.default_currency is not UNSET:
            self.default_currency = _currency(self.default_currency)

    def changes(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__struct_fields__ if getattr(self, f) is not UNSET}


class FeesOut(msgspec.Struct):
    percent: str
    fixed: str


class ConnectionOut(msgspec.Struct, kw_only=True):
    id: int
    barber_id: int
    processor: Processor
    account_id: str
    account_name: str | None
    status: str
    status_reason: str | None
    usable: bool  # active, and its processor is switched on
    credentials_hint: str  # the last characters of the secret, never more
    webhook_url: str | None
    webhook_secret_set: bool
    default_currency: str
    supports_payments: bool
    supports_refunds: bool
    supports_recurring: bool
    processing_fees: FeesOut | None
    total_transactions: int
    total_volume: str
    last_transaction_at: datetime | None
    last_sync_at: datetime | None
    connected_at: datetime
    disconnected_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int
    last_webhook_at: datetime | None = None  # the newest notice received (in lists)


class ConnectionPage(msgspec.Struct, kw_only=True):
    items: list[ConnectionOut]
    next_cursor: str | None


class TransactionPage(msgspec.Struct, kw_only=True):
    items: list[ExternalTransactionOut]
    next_cursor: str | None


class ReconcileIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The window to compare (default: the last RECONCILE_WINDOW_HOURS hours) and, optionally, one
    connection."""

    since: datetime | None = None
    until: datetime | None = None
    connection_id: Annotated[int, msgspec.Meta(ge=1)] | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name}: give a time zone (e.g. 2026-11-01T00:00:00Z)")
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since: must be before until")


class ReconcileFinding(msgspec.Struct, kw_only=True):
    connection_id: int
    processor: Processor
    external_transaction_id: str
    verdict: Literal["matched", "mismatch", "missing_local"]
    reason: str | None = None
    transaction_id: str | None = None


class ReconcileReport(msgspec.Struct, kw_only=True):
    since: datetime
    until: datetime
    connections: int
    matched: int
    mismatch: int
    missing_local: int
    failed_connections: dict[str, str]  # connection id -> why it could not be listed
    findings: list[ReconcileFinding]  # everything but "matched"
    run_id: int | None = None  # the run as kept (`GET /reconciliation-runs`)


class ReconciliationRunOut(msgspec.Struct, kw_only=True):
    """A reconciliation run as kept: `as_of` when it ran, the window it compared, what it found."""

    id: int
    as_of: datetime
    finished_at: datetime
    since: datetime
    until: datetime
    connection_id: int | None  # null: every active connection
    trigger: Literal["scheduled", "operator"]
    connections: int
    matched: int
    mismatch: int
    missing_local: int
    failed_connections: dict[str, str]
    findings: list[ReconcileFinding]


class ReconciliationRunPage(msgspec.Struct, kw_only=True):
    items: list[ReconciliationRunOut]
    next_cursor: str | None


class WebhookEventOut(msgspec.Struct, kw_only=True):
    """A processor notice that passed its signature check, and what came of it (`outcome`: applied,
    ignored (not a type we act on), not_found (the processor has no such object), unattributed,
    or null while it was being applied). Redeliveries of it were answered `duplicate` and are not
    listed again; refused deliveries (bad signature, unknown connection) write no row and are counted
    in the `webhooks_received_total` metric."""

    id: int
    processor: Processor
    event_id: str
    connection_id: int
    barber_id: int | None
    event_type: str
    understood: bool
    outcome: str | None
    received_at: datetime


class WebhookEventPage(msgspec.Struct, kw_only=True):
    items: list[WebhookEventOut]
    next_cursor: str | None


WebhookOutcome = Literal["applied", "ignored", "not_found", "unattributed", "duplicate"]


class WebhookAck(msgspec.Struct, kw_only=True):
    received: bool = True
    event_id: str
    duplicate: bool = False
    # Nothing was applied: an event type we do not act on, or about an object the processor does not
    # have on this account (not the processor's notice).
    ignored: bool = False
    outcome: WebhookOutcome = "applied"


class UnattributedOut(msgspec.Struct, kw_only=True):
    """A payment nobody started, on a processor account several barbers connected."""

    id: int
    processor: Processor
    processor_account: str
    external_transaction_id: str
    amount: str
    currency: str
    status: str
    connection_ids: list[int]
    heard_from: str
    first_heard_at: datetime
    last_heard_at: datetime
    attributed_to: int | None = None
    transaction_id: str | None = None
    attributed_at: datetime | None = None


class UnattributedPage(msgspec.Struct, kw_only=True):
    items: list[UnattributedOut]
    next_cursor: str | None


class AttributeIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    connection_id: Annotated[int, msgspec.Meta(ge=1, le=2_147_483_647)]
