"""collections: per-row back-off for the sweeper of collection attempts.

A sweep looks each attempt up at Stripe (by the id Stripe gave it, else by our reference); one whose
look-up fails waits `next_check_at` (doubling per failure, capped) instead of being taken first
again at every sweep, so a few unreachable ones never starve the others.

Revision ID: col0004
Revises: col0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "col0004"
down_revision = "col0003"
branch_labels = None
depends_on = None

S = "collections"


def upgrade() -> None:
    op.add_column("collection_attempts", sa.Column("next_check_at", sa.DateTime(timezone=True)), schema=S)
    op.add_column("collection_attempts", sa.Column("check_failures", sa.Integer, nullable=False, server_default="0"),
                  schema=S)


def downgrade() -> None:
    op.drop_column("collection_attempts", "check_failures", schema=S)
    op.drop_column("collection_attempts", "next_check_at", schema=S)
