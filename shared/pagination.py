"""Keyset pagination for every list: `?limit=` (default 50, max 500) and an opaque `?cursor=`;
answers `{"items": [...], "next_cursor": "..." | null}`.

The cursor is the sort key of the last item returned (newest first: `created_at`, then id), so
pages stay stable while rows are added, and a page costs an index range scan, not an OFFSET.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec
import sqlalchemy as sa

from shared.errors import validation_error

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], kw_only=True):
    items: list[T]
    next_cursor: str | None


class _Key(msgspec.Struct, array_like=True):
    created_at: datetime
    id: str


def encode_cursor(created_at: datetime, row_id: object) -> str:
    raw = msgspec.json.encode(_Key(created_at, str(row_id)))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = msgspec.json.decode(raw, type=_Key)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise validation_error("cursor", "not a cursor this list gave out") from None
    if key.created_at.tzinfo is None:
        raise validation_error("cursor", "not a cursor this list gave out")
    return key.created_at, key.id


def after_cursor(created_at: sa.ColumnElement, row_id: sa.ColumnElement, cursor: str | None,
                 id_type: type = str) -> sa.ColumnElement[bool] | None:
    """The WHERE clause for rows after `cursor` in (created_at DESC, id DESC) order."""
    if cursor is None:
        return None
    when, last_id = decode_cursor(cursor)
    try:
        typed_id: Any = id_type(last_id)
    except ValueError:
        raise validation_error("cursor", "not a cursor this list gave out") from None
    return sa.tuple_(created_at, row_id) < sa.tuple_(sa.literal(when), sa.literal(typed_id))


def time_filter(name: str, value: str | None) -> datetime | None:
    """A `from`/`to` query value: an ISO 8601 time with a zone (a date alone means its UTC midnight)."""
    if value is None:
        return None
    if len(value) > 40:  # checked here, not by the parameter's own limit, so the answer names `from`/`to`
        raise validation_error(name, "an ISO 8601 time is at most 40 characters")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise validation_error(name, f"{value!r} is not an ISO 8601 time (e.g. 2026-11-01T00:00:00Z)") from None
    if len(value) == 10:  # a date: midnight UTC
        return parsed.replace(tzinfo=UTC)
    if parsed.tzinfo is None:
        raise validation_error(name, "give a time zone (e.g. 2026-11-01T00:00:00Z)")
    return parsed


def page_of(rows: list[Any], limit: int, key) -> tuple[list[Any], str | None]:
    """Split the `limit + 1` rows a query fetched into this page and the next cursor."""
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    created_at, row_id = key(page[-1])
    return page, encode_cursor(created_at, row_id)
