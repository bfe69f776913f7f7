"""Alembic environment of the external service (its own schema and version table)."""

from alembic import context

from services.external.tables import SCHEMA, metadata
from shared.migrations import run_env

run_env(context, schema=SCHEMA, target_metadata=metadata)
