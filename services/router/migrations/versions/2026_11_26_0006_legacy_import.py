"""router: payment history imported from BookedBarber V2, and the import's own bookkeeping.

`legacy_payments` holds each imported legacy payment once (unique `legacy_id`), with the
transaction id the suite knows it by (derived from the legacy id, so every run names it alike)
and a `version` that grows when the legacy row changed between runs (its `transaction.recorded`
`sequence`). `legacy_imports` is each run with its checkpoint (the last legacy payment id
committed) and its reconciliation report; `legacy_import_skips` lists the legacy rows a run did
not carry over, with the reason.

Revision ID: rou0006
Revises: rou0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "rou0006"
down_revision = "rou0005"
branch_labels = None
depends_on = None

S = "router"
MONEY = sa.Numeric(18, 4)
RATE = sa.Numeric(6, 5)
TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "legacy_payments",
        sa.Column("transaction_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("legacy_id", sa.BigInteger, nullable=False, unique=True),
        sa.Column("barber_id", sa.Integer, nullable=False),
        sa.Column("appointment_id", sa.BigInteger),
        sa.Column("client_id", sa.BigInteger),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("refunded_amount", MONEY, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("commission_rate", RATE, nullable=False),
        sa.Column("commission_amount", MONEY, nullable=False),
        sa.Column("processor_fee", MONEY, nullable=False),
        sa.Column("stripe_payment_intent_id", sa.Text),
        sa.Column("processed_at", TZ, nullable=False),
        sa.Column("imported_at", TZ, nullable=False, server_default=NOW),
        sa.Column("version", sa.Integer, nullable=False),
        sa.CheckConstraint("amount > 0", name="legacy_amount_positive"),
        sa.CheckConstraint("refunded_amount >= 0 and refunded_amount <= amount", name="legacy_refund_bounds"),
        sa.CheckConstraint("status in ('completed', 'refunded')", name="legacy_status"),
        sa.CheckConstraint("commission_rate >= 0 and commission_rate <= 1", name="legacy_rate"),
        schema=S,
    )
    op.create_index("legacy_payments_barber", "legacy_payments", ["barber_id", "processed_at"], schema=S)
    op.create_table(
        "legacy_imports",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),  # the legacy database, without its password
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("checkpoint", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("started_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.Column("finished_at", TZ),
        sa.Column("report", JSONB),
        sa.CheckConstraint("status in ('running', 'imported', 'reconciled', 'differences')", name="legacy_run_status"),
        schema=S,
    )
    # At most one unfinished run: a second `make import` resumes it instead of starting another.
    op.create_index("legacy_imports_one_running", "legacy_imports", ["source"], unique=True, schema=S,
                    postgresql_where=sa.text("status = 'running'"))
    op.create_table(
        "legacy_import_skips",
        sa.Column("legacy_table", sa.Text, primary_key=True),
        sa.Column("legacy_id", sa.BigInteger, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("run_id", sa.Integer, nullable=False),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("legacy_import_skips", schema=S)
    op.drop_table("legacy_imports", schema=S)
    op.drop_table("legacy_payments", schema=S)
