"""The router's wire types: request structs validated at the edge, response structs as sent.

Amounts arrive as JSON numbers or strings and are parsed straight to Decimal; they leave as
decimal strings ("50.00").
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

from services.router.domain import Frequency, PaymentMode, Processor, validate_rules
from shared.events import ConfigChanged
from shared.money import (
    MAX_STORABLE_AMOUNT,
    MoneyError,
    PlainDecimal,
    amount_field,
    normalise_currency,
    parse_rate,
    to_decimal,
)
from shared.requests import text

PositiveId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
BarberId = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
PaymentMethod = text(255)
AccountId = Annotated[str, msgspec.Meta(pattern=r"^acct_[A-Za-z0-9]{1,64}$")]


def _currency(value: str, field: str = "currency") -> str:
    try:
        return normalise_currency(value)
    except MoneyError as exc:
        raise ValueError(f"{field}: {exc}") from None


def _number(field: str, value: Decimal) -> Decimal:
    """A finite number; its minor units are checked where its currency is known."""
    try:
        return to_decimal(value)
    except MoneyError as exc:
        raise ValueError(f"{field}: {exc}") from None


THRESHOLDS = ("min_external_amount", "max_platform_amount", "split_threshold")


class ConfigUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """PUT body: the fields given are set, the others keep their current (or default) value."""

    payment_mode: PaymentMode | UnsetType = UNSET
    preferred_processor: Processor | None | UnsetType = UNSET
    fallback_enabled: bool | UnsetType = UNSET
    min_external_amount: PlainDecimal | None | UnsetType = UNSET
    max_platform_amount: PlainDecimal | None | UnsetType = UNSET
    split_threshold: PlainDecimal | None | UnsetType = UNSET
    # The currency of the three amount rules (ISO 4217; default USD).
    threshold_currency: str | UnsetType = UNSET
    commission_rate: PlainDecimal | UnsetType = UNSET
    commission_collection_frequency: Frequency | UnsetType = UNSET
    auto_collection_enabled: bool | UnsetType = UNSET
    webhook_notifications: bool | UnsetType = UNSET
    email_notifications: bool | UnsetType = UNSET
    analytics_enabled: bool | UnsetType = UNSET
    connect_account_id: AccountId | None | UnsetType = UNSET
    # Optimistic concurrency: when given, the write applies only to this version (0: the
    # barber has no row yet, so the write creates it or fails with 409).
    expected_version: Annotated[int, msgspec.Meta(ge=0)] | UnsetType = UNSET  # 0: "no row yet"

    def __post_init__(self) -> None:
        # The amounts are checked against their currency by the service, which knows the
        # barber's current `threshold_currency` when this body does not change it.
        for name in THRESHOLDS:
            value = getattr(self, name)
            if value is not UNSET and value is not None:
                setattr(self, name, _number(name, value))
        if self.threshold_currency is not UNSET:
            self.threshold_currency = _currency(self.threshold_currency, "threshold_currency")
        if self.commission_rate is not UNSET:
            try:
                self.commission_rate = parse_rate(self.commission_rate)
            except MoneyError as exc:
                raise ValueError(f"commission_rate: {exc}") from None

    def changes(self) -> dict[str, object]:
        return {
            f: getattr(self, f)
            for f in self.__struct_fields__
            if f != "expected_version" and getattr(self, f) is not UNSET
        }


class ConfigOut(ConfigChanged, kw_only=True):
    """A barber's config as the API shows it: exactly what `config.changed` carries, and whether
    it is still the platform defaults (no row yet)."""

    is_default: bool


class ConfigPage(msgspec.Struct, kw_only=True):
    """Barbers' configs (only barbers with a row: the others have the platform defaults), and the
    kill switch: with `hybrid_payments_enabled` false every barber is routed centralized."""

    items: list[ConfigOut]
    next_cursor: str | None
    hybrid_payments_enabled: bool


class CircuitOut(msgspec.Struct, kw_only=True):
    name: str  # "platform" or "connection:<id>"
    connection_id: int | None
    state: Literal["closed", "open", "half_open"]
    failures: int  # consecutive


class CircuitsOut(msgspec.Struct, kw_only=True):
    """The circuit breakers of the router process that answered (`replica`): each process keeps its
    own, so with N replicas each may differ (a failing account opens them one by one)."""

    replica: str
    items: list[CircuitOut]


class RouteIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    appointment_id: PositiveId
    amount: PlainDecimal
    currency: str = "USD"
    barber_id: BarberId | None = None
    client_id: PositiveId | None = None

    def __post_init__(self) -> None:
        self.currency, self.amount = _payment_amount(self.currency, self.amount)


def _payment_amount(currency: str, amount: Decimal) -> tuple[str, Decimal]:
    """The currency, and the amount checked in that currency's minor units. (The configured
    maximum is applied by the service, which knows the settings.)"""
    currency = _currency(currency)
    try:
        return currency, amount_field("amount", amount, currency, max_amount=None)
    except MoneyError as exc:
        raise ValueError(str(exc)) from None


class RouteOut(msgspec.Struct, kw_only=True):
    route_id: uuid.UUID
    barber_id: int
    appointment_id: int
    payment_type: Literal["centralized", "external"]
    processor: Processor
    connection_id: int | None
    amount: str
    currency: str
    commission_rate: str
    commission_amount: str
    estimated_processor_fee: str
    barber_net: str
    reason: str
    fallback_used: bool
    decided_at: datetime


class ProcessIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Either a `route_id` from /route, or the /route body: route and pay in one call."""

    payment_method: PaymentMethod
    route_id: uuid.UUID | None = None
    appointment_id: PositiveId | None = None
    amount: PlainDecimal | None = None
    currency: str = "USD"
    barber_id: BarberId | None = None
    client_id: PositiveId | None = None

    def __post_init__(self) -> None:
        if self.payment_method.startswith("acct_"):
            raise ValueError("payment_method: a Connect account id is not a payment method")
        if self.route_id is None and (self.appointment_id is None or self.amount is None):
            raise ValueError("route_id: give a route_id, or appointment_id and amount to route and pay at once")
        if self.route_id is not None and self.amount is not None:
            raise ValueError("amount: not allowed with route_id (the route fixed the amount)")
        if self.amount is not None:  # route and pay: validated exactly as /route validates
            self.currency, self.amount = _payment_amount(self.currency, self.amount)

    def as_route(self) -> RouteIn:
        if self.appointment_id is None or self.amount is None:  # __post_init__ refused such a body
            raise ValueError("route_id: give a route_id, or appointment_id and amount to route and pay at once")
        return RouteIn(appointment_id=self.appointment_id, amount=self.amount, currency=self.currency,
                       barber_id=self.barber_id, client_id=self.client_id)


class FallbackOut(msgspec.Struct, kw_only=True):
    """The barber's processor surely did nothing, so the platform took the payment instead."""

    processor: Processor
    transaction_id: str | None  # the failed external attempt, as the external service recorded it
    reason: str


class ProcessOut(msgspec.Struct, kw_only=True):
    transaction_id: uuid.UUID
    route_id: uuid.UUID
    status: str
    payment_type: Literal["centralized", "external"]
    processor: Processor
    external_transaction_id: str | None
    amount: str
    currency: str
    commission_amount: str
    fallback_used: bool = False
    fallback_from: FallbackOut | None = None


class RefundIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Absent `amount`: refund all that is left. Checked in the payment's currency by the service."""

    amount: PlainDecimal | None = None

    def __post_init__(self) -> None:
        if self.amount is not None:
            self.amount = _number("amount", self.amount)


class RefundOut(msgspec.Struct, kw_only=True):
    transaction_id: uuid.UUID
    refund_id: uuid.UUID
    refund_status: Literal["pending", "succeeded", "failed"]
    status: str  # the payment's status after this refund
    refund_amount: str
    refunded_amount: str
    amount: str
    currency: str
    failure_reason: str | None = None


class RefundSummary(msgspec.Struct, kw_only=True):
    refund_id: uuid.UUID
    amount: str
    status: str
    failure_reason: str | None
    created_at: datetime


class TransactionOut(msgspec.Struct, kw_only=True):
    """A payment as recorded, whichever processor took it: a platform (centralized) payment here,
    or an external one as the external service recorded it."""

    transaction_id: uuid.UUID
    route_id: uuid.UUID | None
    barber_id: int
    appointment_id: int | None
    client_id: int | None
    status: str
    payment_type: Literal["centralized", "external"]
    processor: Processor
    external_transaction_id: str | None
    amount: str
    refunded_amount: str
    currency: str
    commission_rate: str
    commission_amount: str
    processor_fee: str
    failure_code: str | None
    failure_reason: str | None
    created_at: datetime
    processed_at: datetime | None
    refunds: list[RefundSummary] | None = None


class TransactionPage(msgspec.Struct, kw_only=True):
    items: list[TransactionOut]
    next_cursor: str | None


class ProcessorOption(msgspec.Struct, kw_only=True):
    connection_id: int
    processor: Processor
    account_id: str
    status: str
    default_currency: str
    supports_payments: bool
    supports_refunds: bool
    usable: bool


class MyOptions(msgspec.Struct, kw_only=True):
    config: ConfigOut
    hybrid_payments_enabled: bool
    available_modes: list[PaymentMode]
    processors: list[ProcessorOption]
    platform_defaults: dict[str, str]


def config_rule_error(merged: dict[str, object]) -> str | None:
    """The merged config's amount rules: each a positive amount in `threshold_currency`'s minor
    units, and coherent with each other; None when all is well."""
    currency = str(merged["threshold_currency"])
    for name in THRESHOLDS:
        value = merged.get(name)
        if value is not None:
            try:
                merged[name] = amount_field(name, value, currency, max_amount=MAX_STORABLE_AMOUNT)
            except MoneyError as exc:
                return str(exc)
    return validate_rules(merged.get("min_external_amount"), merged.get("max_platform_amount"),
                          merged.get("split_threshold"))
