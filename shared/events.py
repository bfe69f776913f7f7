"""Event envelope, subjects, and the JetStream stream every service publishes to.

An event on the wire is JSON: `{"event_id", "event_type", "version", "occurred_at", "payload"}`.
The subject is the event type (`transaction.recorded`), behind an optional per-run prefix.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

log = structlog.get_logger("events")

# Subject families of the PAYMENTS stream (contract, "Events").
STREAM_SUBJECT_FAMILIES = ("transaction", "collection", "connection", "config")
DUPLICATE_WINDOW_SECONDS = 120.0


class Event(msgspec.Struct, frozen=True, kw_only=True):
    event_id: uuid.UUID
    event_type: str
    version: int
    occurred_at: datetime
    payload: dict[str, Any]


def new_event(event_type: str, payload: dict[str, Any], *, version: int = 1, now: datetime | None = None) -> Event:
    if event_type.split(".", 1)[0] not in STREAM_SUBJECT_FAMILIES:
        raise ValueError(f"event type {event_type!r} is outside the PAYMENTS stream's subjects")
    return Event(
        event_id=uuid.uuid4(),
        event_type=event_type,
        version=version,
        occurred_at=now or datetime.now(UTC),
        payload=payload,
    )


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    return _decoder.decode(data)


def stream_subjects(prefix: str) -> list[str]:
    return [f"{prefix}{family}.>" for family in STREAM_SUBJECT_FAMILIES]


async def ensure_stream(js: JetStreamContext, name: str, prefix: str) -> None:
    """Create the stream if absent (or widen its subjects); safe to race from every service."""
    config = StreamConfig(
        name=name,
        subjects=stream_subjects(prefix),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
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
