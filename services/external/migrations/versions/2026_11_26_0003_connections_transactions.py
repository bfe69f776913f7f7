"""external: processor connections, external transactions and refunds, webhook events, rates.

The seed's columns are all here under their names; money is `numeric(18,4)` and rates
`numeric(6,5)` (the seed's `DECIMAL(10,2)`/`DECIMAL(5,2)` cannot hold three-decimal currencies or a
rate of 0.125). The database guards the money: amounts positive, refunds never above their payment,
one row per processor transaction id, one processor event applied once, one live attempt per route.

Revision ID: ext0003
Revises: ext0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "ext0003"
down_revision = "ext0002"
branch_labels = None
depends_on = None

S = "external"
MONEY = sa.Numeric(18, 4)
RATE = sa.Numeric(6, 5)
TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")
PROCESSORS = "('stripe', 'square', 'paypal')"
TX_STATUSES = "('pending', 'completed', 'failed', 'refunded', 'partially_refunded', 'canceled')"


def upgrade() -> None:
    op.create_table(
        "payment_processor_connections",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("processor_type", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("account_name", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("status_reason", sa.Text),
        sa.Column("connection_data", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("credentials", sa.Text, nullable=False),
        sa.Column("webhook_url", sa.Text),
        sa.Column("webhook_secret", sa.Text),
        sa.Column("webhook_endpoint_id", sa.Text),
        sa.Column("supports_payments", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("supports_refunds", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("supports_recurring", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("default_currency", sa.Text, nullable=False, server_default="USD"),
        sa.Column("processing_fees", JSONB),
        sa.Column("last_sync_at", TZ),
        sa.Column("last_transaction_at", TZ),
        sa.Column("total_transactions", sa.Integer, nullable=False, server_default="0"),
        sa.Column("total_volume", MONEY, nullable=False, server_default="0"),
        sa.Column("published_status", sa.Text),
        sa.Column("connected_at", TZ, nullable=False, server_default=NOW),
        sa.Column("disconnected_at", TZ),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.UniqueConstraint("barber_id", "processor_type", "account_id", name="connections_one_per_account"),
        sa.CheckConstraint(f"processor_type in {PROCESSORS}", name="connection_processor"),
        sa.CheckConstraint("status in ('pending', 'active', 'error', 'disconnected')", name="connection_status"),
        sa.CheckConstraint("default_currency ~ '^[A-Z]{3}$'", name="connection_currency"),
        sa.CheckConstraint("total_transactions >= 0 and total_volume >= 0", name="connection_totals"),
        sa.CheckConstraint("barber_id > 0", name="connection_barber"),
        schema=S,
    )
    op.create_index("connections_barber", "payment_processor_connections", ["barber_id"], schema=S)
    op.create_table(
        "external_transactions",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("connection_id", sa.Integer, sa.ForeignKey(f"{S}.payment_processor_connections.id"),
                  nullable=False),
        sa.Column("processor_type", sa.Text, nullable=False),
        sa.Column("external_transaction_id", sa.Text),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("refunded_amount", MONEY, nullable=False, server_default="0"),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("appointment_id", sa.BigInteger),
        sa.Column("client_id", sa.BigInteger),
        sa.Column("route_id", UUID(as_uuid=True)),
        sa.Column("external_customer_id", sa.Text),
        sa.Column("external_metadata", JSONB),
        sa.Column("processor_fees", MONEY, nullable=False, server_default="0"),
        sa.Column("commission_rate", RATE, nullable=False),
        sa.Column("commission_amount", MONEY, nullable=False),
        sa.Column("payment_method", sa.Text),
        sa.Column("processor_idempotency_key", sa.Text, unique=True),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("failure_code", sa.Text),
        sa.Column("failure_reason", sa.Text),
        sa.Column("reconciled_at", TZ),
        sa.Column("reconciliation_status", sa.Text),
        sa.Column("processed_at", TZ),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.CheckConstraint("amount > 0", name="tx_amount"),
        sa.CheckConstraint("refunded_amount >= 0 and refunded_amount <= amount", name="tx_refunded"),
        sa.CheckConstraint("processor_fees >= 0", name="tx_fee"),
        sa.CheckConstraint("commission_rate >= 0 and commission_rate <= 1", name="tx_rate"),
        sa.CheckConstraint("commission_amount >= 0 and commission_amount <= amount", name="tx_commission"),
        sa.CheckConstraint(f"status in {TX_STATUSES}", name="tx_status"),
        sa.CheckConstraint(f"processor_type in {PROCESSORS}", name="tx_processor"),
        sa.CheckConstraint("origin in ('api', 'webhook', 'reconciliation')", name="tx_origin"),
        sa.CheckConstraint("reconciliation_status is null or reconciliation_status in "
                           "('matched', 'mismatch', 'missing_local')", name="tx_reconciliation"),
        sa.CheckConstraint("status = 'pending' or external_transaction_id is not null or status = 'failed'",
                           name="tx_settled_has_id"),
        schema=S,
    )
    op.create_index("external_transactions_processor_id", "external_transactions",
                    ["processor_type", "external_transaction_id"], unique=True, schema=S,
                    postgresql_where=sa.text("external_transaction_id IS NOT NULL"))
    op.create_index("external_transactions_one_live_per_route", "external_transactions", ["route_id"],
                    unique=True, schema=S,
                    postgresql_where=sa.text("route_id IS NOT NULL AND status NOT IN ('failed', 'canceled')"))
    op.create_index("external_transactions_barber", "external_transactions", ["barber_id", "created_at"], schema=S)
    op.create_index("external_transactions_created", "external_transactions", ["created_at", "id"], schema=S)
    op.create_index("external_transactions_pending", "external_transactions", ["updated_at"], schema=S,
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_table(
        "external_refunds",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("transaction_id", UUID(as_uuid=True), sa.ForeignKey(f"{S}.external_transactions.id")),
        sa.Column("processor_type", sa.Text, nullable=False),
        sa.Column("processor_payment_id", sa.Text),
        sa.Column("processor_refund_id", sa.Text),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("processor_idempotency_key", sa.Text, unique=True),
        sa.Column("failure_reason", sa.Text),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint("amount > 0", name="refund_amount"),
        sa.CheckConstraint("status in ('pending', 'succeeded', 'failed')", name="refund_status"),
        sa.CheckConstraint("transaction_id is not null or processor_payment_id is not null", name="refund_owner"),
        schema=S,
    )
    op.create_index("external_refunds_processor_id", "external_refunds", ["processor_type", "processor_refund_id"],
                    unique=True, schema=S, postgresql_where=sa.text("processor_refund_id IS NOT NULL"))
    op.create_index("external_refunds_transaction", "external_refunds", ["transaction_id"], schema=S)
    op.create_index("external_refunds_orphans", "external_refunds", ["processor_type", "processor_payment_id"],
                    schema=S, postgresql_where=sa.text("transaction_id IS NULL"))
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("processor_type", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("connection_id", sa.Integer, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("understood", sa.Boolean, nullable=False),
        sa.Column("received_at", TZ, nullable=False, server_default=NOW),
        sa.UniqueConstraint("processor_type", "event_id", name="webhook_events_once"),
        schema=S,
    )
    op.create_table(
        "barber_rates",
        sa.Column("barber_id", sa.Integer, primary_key=True),
        sa.Column("commission_rate", RATE, nullable=False),
        sa.Column("config_version", sa.Integer, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint("commission_rate >= 0 and commission_rate <= 1", name="barber_rate_range"),
        schema=S,
    )


def downgrade() -> None:
    for table in ("barber_rates", "webhook_events", "external_refunds", "external_transactions",
                  "payment_processor_connections"):
        op.drop_table(table, schema=S)
