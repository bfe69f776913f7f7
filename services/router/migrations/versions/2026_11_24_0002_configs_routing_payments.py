"""router: barber payment configs, processor read model, routing decisions, platform payments.

The database guards the money: CHECK constraints on amounts, rates and enums, one config per
barber, one refund total never above its payment, unique processor idempotency keys.

Revision ID: rou0002
Revises: rou0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "rou0002"
down_revision = "rou0001"
branch_labels = None
depends_on = None

S = "router"
MONEY = sa.Numeric(18, 4)
RATE = sa.Numeric(6, 5)
TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")
PROCESSORS = "('stripe', 'square', 'paypal')"


def upgrade() -> None:
    op.create_table(
        "hybrid_payment_configs",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("barber_id", sa.Integer, nullable=False, unique=True),
        sa.Column("payment_mode", sa.Text, nullable=False, server_default="centralized"),
        sa.Column("preferred_processor", sa.Text),
        sa.Column("fallback_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("min_external_amount", MONEY),
        sa.Column("max_platform_amount", MONEY),
        sa.Column("split_threshold", MONEY),
        sa.Column("commission_rate", RATE, nullable=False),
        sa.Column("commission_collection_frequency", sa.Text, nullable=False, server_default="weekly"),
        sa.Column("auto_collection_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("webhook_notifications", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("email_notifications", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("analytics_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("connect_account_id", sa.Text),
        sa.Column("effective_from", TZ, nullable=False, server_default=NOW),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.CheckConstraint("payment_mode in ('centralized', 'decentralized', 'hybrid')", name="config_mode"),
        sa.CheckConstraint(f"preferred_processor is null or preferred_processor in {PROCESSORS}",
                           name="config_processor"),
        sa.CheckConstraint("commission_rate >= 0 and commission_rate <= 1", name="config_rate"),
        sa.CheckConstraint("commission_collection_frequency in ('daily', 'weekly', 'monthly')",
                           name="config_frequency"),
        sa.CheckConstraint("min_external_amount is null or min_external_amount > 0", name="config_min_positive"),
        sa.CheckConstraint("max_platform_amount is null or max_platform_amount > 0", name="config_max_positive"),
        sa.CheckConstraint("split_threshold is null or split_threshold > 0", name="config_split_positive"),
        sa.CheckConstraint(
            "min_external_amount is null or max_platform_amount is null or min_external_amount <= max_platform_amount",
            name="config_min_le_max",
        ),
        sa.CheckConstraint("connect_account_id is null or connect_account_id like 'acct\\_%'",
                           name="config_connect_account"),
        sa.CheckConstraint("version >= 1", name="config_version"),
        schema=S,
    )
    op.create_table(
        "processor_connections",
        sa.Column("connection_id", sa.Integer, primary_key=True),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("processor", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("default_currency", sa.Text, nullable=False),
        sa.Column("supports_payments", sa.Boolean, nullable=False),
        sa.Column("supports_refunds", sa.Boolean, nullable=False),
        sa.Column("fee_percent", sa.Numeric(7, 4)),
        sa.Column("fee_fixed", MONEY),
        sa.Column("connected_at", TZ, nullable=False),
        sa.Column("event_occurred_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint(f"processor in {PROCESSORS}", name="connection_processor"),
        sa.CheckConstraint("fee_percent is null or (fee_percent >= 0 and fee_percent < 100)", name="connection_fee"),
        sa.CheckConstraint("fee_fixed is null or fee_fixed >= 0", name="connection_fixed_fee"),
        schema=S,
    )
    op.create_index("processor_connections_barber", "processor_connections", ["barber_id"], schema=S)
    op.create_table(
        "routing_decisions",
        sa.Column("route_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("appointment_id", sa.BigInteger, nullable=False),
        sa.Column("client_id", sa.BigInteger),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("payment_type", sa.Text, nullable=False),
        sa.Column("processor", sa.Text, nullable=False),
        sa.Column("connection_id", sa.Integer),
        sa.Column("commission_rate", RATE, nullable=False),
        sa.Column("commission_amount", MONEY, nullable=False),
        sa.Column("estimated_processor_fee", MONEY, nullable=False),
        sa.Column("barber_net", MONEY, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("fallback_used", sa.Boolean, nullable=False),
        sa.Column("decided_at", TZ, nullable=False),
        sa.CheckConstraint("amount > 0", name="decision_amount"),
        sa.CheckConstraint("commission_amount >= 0 and commission_amount <= amount", name="decision_commission"),
        sa.CheckConstraint("estimated_processor_fee >= 0", name="decision_fee"),
        sa.CheckConstraint("commission_rate >= 0 and commission_rate <= 1", name="decision_rate"),
        sa.CheckConstraint("payment_type in ('centralized', 'external')", name="decision_type"),
        sa.CheckConstraint(f"processor in {PROCESSORS}", name="decision_processor"),
        sa.CheckConstraint(
            "(payment_type = 'centralized' and connection_id is null and barber_net = amount - commission_amount)"
            " or (payment_type = 'external' and connection_id is not null"
            " and barber_net = amount - commission_amount - estimated_processor_fee)",
            name="decision_money_identity",
        ),
        schema=S,
    )
    op.create_index("routing_decisions_barber", "routing_decisions", ["barber_id", "decided_at"], schema=S)
    op.create_table(
        "platform_payments",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("route_id", UUID(as_uuid=True), sa.ForeignKey(f"{S}.routing_decisions.route_id"), nullable=False),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("appointment_id", sa.BigInteger, nullable=False),
        sa.Column("client_id", sa.BigInteger),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("commission_rate", RATE, nullable=False),
        sa.Column("commission_amount", MONEY, nullable=False),
        sa.Column("processor_fee", MONEY, nullable=False),
        sa.Column("refunded_amount", MONEY, nullable=False, server_default="0"),
        sa.Column("destination_account", sa.Text, nullable=False),
        sa.Column("payment_method", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("processor_idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("stripe_payment_intent_id", sa.Text, unique=True),
        sa.Column("stripe_charge_id", sa.Text),
        sa.Column("failure_code", sa.Text),
        sa.Column("failure_reason", sa.Text),
        sa.Column("processor_response", JSONB),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.CheckConstraint("amount > 0", name="payment_amount"),
        sa.CheckConstraint("commission_amount >= 0 and commission_amount <= amount", name="payment_commission"),
        sa.CheckConstraint("processor_fee >= 0", name="payment_fee"),
        sa.CheckConstraint("refunded_amount >= 0 and refunded_amount <= amount", name="payment_refunded"),
        sa.CheckConstraint(
            "status in ('pending', 'completed', 'failed', 'refunded', 'partially_refunded')", name="payment_status"
        ),
        sa.CheckConstraint("status <> 'completed' or stripe_payment_intent_id is not null", name="payment_intent"),
        schema=S,
    )
    # At most one payment per route that is in flight or took money; failed attempts may repeat.
    op.create_index(
        "platform_payments_one_live_per_route", "platform_payments", ["route_id"], unique=True, schema=S,
        postgresql_where=sa.text("status <> 'failed'"),
    )
    op.create_index("platform_payments_barber", "platform_payments", ["barber_id", "created_at"], schema=S)
    op.create_table(
        "platform_refunds",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("payment_id", UUID(as_uuid=True), sa.ForeignKey(f"{S}.platform_payments.id"), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("processor_idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("stripe_refund_id", sa.Text, unique=True),
        sa.Column("failure_reason", sa.Text),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint("amount > 0", name="refund_amount"),
        sa.CheckConstraint("status in ('pending', 'succeeded', 'failed')", name="refund_status"),
        schema=S,
    )
    op.create_index("platform_refunds_payment", "platform_refunds", ["payment_id"], schema=S)


def downgrade() -> None:
    for table in ("platform_refunds", "platform_payments", "routing_decisions", "processor_connections",
                  "hybrid_payment_configs"):
        op.drop_table(table, schema=S)
