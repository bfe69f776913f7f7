"""The router's decisions: plain functions over plain values, no I/O, no clock.

- Routing: `decide_route` applies the contract's rules in order and says which one decided
  (`reason`); `price_route` computes commission, the estimated processor fee and the barber's net.
- The payment and refund lifecycles every service shares (which status an outcome gives, what may
  be refunded) are in `shared/lifecycle.py`.

Every amount is in the payment's own currency and rounded half-up to that currency's minor unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

from shared.fees import processor_fee
from shared.money import percentage_of

PaymentMode = Literal["centralized", "decentralized", "hybrid"]
Processor = Literal["stripe", "square", "paypal"]
PaymentType = Literal["centralized", "external"]
Frequency = Literal["daily", "weekly", "monthly"]  # how often commission is collected
PROCESSORS: tuple[Processor, ...] = ("stripe", "square", "paypal")

# ---- routing -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PaymentConfig:
    """A barber's effective configuration (its row, or the platform defaults)."""

    barber_id: int
    payment_mode: PaymentMode
    commission_rate: Decimal
    preferred_processor: Processor | None = None
    fallback_enabled: bool = True
    min_external_amount: Decimal | None = None
    max_platform_amount: Decimal | None = None
    split_threshold: Decimal | None = None
    # The currency the three amounts above are in; other currencies are not compared with them.
    threshold_currency: str = "USD"
    connect_account_id: str | None = None
    is_default: bool = False


@dataclass(frozen=True)
class Connection:
    """One of the barber's processor connections, as the router's read model knows it."""

    id: int
    processor: Processor
    status: str
    default_currency: str
    supports_payments: bool
    connected_at: datetime
    processing_fees: tuple[Decimal, Decimal] | None = None  # (percent, fixed), in default_currency

    def can_take(self, currency: str) -> bool:
        return self.status == "active" and self.supports_payments and self.default_currency == currency


@dataclass(frozen=True)
class Route:
    payment_type: PaymentType
    processor: Processor
    connection: Connection | None
    reason: str
    fallback_used: bool = False


@dataclass(frozen=True)
class PricedRoute:
    route: Route
    commission_rate: Decimal
    commission_amount: Decimal
    estimated_processor_fee: Decimal
    barber_net: Decimal


class NoPaymentRoute(Exception):
    """No route is allowed for this payment; `reason` names the rule that refused it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RoutingInput:
    config: PaymentConfig
    connections: tuple[Connection, ...]
    amount: Decimal
    currency: str
    hybrid_enabled: bool = True
    # Connections whose circuits are open (calls to that account keep failing): one barber's failing
    # account never makes the same processor unavailable to the others.
    unavailable_connections: frozenset[int] = field(default_factory=frozenset)


def estimate_fee(processor: str, connection: Connection | None, amount: Decimal, currency: str) -> Decimal:
    """The processor's fee for `amount`, from the connection's own fees, else the list price."""
    return processor_fee(processor, connection.processing_fees if connection else None, amount, currency)


def external_net(connection: Connection, amount: Decimal, currency: str, rate: Decimal) -> Decimal:
    return amount - percentage_of(amount, rate, currency) - estimate_fee(connection.processor, connection,
                                                                          amount, currency)


def choose_connection(given: RoutingInput, *, unavailable: frozenset[int], check_fees: bool = True
                      ) -> Connection | None:
    """The preferred processor's usable connection, else the oldest other usable one. Usable: it
    can take the currency, its account is not failing, and its fees plus the commission do not
    exceed the amount (the route must never promise the barber a negative net)."""
    config = given.config
    usable = [
        c for c in given.connections
        if c.can_take(given.currency) and c.id not in unavailable
        and (not check_fees or external_net(c, given.amount, given.currency, config.commission_rate) >= 0)
    ]
    preferred = [c for c in usable if c.processor == config.preferred_processor]
    pool = preferred or usable
    return min(pool, key=lambda c: (c.connected_at, c.id)) if pool else None


def decide_route(given: RoutingInput) -> Route:
    config = given.config
    centralized = Route("centralized", "stripe", None, "")
    if not given.hybrid_enabled:
        return _with(centralized, "hybrid_payments_disabled")
    if config.payment_mode == "centralized":
        return _with(centralized, "mode_centralized")

    candidate = choose_connection(given, unavailable=given.unavailable_connections)

    def missing_reason() -> tuple[str, str]:
        if choose_connection(given, unavailable=frozenset()) is not None:
            return "processor_unavailable", "its account is failing"
        if choose_connection(given, unavailable=given.unavailable_connections, check_fees=False) is not None:
            return "external_fees_exceed_amount", "its fees and the commission exceed the amount"
        return "no_external_connection", "none active"

    def external_or_fallback(reason: str) -> Route:
        if candidate is not None:
            return Route("external", candidate.processor, candidate, reason)
        missing, why = missing_reason()
        if config.fallback_enabled:
            return Route("centralized", "stripe", None, missing, fallback_used=True)
        raise NoPaymentRoute(missing, f"no usable external connection for {given.currency} ({why}) "
                                      "and fallback is disabled")

    if config.payment_mode == "decentralized":
        return external_or_fallback("mode_decentralized")

    if given.currency != config.threshold_currency:
        # Amount rules are stated in another currency and there is no exchange rate here to
        # compare them: the payment goes where hybrid goes without rules.
        if candidate is not None:
            return Route("external", candidate.processor, candidate, "other_currency_prefers_external")
        return _with(centralized, "other_currency_without_external_connection")
    amount = given.amount
    if config.min_external_amount is not None and amount < config.min_external_amount:
        return _with(centralized, "below_min_external_amount")
    if config.max_platform_amount is not None and amount > config.max_platform_amount:
        if candidate is None:
            # Falling back would put more than max_platform_amount on the platform.
            raise NoPaymentRoute(
                "above_max_platform_amount",
                f"amount {amount} exceeds max_platform_amount {config.max_platform_amount} "
                "and no usable external connection exists",
            )
        return external_or_fallback("above_max_platform_amount")
    if config.split_threshold is not None:
        if amount >= config.split_threshold:
            return external_or_fallback("at_or_above_split_threshold")
        return _with(centralized, "below_split_threshold")
    # No split rule decides: hybrid prefers the barber's own processor when it can take the payment.
    if candidate is not None:
        return Route("external", candidate.processor, candidate, "hybrid_prefers_external")
    return _with(centralized, "hybrid_without_external_connection")


def price_route(route: Route, amount: Decimal, currency: str, commission_rate: Decimal) -> PricedRoute:
    commission = percentage_of(amount, commission_rate, currency)
    fee = estimate_fee(route.processor, route.connection, amount, currency)
    if route.payment_type == "centralized":
        net = amount - commission  # the platform pays Stripe's fee out of its application fee
    else:
        net = amount - commission - fee
    return PricedRoute(route, commission_rate, commission, fee, net)


def validate_rules(
    min_external_amount: Decimal | None, max_platform_amount: Decimal | None, split_threshold: Decimal | None
) -> str | None:
    """A config whose amount rules contradict each other; None when they are coherent."""
    if min_external_amount is not None and max_platform_amount is not None:
        if min_external_amount > max_platform_amount:
            return "min_external_amount: must not exceed max_platform_amount"
    if split_threshold is not None and min_external_amount is not None and split_threshold < min_external_amount:
        return "split_threshold: must not be below min_external_amount"
    return None


def _with(route: Route, reason: str) -> Route:
    return Route(route.payment_type, route.processor, route.connection, reason, route.fallback_used)
