"""router: what a fallback answered, per-row back-off for the sweeper, connection versions.

- `routing_decisions.fallback_reason` / `fallback_transaction_id`: why an external route was paid on
  the platform and which external attempt it replaced, so every answer about the route (a replay, a
  second `/process` of it) says it fell back, as the first one did.
- `next_check_at` / `check_failures` on payments and refunds: a sweep backs a row off on its own
  when its look-up fails, so a few unreachable ones never starve the others.
- `processor_connections.version`: the external service's version of the connection; the read model
  keeps the highest (a replica's clock no longer decides). Null for events from before versions.

Revision ID: rou0007
Revises: rou0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "rou0007"
down_revision = "rou0006"
branch_labels = None
depends_on = None

S = "router"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("routing_decisions", sa.Column("fallback_reason", sa.Text), schema=S)
    op.add_column("routing_decisions", sa.Column("fallback_transaction_id", UUID(as_uuid=True)), schema=S)
    for table in ("platform_payments", "platform_refunds"):
        op.add_column(table, sa.Column("next_check_at", TZ), schema=S)
        op.add_column(table, sa.Column("check_failures", sa.Integer, nullable=False, server_default="0"), schema=S)
    op.add_column("processor_connections", sa.Column("version", sa.Integer), schema=S)


def downgrade() -> None:
    op.drop_column("processor_connections", "version", schema=S)
    for table in ("platform_refunds", "platform_payments"):
        op.drop_column(table, "check_failures", schema=S)
        op.drop_column(table, "next_check_at", schema=S)
    op.drop_column("routing_decisions", "fallback_transaction_id", schema=S)
    op.drop_column("routing_decisions", "fallback_reason", schema=S)
