"""external: webhooks as notices deduplicated per connection, verified processor accounts, unattributed
payments, double charges, and per-row back-off for the sweeper.

- `webhook_events`: one processor event id is applied once *per connection* (two barbers may connect
  one processor account, and each endpoint must hear it), with what came of it (`outcome`).
- `payment_processor_connections.processor_account`: the account the processor said the credentials
  belong to (first verified check); new credentials must belong to it.
- `unattributed_payments`: a payment nobody started, on an account more than one barber connected,
  waits here for an operator instead of going to whichever endpoint heard it first.
- `external_transactions.flagged`: `double_charge` when a failed attempt proves completed beside the
  route's live one; such a row is out of the one-live-attempt index (both are money taken).
- `external_refunds.connection_id`: the connection that heard a refund (an early one is adopted only
  by a payment of the same processor account).
- `next_check_at` / `check_failures`: a sweep backs off a row whose look-up fails, on its own.

Revision ID: ext0004
Revises: ext0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "ext0004"
down_revision = "ext0003"
branch_labels = None
depends_on = None

S = "external"
TZ = sa.DateTime(timezone=True)
MONEY = sa.Numeric(18, 4)
LIVE = "route_id IS NOT NULL AND status NOT IN ('failed', 'canceled')"


def upgrade() -> None:
    op.drop_constraint("webhook_events_once", "webhook_events", schema=S)
    op.create_unique_constraint("webhook_events_once_per_connection", "webhook_events", ["connection_id", "event_id"],
                                schema=S)
    op.add_column("webhook_events", sa.Column("outcome", sa.Text), schema=S)
    op.create_check_constraint("webhook_outcome", "webhook_events",
                               "outcome is null or outcome in ('applied', 'ignored', 'not_found', 'unattributed')",
                               schema=S)
    op.create_index("webhook_events_received", "webhook_events", ["received_at"], schema=S)

    op.add_column("payment_processor_connections", sa.Column("processor_account", sa.Text), schema=S)
    op.execute(f"UPDATE {S}.payment_processor_connections "
               "SET processor_account = connection_data->>'processor_account'")
    op.create_index("connections_processor_account", "payment_processor_connections",
                    ["processor_type", "processor_account"], schema=S)

    op.add_column("external_transactions", sa.Column("flagged", sa.Text), schema=S)
    op.create_check_constraint("tx_flagged", "external_transactions", "flagged is null or flagged = 'double_charge'",
                               schema=S)
    op.drop_index("external_transactions_one_live_per_route", "external_transactions", schema=S)
    op.create_index("external_transactions_one_live_per_route", "external_transactions", ["route_id"], unique=True,
                    schema=S, postgresql_where=sa.text(f"{LIVE} AND flagged IS NULL"))

    op.add_column("external_refunds", sa.Column(
        "connection_id", sa.Integer, sa.ForeignKey(f"{S}.payment_processor_connections.id")), schema=S)
    op.execute(f"UPDATE {S}.external_refunds r SET connection_id = t.connection_id "
               f"FROM {S}.external_transactions t WHERE t.id = r.transaction_id")

    for table in ("external_transactions", "external_refunds"):
        op.add_column(table, sa.Column("next_check_at", TZ), schema=S)
        op.add_column(table, sa.Column("check_failures", sa.Integer, nullable=False, server_default="0"), schema=S)

    op.create_table(
        "unattributed_payments",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("processor_type", sa.Text, nullable=False),
        sa.Column("processor_account", sa.Text, nullable=False),
        sa.Column("external_transaction_id", sa.Text, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("connection_ids", JSONB, nullable=False),
        sa.Column("heard_from", sa.Text, nullable=False),  # webhook | reconciliation
        sa.Column("first_heard_at", TZ, nullable=False),
        sa.Column("last_heard_at", TZ, nullable=False),
        sa.Column("attributed_to", sa.Integer, sa.ForeignKey(f"{S}.payment_processor_connections.id")),
        sa.Column("transaction_id", sa.dialects.postgresql.UUID(as_uuid=True)),
        sa.Column("attributed_at", TZ),
        sa.UniqueConstraint("processor_type", "external_transaction_id", name="unattributed_once"),
        sa.CheckConstraint("amount > 0", name="unattributed_amount"),
        sa.CheckConstraint("(attributed_to is null) = (attributed_at is null)", name="unattributed_resolution"),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("unattributed_payments", schema=S)
    for table in ("external_refunds", "external_transactions"):
        op.drop_column(table, "check_failures", schema=S)
        op.drop_column(table, "next_check_at", schema=S)
    op.drop_column("external_refunds", "connection_id", schema=S)
    op.drop_index("external_transactions_one_live_per_route", "external_transactions", schema=S)
    # A flagged double charge is money taken beside its route's live payment: the old index has no room
    # for it, and rewriting it as something it is not would lie about money. Refuse instead.
    op.execute(f"""DO $$ BEGIN
        IF EXISTS (SELECT 1 FROM {S}.external_transactions WHERE flagged IS NOT NULL) THEN
            RAISE EXCEPTION 'external_transactions holds flagged double charges: refund and resolve them first';
        END IF; END $$""")
    op.create_index("external_transactions_one_live_per_route", "external_transactions", ["route_id"], unique=True,
                    schema=S, postgresql_where=sa.text(LIVE))
    op.drop_constraint("tx_flagged", "external_transactions", schema=S)
    op.drop_column("external_transactions", "flagged", schema=S)
    op.drop_index("connections_processor_account", "payment_processor_connections", schema=S)
    op.drop_column("payment_processor_connections", "processor_account", schema=S)
    op.drop_index("webhook_events_received", "webhook_events", schema=S)
    op.drop_constraint("webhook_outcome", "webhook_events", schema=S)
    op.drop_column("webhook_events", "outcome", schema=S)
    op.drop_constraint("webhook_events_once_per_connection", "webhook_events", schema=S)
    # Several connections may hold the same event id now; the old key keeps the first of each.
    op.execute(f"DELETE FROM {S}.webhook_events w USING {S}.webhook_events o "
               "WHERE w.processor_type = o.processor_type AND w.event_id = o.event_id AND w.id > o.id")
    op.create_unique_constraint("webhook_events_once", "webhook_events", ["processor_type", "event_id"], schema=S)
