"""router: currency-aware thresholds, settled time, canceled attempts, sweeper indexes.

- `hybrid_payment_configs.threshold_currency`: the currency the amount rules are stated in
  (existing rows were validated and compared as USD, so they keep USD).
- `routing_decisions`: a route never promises a negative `barber_net`. Added NOT VALID: it holds
  for every new row without refusing the migration over rows written before the rule existed.
- `platform_payments.processed_at` (when the processor settled it) and status `canceled`
  (Stripe's canceled PaymentIntent is not a failure); a canceled attempt, like a failed one, does
  not block another attempt on its route.
- Partial indexes for the sweeper's "pending and untouched for a while" scans, and one for the
  admin list's (created_at, id) pagination.

Revision ID: rou0004
Revises: rou0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "rou0004"
down_revision = "rou0003"
branch_labels = None
depends_on = None

S = "router"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("hybrid_payment_configs",
                  sa.Column("threshold_currency", sa.Text, nullable=False, server_default="USD"), schema=S)
    op.create_check_constraint("config_threshold_currency", "hybrid_payment_configs",
                               "threshold_currency ~ '^[A-Z]{3}$'", schema=S)
    op.execute(f"ALTER TABLE {S}.routing_decisions ADD CONSTRAINT decision_net_not_negative "
               "CHECK (barber_net >= 0) NOT VALID")
    op.add_column("platform_payments", sa.Column("processed_at", TZ), schema=S)
    op.execute(f"UPDATE {S}.platform_payments SET processed_at = updated_at WHERE status <> 'pending'")
    op.drop_constraint("payment_status", "platform_payments", schema=S)
    op.create_check_constraint(
        "payment_status", "platform_payments",
        "status in ('pending', 'completed', 'failed', 'canceled', 'refunded', 'partially_refunded')", schema=S)
    op.create_check_constraint("payment_processed_at", "platform_payments",
                               "(status = 'pending') = (processed_at is null)", schema=S)
    op.drop_index("platform_payments_one_live_per_route", table_name="platform_payments", schema=S)
    op.create_index("platform_payments_one_live_per_route", "platform_payments", ["route_id"], unique=True,
                    schema=S, postgresql_where=sa.text("status NOT IN ('failed', 'canceled')"))
    op.create_index("platform_payments_created", "platform_payments", ["created_at", "id"], schema=S)
    op.create_index("platform_payments_pending", "platform_payments", ["updated_at"], schema=S,
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("platform_refunds_pending", "platform_refunds", ["updated_at"], schema=S,
                    postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_index("platform_refunds_pending", table_name="platform_refunds", schema=S)
    op.drop_index("platform_payments_pending", table_name="platform_payments", schema=S)
    op.drop_index("platform_payments_created", table_name="platform_payments", schema=S)
    op.drop_index("platform_payments_one_live_per_route", table_name="platform_payments", schema=S)
    # Canceled attempts become failed ones: the older schema has no word for them.
    op.execute(f"UPDATE {S}.platform_payments SET status = 'failed' WHERE status = 'canceled'")
    op.create_index("platform_payments_one_live_per_route", "platform_payments", ["route_id"], unique=True,
                    schema=S, postgresql_where=sa.text("status <> 'failed'"))
    op.drop_constraint("payment_processed_at", "platform_payments", schema=S)
    op.drop_constraint("payment_status", "platform_payments", schema=S)
    op.create_check_constraint(
        "payment_status", "platform_payments",
        "status in ('pending', 'completed', 'failed', 'refunded', 'partially_refunded')", schema=S)
    op.drop_column("platform_payments", "processed_at", schema=S)
    op.drop_constraint("decision_net_not_negative", "routing_decisions", schema=S)
    op.drop_constraint("config_threshold_currency", "hybrid_payment_configs", schema=S)
    op.drop_column("hybrid_payment_configs", "threshold_currency", schema=S)
