"""Events: the envelope, one typed payload per event type of the contract, and the JetStream
stream every service publishes to.

An event on the wire is JSON: `{"event_id", "event_type", "version", "occurred_at", "payload"}`.
The subject is the event type (`transaction.recorded`), behind an optional per-run prefix.
Producers emit the typed payloads below and consumers decode them with the same types, so a field
missing or misspelled fails at the producer's test, not in another service. A field added later
must have a default: events written before it (still in the stream, or replayed) must decode. Money travels as
decimal strings with exactly the currency's decimals ("50.00"), rates as decimal strings.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared.money import MoneyError, format_rate, minor_unit, normalise_currency

log = structlog.get_logger("events")

# Subject families of the PAYMENTS stream (contract, "Events").
STREAM_SUBJECT_FAMILIES = ("transaction", "collection", "connection", "config")
DUPLICATE_WINDOW_SECONDS = 120.0

Processor = Literal["stripe", "square", "paypal"]
PaymentType = Literal["centralized", "external"]
TransactionStatus = Literal["pending", "completed", "failed", "refunded", "partially_refunded", "canceled"]


# ---- typed payloads ------------------------------------------------------------------------------

class EventPayload(msgspec.Struct, kw_only=True):
    """Base of every payload; `event_type` and `version` name it on the wire."""

    event_type: ClassVar[str]
    version: ClassVar[int] = 1
    money_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        currency = getattr(self, "currency", None)
        if currency is None or not self.money_fields:
            return
        try:
            self.currency = normalise_currency(currency)
        except MoneyError as exc:
            raise ValueError(f"currency: {exc}") from None
        quantum = minor_unit(self.currency)
        for name in self.money_fields:
            value = getattr(self, name)
            if value is None:
                continue
            exact = value.quantize(quantum)
            if exact != value:  # a producer bug: never round silently on the way out
                raise ValueError(f"{name}: {value} has more decimals than {self.currency} allows")
            setattr(self, name, exact)


class TransactionRecorded(EventPayload):
    """A payment (centralized or external) was recorded or changed state."""

    event_type: ClassVar[str] = "transaction.recorded"
    money_fields: ClassVar[tuple[str, ...]] = (
        "amount", "refunded_amount", "commission_amount", "processor_fee", "refund_amount")

    transaction_id: str
    barber_id: int
    appointment_id: int | None
    client_id: int | None
    payment_type: PaymentType
    processor: Processor
    connection_id: int | None
    external_transaction_id: str | None
    amount: Decimal
    refunded_amount: Decimal
    currency: str
    status: TransactionStatus
    commission_rate: Decimal
    commission_amount: Decimal
    processor_fee: Decimal
    processed_at: datetime
    # Per transaction, grows with each state change: consumers keep the highest they have seen.
    sequence: int
    source: Literal["live", "legacy"] = "live"
    failure_code: str | None = None
    refund_amount: Decimal | None = None  # on refund events: what this change refunded (negative: a refund that had succeeded failed later)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.commission_rate = Decimal(format_rate(self.commission_rate))


# Legacy payments per `transaction.imported` event (the contract's bound).
IMPORTED_PER_EVENT = 500


class TransactionImported(EventPayload):
    """Up to 500 imported legacy payments in one event, each as its `transaction.recorded` payload
    (source `legacy`): the bulk import's own subject, applied by consumers as one batch. One event
    per payment made the legacy import's event pipeline the bottleneck (tests/load/README.md)."""

    event_type: ClassVar[str] = "transaction.imported"

    transactions: Annotated[list[TransactionRecorded], msgspec.Meta(min_length=1, max_length=IMPORTED_PER_EVENT)]


class ProcessingFees(msgspec.Struct, kw_only=True):
    percent: Decimal
    fixed: Decimal = Decimal(0)


class ConnectionChanged(EventPayload):
    """A barber's processor connection was created or changed; `status` says whether it is usable."""

    event_type: ClassVar[str] = "connection.changed"

    connection_id: int
    barber_id: int
    processor: Processor
    account_id: str
    status: str
    default_currency: str
    supports_payments: bool
    supports_refunds: bool
    processing_fees: ProcessingFees | None = None
    # The connection row's version: a reader keeps the highest (clocks of replicas may disagree).
    connection_version: int | None = None


class ConfigChanged(EventPayload):
    """A barber's whole payment config after a change."""

    event_type: ClassVar[str] = "config.changed"

    barber_id: int
    payment_mode: Literal["centralized", "decentralized", "hybrid"]
    preferred_processor: Processor | None
    fallback_enabled: bool
    min_external_amount: str | None
    max_platform_amount: str | None
    split_threshold: str | None
    commission_rate: str
    commission_collection_frequency: Literal["daily", "weekly", "monthly"]
    auto_collection_enabled: bool
    webhook_notifications: bool
    email_notifications: bool
    analytics_enabled: bool
    connect_account_id: str | None
    version: int
    updated_at: datetime | None = None
    # Fields added after the first version carry a default, so events already in the stream (and
    # producers not yet upgraded) still decode: a consumer must never dead-letter old news.
    threshold_currency: str = "USD"


class CollectionDue(EventPayload):
    event_type: ClassVar[str] = "collection.due"
    money_fields: ClassVar[tuple[str, ...]] = ("amount",)

    collection_id: str
    barber_id: int
    amount: Decimal
    currency: str
    transaction_ids: list[str]
    due_date: date
    attempt: int


class CollectionSettled(EventPayload):
    event_type: ClassVar[str] = "collection.settled"
    money_fields: ClassVar[tuple[str, ...]] = ("amount",)

    collection_id: str
    barber_id: int
    amount: Decimal
    currency: str
    status: Literal["collected", "failed", "overdue"]
    failed_reason: str | None = None


PAYLOAD_TYPES: dict[str, type[EventPayload]] = {
    t.event_type: t for t in (TransactionRecorded, ConnectionChanged, ConfigChanged, CollectionDue, CollectionSettled)
}
P = TypeVar("P", bound=EventPayload)


# ---- the envelope ----------------------------------------------------------------------------------

class Event(msgspec.Struct, frozen=True, kw_only=True):
    event_id: uuid.UUID
    event_type: str
    version: int
    occurred_at: datetime
    # Kept as the exact JSON bytes, so a typed decode reads numbers straight into Decimal.
    payload: msgspec.Raw

    def decode(self, payload_type: type[P]) -> P:
        """The payload as its contract type (raises msgspec.ValidationError when it is not one)."""
        if payload_type.event_type != self.event_type:
            raise msgspec.ValidationError(f"a {self.event_type} event is not a {payload_type.event_type}")
        return msgspec.json.decode(self.payload, type=payload_type)

    def data(self) -> dict[str, Any]:
        """The payload as plain JSON values (logs, tests, untyped peeks)."""
        return msgspec.json.decode(self.payload)


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(Event)


def new_event(
    payload: EventPayload | str, data: dict[str, Any] | None = None, *, version: int | None = None,
    now: datetime | None = None,
) -> Event:
    """An event for a typed payload; `new_event("type", {...})` builds an untyped one (tests, tools)."""
    if isinstance(payload, EventPayload):
        event_type, body, version = payload.event_type, _encoder.encode(payload), version or payload.version
    else:
        event_type, body, version = payload, _encoder.encode(data or {}), version or 1
    if event_type.split(".", 1)[0] not in STREAM_SUBJECT_FAMILIES:
        raise ValueError(f"event type {event_type!r} is outside the PAYMENTS stream's subjects")
    return Event(event_id=uuid.uuid4(), event_type=event_type, version=version,
                 occurred_at=now or datetime.now(UTC), payload=msgspec.Raw(body))


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    return _decoder.decode(data)


def stream_subjects(prefix: str) -> list[str]:
    return [f"{prefix}{family}.>" for family in STREAM_SUBJECT_FAMILIES]


async def ensure_stream(js: JetStreamContext, name: str, prefix: str, replicas: int = 1) -> None:
    """Create the stream if absent (or widen its subjects); safe to race from every service.
    `replicas` is its copies in a NATS cluster (EVENT_STREAM_REPLICAS; 3 on a 3-node cluster), used
    when creating it; an existing stream keeps its own (change it with `nats stream edit`)."""
    config = StreamConfig(
        name=name,
        subjects=stream_subjects(prefix),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
    )
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("stream_created", stream=name, subjects=config.subjects)
            return
        except Exception:  # another service created it between our two calls
            info = await js.stream_info(name)
    have = set(info.config.subjects or [])
    if not set(config.subjects or []) <= have or (info.config.duplicate_window or 0) < DUPLICATE_WINDOW_SECONDS:
        info.config.subjects = sorted(have | set(config.subjects or []))
        info.config.duplicate_window = max(info.config.duplicate_window or 0, DUPLICATE_WINDOW_SECONDS)
        await js.update_stream(info.config)
