"""Alembic environment of the router service (its own schema and version table)."""

from alembic import context

from services.router.tables import SCHEMA, metadata
from shared.migrations import run_env

run_env(context, schema=SCHEMA, target_metadata=metadata)
