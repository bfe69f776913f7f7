"""analytics: transaction and collection facts, and their daily rollups.

Facts keep the latest state of each transaction (by the producer's `sequence`) and collection;
rollups keep their sums per UTC day and barber (`barber_id` 0: all barbers), updated in the same
transaction as the fact, so the dashboard never scans facts. Money is `numeric` (sums `numeric(24,4)`).
The database guards what it can: a fact's statuses, sources and amounts. Rollup rows have no
CHECK: they change by deltas through INSERT ... ON CONFLICT DO UPDATE, and Postgres checks the
proposed row (a delta, often negative) before it finds the conflict.

Revision ID: ana0003
Revises: ana0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "ana0003"
down_revision = "ana0002"
branch_labels = None
depends_on = None

S = "analytics"
MONEY = sa.Numeric(18, 4)
SUM = sa.Numeric(24, 4)
RATE = sa.Numeric(6, 5)
TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def _measures() -> list[sa.Column]:
    return [
        sa.Column("transaction_count", sa.BigInteger, nullable=False),
        sa.Column("completed_count", sa.BigInteger, nullable=False),
        sa.Column("failed_count", sa.BigInteger, nullable=False),
        sa.Column("gross_volume", SUM, nullable=False),
        sa.Column("refunded_amount", SUM, nullable=False),
        sa.Column("commission", SUM, nullable=False),
        sa.Column("processor_fees", SUM, nullable=False),
        sa.Column("barber_net", SUM, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "transaction_facts",
        sa.Column("transaction_id", sa.Text, primary_key=True),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("appointment_id", sa.BigInteger),
        sa.Column("client_id", sa.BigInteger),
        sa.Column("payment_type", sa.Text, nullable=False),
        sa.Column("processor", sa.Text, nullable=False),
        sa.Column("connection_id", sa.BigInteger),
        sa.Column("external_transaction_id", sa.Text),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("refunded_amount", MONEY, nullable=False),
        sa.Column("commission_rate", RATE, nullable=False),
        sa.Column("commission_amount", MONEY, nullable=False),
        sa.Column("processor_fee", MONEY, nullable=False),
        sa.Column("processed_at", TZ, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.Column("event_at", TZ, nullable=False),
        sa.CheckConstraint("payment_type in ('centralized', 'external')", name="fact_payment_type"),
        sa.CheckConstraint("status in ('pending', 'completed', 'failed', 'refunded', 'partially_refunded', "
                           "'canceled')", name="fact_status"),
        sa.CheckConstraint("source in ('live', 'legacy')", name="fact_source"),
        sa.CheckConstraint("amount > 0 and refunded_amount >= 0 and refunded_amount <= amount",
                           name="fact_amounts"),
        schema=S,
    )
    op.create_index("facts_barber_time", "transaction_facts", ["barber_id", "processed_at"], schema=S)
    op.create_table(
        "daily_payments",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("barber_id", sa.Integer, primary_key=True),
        sa.Column("payment_type", sa.Text, primary_key=True),
        sa.Column("processor", sa.Text, primary_key=True),
        sa.Column("currency", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, primary_key=True),
        *_measures(),
        schema=S,
    )
    op.create_index("daily_payments_scope", "daily_payments", ["barber_id", "currency", "day"], schema=S)
    op.create_table(
        "collection_facts",
        sa.Column("collection_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("failed_reason", sa.Text),
        sa.Column("collected_at", TZ),
        sa.Column("changed_at", TZ, nullable=False),
        sa.CheckConstraint("status in ('pending', 'collected', 'failed', 'overdue')", name="collection_fact_status"),
        sa.CheckConstraint("(status = 'collected') = (collected_at is not null)", name="collection_fact_collected"),
        schema=S,
    )
    op.create_table(
        "daily_collections",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("barber_id", sa.Integer, primary_key=True),
        sa.Column("currency", sa.Text, primary_key=True),
        sa.Column("collected_count", sa.BigInteger, nullable=False),
        sa.Column("collected_amount", SUM, nullable=False),
        schema=S,
    )


def downgrade() -> None:
    for table in ("daily_collections", "collection_facts", "daily_payments", "transaction_facts"):
        op.drop_table(table, schema=S)
