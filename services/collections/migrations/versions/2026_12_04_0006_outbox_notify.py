"""collections: the outbox announces its commits (LISTEN/NOTIFY), so the relay is woken, not polling.

Revision ID: col0006
Revises: col0005
Create Date: 2026-12-04
"""

from alembic import op

from shared.migrations import create_outbox_notify_v3, drop_outbox_notify_v3

revision = "col0006"
down_revision = "col0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_notify_v3(op, "collections")


def downgrade() -> None:
    drop_outbox_notify_v3(op, "collections")
