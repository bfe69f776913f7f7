"""router: dead letters (events a consumer could not apply, kept for an operator to replay).

Revision ID: rou0003
Revises: rou0002
Create Date: 2026-11-26
"""

from alembic import op

from shared.migrations import create_dead_letters_v2, drop_dead_letters_v2

revision = "rou0003"
down_revision = "rou0002"
branch_labels = None
depends_on = None

SCHEMA = "router"


def upgrade() -> None:
    create_dead_letters_v2(op, SCHEMA)


def downgrade() -> None:
    drop_dead_letters_v2(op, SCHEMA)
