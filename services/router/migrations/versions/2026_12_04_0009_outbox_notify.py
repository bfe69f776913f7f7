"""router: the outbox announces its commits (LISTEN/NOTIFY), so the relay is woken, not polling.

Revision ID: rou0009
Revises: rou0008
Create Date: 2026-12-04
"""

from alembic import op

from shared.migrations import create_outbox_notify_v3, drop_outbox_notify_v3

revision = "rou0009"
down_revision = "rou0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_notify_v3(op, "router")


def downgrade() -> None:
    drop_outbox_notify_v3(op, "router")
