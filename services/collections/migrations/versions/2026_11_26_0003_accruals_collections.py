"""collections: barber settings and payment methods, accruals, platform collections, attempts.

The seed's `platform_collections` columns are all here under their names (money `numeric(18,4)`,
rate `numeric(6,5)`, ids UUIDs). The database guards the money: a collection is positive, an
accrual belongs to at most one collection, one attempt number per collection, statuses are known.

Revision ID: col0003
Revises: col0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "col0003"
down_revision = "col0002"
branch_labels = None
depends_on = None

S = "collections"
MONEY = sa.Numeric(18, 4)
RATE = sa.Numeric(6, 5)
TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")
FREQUENCIES = "('daily', 'weekly', 'monthly')"


def upgrade() -> None:
    op.create_table(
        "barber_settings",
        sa.Column("barber_id", sa.Integer, primary_key=True),
        sa.Column("commission_collection_frequency", sa.Text, nullable=False),
        sa.Column("auto_collection_enabled", sa.Boolean, nullable=False),
        sa.Column("connect_account_id", sa.Text),
        sa.Column("commission_rate", RATE, nullable=False),
        sa.Column("config_version", sa.Integer, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint(f"commission_collection_frequency in {FREQUENCIES}", name="settings_frequency"),
        schema=S,
    )
    op.create_table(
        "payment_methods",
        sa.Column("barber_id", sa.Integer, primary_key=True),
        sa.Column("stripe_customer_id", sa.Text),
        sa.Column("stripe_payment_method_id", sa.Text, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        schema=S,
    )
    op.create_table(
        "transaction_states",
        sa.Column("transaction_id", sa.Text, primary_key=True),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("refunded_amount", MONEY, nullable=False),
        sa.Column("commission_amount", MONEY, nullable=False),
        sa.Column("commission_accrued", MONEY, nullable=False),
        sa.Column("commission_reversed", MONEY, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint("commission_reversed >= 0 and commission_reversed <= commission_accrued",
                           name="state_reversal_within_commission"),
        schema=S,
    )
    op.create_table(
        "commission_accruals",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("transaction_id", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("accrued_at", TZ, nullable=False),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("collection_id", UUID(as_uuid=True)),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint("amount <> 0", name="accrual_not_zero"),
        sa.CheckConstraint("(kind = 'commission') = (amount > 0)", name="accrual_sign"),
        sa.CheckConstraint("kind in ('commission', 'reversal')", name="accrual_kind"),
        schema=S,
    )
    op.create_index("accruals_unbilled", "commission_accruals", ["barber_id", "currency", "accrued_at"], schema=S,
                    postgresql_where=sa.text("collection_id IS NULL"))
    op.create_index("accruals_collection", "commission_accruals", ["collection_id"], schema=S)
    op.create_index("accruals_transaction", "commission_accruals", ["transaction_id"], schema=S)
    op.create_table(
        "platform_collections",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("collection_type", sa.Text, nullable=False, server_default="commission"),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("external_transaction_ids", JSONB, nullable=False),
        sa.Column("commission_rate", RATE),
        sa.Column("due_date", sa.Date, nullable=False),
        sa.Column("collection_method", sa.Text),
        sa.Column("stripe_invoice_id", sa.Text),
        sa.Column("payment_intent_id", sa.Text),
        sa.Column("collected_at", TZ),
        sa.Column("failed_reason", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("first_failed_at", TZ),
        sa.Column("next_attempt_at", TZ),
        sa.Column("period_end", TZ, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.CheckConstraint("amount > 0", name="collection_positive"),
        sa.CheckConstraint("status in ('pending', 'collected', 'failed', 'overdue')", name="collection_status"),
        sa.CheckConstraint("(status = 'collected') = (collected_at is not null)", name="collection_collected_at"),
        schema=S,
    )
    op.create_index("collections_barber", "platform_collections", ["barber_id", "created_at"], schema=S)
    op.create_index("collections_created", "platform_collections", ["created_at", "id"], schema=S)
    op.create_index("collections_retry", "platform_collections", ["next_attempt_at"], schema=S,
                    postgresql_where=sa.text("status = 'failed'"))
    op.create_foreign_key("accrual_collection", "commission_accruals", "platform_collections", ["collection_id"],
                          ["id"], source_schema=S, referent_schema=S)
    op.create_table(
        "collection_attempts",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("collection_id", UUID(as_uuid=True), sa.ForeignKey(f"{S}.platform_collections.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("method", sa.Text),
        sa.Column("processor_idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("payment_intent_id", sa.Text),
        sa.Column("failure_reason", sa.Text),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.UniqueConstraint("collection_id", "attempt", name="attempts_once"),
        sa.CheckConstraint("status in ('pending', 'succeeded', 'failed')", name="attempt_status"),
        sa.CheckConstraint("attempt >= 1", name="attempt_number"),
        schema=S,
    )
    op.create_index("attempts_pending", "collection_attempts", ["updated_at"], schema=S,
                    postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_table("collection_attempts", schema=S)
    op.drop_constraint("accrual_collection", "commission_accruals", schema=S)
    for table in ("platform_collections", "commission_accruals", "transaction_states", "payment_methods",
                  "barber_settings"):
        op.drop_table(table, schema=S)
