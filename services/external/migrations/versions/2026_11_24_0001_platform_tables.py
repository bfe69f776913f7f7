"""external: platform tables (outbox, processed events, idempotency keys).

Revision ID: ext0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

from shared.migrations import create_platform_tables_v1, drop_platform_tables_v1

revision = "ext0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "external"


def upgrade() -> None:
    create_platform_tables_v1(op, SCHEMA)


def downgrade() -> None:
    drop_platform_tables_v1(op, SCHEMA)
