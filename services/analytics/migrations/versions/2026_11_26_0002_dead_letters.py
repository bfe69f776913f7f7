"""analytics: dead letters (events a consumer could not apply, kept for an operator to replay).

Revision ID: ana0002
Revises: ana0001
Create Date: 2026-11-26
"""

from alembic import op

from shared.migrations import create_dead_letters_v2, drop_dead_letters_v2

revision = "ana0002"
down_revision = "ana0001"
branch_labels = None
depends_on = None

SCHEMA = "analytics"


def upgrade() -> None:
    create_dead_letters_v2(op, SCHEMA)


def downgrade() -> None:
    drop_dead_letters_v2(op, SCHEMA)
