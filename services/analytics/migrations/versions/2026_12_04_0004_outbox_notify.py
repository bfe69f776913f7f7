"""analytics: the outbox announces its commits (LISTEN/NOTIFY), so the relay is woken, not polling.

Revision ID: ana0004
Revises: ana0003
Create Date: 2026-12-04
"""

from alembic import op

from shared.migrations import create_outbox_notify_v3, drop_outbox_notify_v3

revision = "ana0004"
down_revision = "ana0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_notify_v3(op, "analytics")


def downgrade() -> None:
    drop_outbox_notify_v3(op, "analytics")
