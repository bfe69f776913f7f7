"""Tables of the `router` schema (SQLAlchemy Core; the migrations are the source of truth)."""

import sqlalchemy as sa

SCHEMA = "router"
metadata = sa.MetaData(schema=SCHEMA)
