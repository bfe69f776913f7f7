"""Tables of the `analytics` schema (SQLAlchemy Core; the migrations are the source of truth)."""

import sqlalchemy as sa

SCHEMA = "analytics"
metadata = sa.MetaData(schema=SCHEMA)
