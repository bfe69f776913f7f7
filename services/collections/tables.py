"""Tables of the `collections` schema (SQLAlchemy Core; the migrations are the source of truth)."""

import sqlalchemy as sa

SCHEMA = "collections"
metadata = sa.MetaData(schema=SCHEMA)
