"""The one processor interface: what every adapter (Stripe, Square, PayPal) speaks.

Requests and results carry exact `Decimal` money in the payment's currency and neutral fields
(`platform_fee`, `destination`, `reference`); each adapter converts to its processor's units and
maps its statuses exhaustively in its own `transformers` module. Callers handle every processor
alike through `PaymentProcessor` and the errors below.

Two failure kinds must never be confused, because money depends on it:
- `ProcessorUnavailable`: the processor surely did nothing (connection refused, rate limited).
- `OutcomeUnknown` (and its `ProcessorTimeout`): the request may have been processed; settle it by
  looking the payment up (by its id, or by our reference), never by assuming.

A webhook is a notice, not a fact: `parse_webhook` says which object changed, never what it now
is. Whoever holds the signing secret can sign any body (a barber holds its own), so the object is
fetched from the processor and what the processor says is applied (`shared.attempts` and the
external service's webhooks do so).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

from shared.observability import PROCESSOR_LATENCY

ProcessorName = Literal["stripe", "square", "paypal"]
PROCESSOR_NAMES: tuple[ProcessorName, ...] = ("stripe", "square", "paypal")
PaymentStatus = Literal["pending", "completed", "failed", "canceled"]
RefundStatus = Literal["pending", "succeeded", "failed"]


class Secret:
    """A credential: `repr`/`str` are masked so it cannot leak into logs, errors or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def hint(self) -> str:
        return f"…{self._value[-4:]}" if len(self._value) > 8 else "…"

    def __repr__(self) -> str:
        return f"Secret({self.hint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# ---- requests and results ----------------------------------------------------------------------

@dataclass(frozen=True)
class PaymentRequest:
    amount: Decimal
    currency: str
    payment_method: str  # the processor's token: a Stripe PaymentMethod, a Square nonce, a PayPal order
    idempotency_key: str  # derived from a stored attempt, so a retry sends the same one
    reference: str  # our id for the attempt, stored with the processor so it can be found again
    platform_fee: Decimal | None = None  # kept by the platform (Stripe: application_fee_amount)
    destination: str | None = None  # where the rest goes (Stripe: transfer_data[destination])
    off_session: bool = False  # the payer is not present (collections charging a saved method)
    customer: str | None = None
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PaymentResult:
    processor_payment_id: str
    status: PaymentStatus
    amount: Decimal
    currency: str
    created_at: datetime | None  # the processor's own time for it; None when it gave none (never 1970)
    reference: str | None = None
    charge_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class RefundRequest:
    processor_payment_id: str
    amount: Decimal
    currency: str
    idempotency_key: str
    reference: str  # our refund id
    reverse_platform_fee: bool = False  # destination charges: reverse the transfer and the fee too


@dataclass(frozen=True)
class RefundResult:
    processor_refund_id: str
    processor_payment_id: str
    status: RefundStatus
    amount: Decimal
    currency: str
    reference: str | None = None
    failure_reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class AccountInfo:
    account_id: str
    default_currency: str | None = None


@dataclass(frozen=True)
class WebhookRegistration:
    endpoint_id: str
    secret: Secret  # Stripe signing secret, Square signature key, PayPal webhook id


@dataclass(frozen=True)
class WebhookEvent:
    """A verified processor notification: which object it is about, never what that object now is
    (the body is only a claim; fetch the object and apply what the processor says)."""

    event_id: str
    event_type: str
    occurred_at: datetime | None  # when the processor says the event happened (None: it did not say)
    payment_id: str | None = None  # a payment changed: `retrieve_payment` it
    refund_id: str | None = None  # a refund changed: `retrieve_refund` it
    refunds_of_payment: bool = False  # the payment's refunds changed (Stripe `charge.refunded`): list them

    @property
    def understood(self) -> bool:
        """False for event types we do not act on (answered 200 and ignored)."""
        return self.payment_id is not None or self.refund_id is not None


# ---- errors ------------------------------------------------------------------------------------

class ProcessorError(Exception):
    """A processor call did not succeed; subclasses say how."""

    def __init__(self, message: str, *, code: str | None = None, raw: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.raw = raw or {}


class PaymentDeclined(ProcessorError):
    """The processor refused the payment (card declined, insufficient funds, ...): it is final."""

    def __init__(self, message: str, *, code: str | None = None, processor_payment_id: str | None = None,
                 raw: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code, raw=raw)
        self.processor_payment_id = processor_payment_id


class OutcomeUnknown(ProcessorError):
    """The request may have reached the processor and been processed (the connection dropped after
    sending, or the processor answered 5xx mid-way). Retry with the same key, or look it up."""


class ProcessorTimeout(OutcomeUnknown):
    """No answer in time: the outcome is unknown."""


class ProcessorUnavailable(ProcessorError):
    """The processor surely did nothing: the connection was refused, or it declined to start
    (rate limited). Safe to try elsewhere."""


class InvalidCredentials(ProcessorError):
    """The processor refused the credentials."""


class ProcessorRequestError(ProcessorError):
    """The processor refused the request itself (a 4xx other than a decline): our bug or bad input."""


class NotFound(ProcessorRequestError):
    """The processor has no such object (a 404 on a lookup): a notice naming it was not the processor's."""


class InvalidSignature(ProcessorError):
    """A webhook's signature is missing, forged or too old."""


# ---- response times ----------------------------------------------------------------------------

# How a call ended, for `processor_request_duration_seconds{outcome}`; the first match wins.
_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (PaymentDeclined, "declined"), (ProcessorTimeout, "timeout"), (OutcomeUnknown, "unknown"),
    (ProcessorUnavailable, "unavailable"), (InvalidCredentials, "credentials"), (NotFound, "not_found"),
    (ProcessorError, "rejected"),
)


@contextmanager
def timed(processor: ProcessorName, operation: str) -> Iterator[None]:
    """Observe one call to a processor: each adapter's request helper runs every call inside this.
    `operation` is a fixed name (never an id or a URL), so the label set stays small."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except BaseException as exc:
        outcome = next((name for kind, name in _OUTCOMES if isinstance(exc, kind)), "error")
        raise
    finally:
        PROCESSOR_LATENCY.labels(processor, operation, outcome).observe(time.perf_counter() - started)


# ---- the interface -----------------------------------------------------------------------------

@runtime_checkable
class PaymentProcessor(Protocol):
    """One account at one processor (the platform's, or a barber's own)."""

    name: ProcessorName

    async def check_credentials(self) -> AccountInfo:
        """Raises `InvalidCredentials` when the processor refuses them."""
        ...

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        """Charge; raises `PaymentDeclined` on a decline."""
        ...

    async def retrieve_payment(self, processor_payment_id: str) -> PaymentResult:
        """Raises `NotFound` when the processor has no such payment on this account."""
        ...

    async def refund(self, request: RefundRequest) -> RefundResult: ...

    async def retrieve_refund(self, processor_refund_id: str) -> RefundResult:
        """Raises `NotFound` when the processor has no such refund on this account."""
        ...

    async def list_refunds(self, processor_payment_id: str) -> list[RefundResult]: ...

    async def list_payments(self, since: datetime, until: datetime) -> list[PaymentResult]:
        """Payments created in [since, until) (reconciliation, and finding a lost attempt)."""
        ...

    async def list_refunds_between(self, since: datetime, until: datetime) -> list[RefundResult]:
        """Refunds created in [since, until), of any payment (reconciliation of refunded amounts)."""
        ...

    async def register_webhook(self, url: str) -> WebhookRegistration:
        """Register our endpoint with the processor; the registration carries its signing secret."""
        ...

    async def verify_webhook(self, body: bytes, headers: Mapping[str, str], *, secret: Secret,
                             url: str) -> None:
        """Raise `InvalidSignature` unless the processor signed exactly these bytes."""
        ...

    def parse_webhook(self, body: bytes) -> WebhookEvent: ...

    async def close(self) -> None: ...


@runtime_checkable
class PlatformProcessor(PaymentProcessor, Protocol):
    """The platform's own Stripe account, which can also debit a connected account's balance (how
    collections takes commission from a barber with no card on file)."""

    async def debit_connected_account(self, request: PaymentRequest) -> PaymentResult:
        """`request.payment_method` is the connected account (`acct_...`) to debit."""
        ...

    async def retrieve_debit(self, processor_debit_id: str) -> PaymentResult: ...

    async def list_debits(self, since: datetime, until: datetime) -> list[PaymentResult]:
        """Debits of connected accounts created in [since, until)."""
        ...


def listing_lag(processor: object) -> timedelta:
    """How long after a payment the processor's listing may still miss it (PayPal's Transaction
    Search lags by hours; Stripe's and Square's lists are current). A sweeper that does not find an
    attempt must not call it failed before this has passed: the processor may have charged it."""
    return getattr(processor, "LISTING_LAG", timedelta(0))


def key_lifetime(processor: object) -> timedelta:
    """How long the processor is sure to keep an idempotency key (Stripe: at least 24 hours). A
    request re-sent with its key inside this time is answered with the first outcome; after it,
    the same key may make a second payment, so an attempt that old is looked up, never re-sent."""
    return getattr(processor, "IDEMPOTENCY_KEY_LIFETIME", timedelta(hours=24))


async def find_payment(processor: PaymentProcessor, reference: str, *, since: datetime,
                       until: datetime) -> PaymentResult | None:
    """The payment we created under `reference` in [since, until), if the processor has it."""
    return next((p for p in await processor.list_payments(since, until) if p.reference == reference), None)


async def find_debit(processor: PlatformProcessor, reference: str, *, since: datetime,
                     until: datetime) -> PaymentResult | None:
    """The connected-account debit we created under `reference` in [since, until), if any."""
    return next((d for d in await processor.list_debits(since, until) if d.reference == reference), None)


async def find_refund(processor: PaymentProcessor, request: RefundRequest) -> RefundResult | None:
    """The refund we asked for with `request`, if the processor has it: of that payment, under our
    reference, for that amount and currency. The reference travels in a field whoever holds the
    account can write (a 0.01 refund bearing it is theirs, not our 70.00)."""
    currency = request.currency.upper()
    return next((r for r in await processor.list_refunds(request.processor_payment_id)
                 if r.reference == request.reference and r.amount == request.amount and r.currency == currency),
                None)
