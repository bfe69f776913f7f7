"""Tables of the `collections` schema (SQLAlchemy Core; the migrations are the source of truth)."""

import sqlalchemy as sa

from shared.db import PlatformTables

SCHEMA = "collections"
metadata = sa.MetaData(schema=SCHEMA)
# outbox, processed_events, idempotency_keys, dead_letters: the tables every service schema has.
platform = PlatformTables(metadata)
