"""external: the outbox announces its commits (LISTEN/NOTIFY), so the relay is woken, not polling.

Revision ID: ext0006
Revises: ext0005
Create Date: 2026-12-04
"""

from alembic import op

from shared.migrations import create_outbox_notify_v3, drop_outbox_notify_v3

revision = "ext0006"
down_revision = "ext0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_notify_v3(op, "external")


def downgrade() -> None:
    drop_outbox_notify_v3(op, "external")
