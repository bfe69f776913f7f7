"""Tables of the `external` schema (SQLAlchemy Core; the migrations are the source of truth)."""

import sqlalchemy as sa

SCHEMA = "external"
metadata = sa.MetaData(schema=SCHEMA)
