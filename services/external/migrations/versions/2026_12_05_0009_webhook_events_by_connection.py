"""external: the newest notice of a connection is found by index (the connections list shows each
connection's last webhook).

Revision ID: ext0009
Revises: ext0008
Create Date: 2026-12-05
"""

from alembic import op

revision = "ext0009"
down_revision = "ext0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("webhook_events_connection_received", "webhook_events", ["connection_id", "received_at"],
                    schema="external")


def downgrade() -> None:
    op.drop_index("webhook_events_connection_received", table_name="webhook_events", schema="external")
