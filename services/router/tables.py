"""Tables of the `router` schema (SQLAlchemy Core; the migrations are the source of truth).

Money columns are `numeric(18,4)`: exact, and wide enough for three-decimal currencies (the
seed's `DECIMAL(10,2)` is not). Rates are `numeric(6,5)`: the seed's `DECIMAL(5,2)` cannot
hold 0.125.
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from shared.db import PlatformTables

SCHEMA = "router"
metadata = sa.MetaData(schema=SCHEMA)
# outbox, processed_events, idempotency_keys, dead_letters: the tables every service schema has.
platform = PlatformTables(metadata)

Money = sa.Numeric(18, 4)
Rate = sa.Numeric(6, 5)
TZ = sa.DateTime(timezone=True)

hybrid_payment_configs = sa.Table(
    "hybrid_payment_configs",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("barber_id", sa.Integer, nullable=False, unique=True),
    sa.Column("payment_mode", sa.Text, nullable=False),
    sa.Column("preferred_processor", sa.Text),
    sa.Column("fallback_enabled", sa.Boolean, nullable=False),
    sa.Column("min_external_amount", Money),
    sa.Column("max_platform_amount", Money),
    sa.Column("split_threshold", Money),
    sa.Column("threshold_currency", sa.Text, nullable=False),
    sa.Column("commission_rate", Rate, nullable=False),
    sa.Column("commission_collection_frequency", sa.Text, nullable=False),
    sa.Column("auto_collection_enabled", sa.Boolean, nullable=False),
    sa.Column("webhook_notifications", sa.Boolean, nullable=False),
    sa.Column("email_notifications", sa.Boolean, nullable=False),
    sa.Column("analytics_enabled", sa.Boolean, nullable=False),
    sa.Column("connect_account_id", sa.Text),
    sa.Column("effective_from", TZ, nullable=False),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
)

processor_connections = sa.Table(
    "processor_connections",
    metadata,
    sa.Column("connection_id", sa.Integer, primary_key=True),
    sa.Column("barber_id", sa.Integer, nullable=False),
    sa.Column("processor", sa.Text, nullable=False),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("default_currency", sa.Text, nullable=False),
    sa.Column("supports_payments", sa.Boolean, nullable=False),
    sa.Column("supports_refunds", sa.Boolean, nullable=False),
    sa.Column("fee_percent", sa.Numeric(7, 4)),
    sa.Column("fee_fixed", Money),
    sa.Column("connected_at", TZ, nullable=False),
    sa.Column("event_occurred_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
    # The external service's version of the connection: the highest one wins (null: an event from
    # before versions, ordered by its time).
    sa.Column("version", sa.Integer),
    sa.Index("processor_connections_barber", "barber_id"),
)

routing_decisions = sa.Table(
    "routing_decisions",
    metadata,
    sa.Column("route_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("barber_id", sa.Integer, nullable=False),
    sa.Column("appointment_id", sa.BigInteger, nullable=False),
    sa.Column("client_id", sa.BigInteger),
    sa.Column("amount", Money, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("payment_type", sa.Text, nullable=False),
    sa.Column("processor", sa.Text, nullable=False),
    sa.Column("connection_id", sa.Integer),
    sa.Column("commission_rate", Rate, nullable=False),
    sa.Column("commission_amount", Money, nullable=False),
    sa.Column("estimated_processor_fee", Money, nullable=False),
    sa.Column("barber_net", Money, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("fallback_used", sa.Boolean, nullable=False),
    sa.Column("decided_at", TZ, nullable=False),
    # External routes only: the channel being paid through (external | platform) and its lease.
    sa.Column("channel", sa.Text),
    sa.Column("channel_lease_until", TZ),
    # Set when the route fell back to the platform: what the barber's processor answered, and the
    # external attempt that did not take the payment (every later answer about the route says so).
    sa.Column("fallback_reason", sa.Text),
    sa.Column("fallback_transaction_id", UUID(as_uuid=True)),
    sa.Index("routing_decisions_barber", "barber_id", "decided_at"),
)

platform_payments = sa.Table(
    "platform_payments",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("route_id", UUID(as_uuid=True), sa.ForeignKey("router.routing_decisions.route_id"), nullable=False),
    sa.Column("barber_id", sa.Integer, nullable=False),
    sa.Column("appointment_id", sa.BigInteger, nullable=False),
    sa.Column("client_id", sa.BigInteger),
    sa.Column("amount", Money, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("commission_rate", Rate, nullable=False),
    sa.Column("commission_amount", Money, nullable=False),
    sa.Column("processor_fee", Money, nullable=False),
    sa.Column("refunded_amount", Money, nullable=False),
    sa.Column("destination_account", sa.Text, nullable=False),
    sa.Column("payment_method", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("processor_idempotency_key", sa.Text, nullable=False, unique=True),
    sa.Column("stripe_payment_intent_id", sa.Text, unique=True),
    sa.Column("stripe_charge_id", sa.Text),
    sa.Column("failure_code", sa.Text),
    sa.Column("failure_reason", sa.Text),
    sa.Column("processor_response", JSONB),
    # When the processor settled it (completed, failed or canceled): the payment's own time.
    sa.Column("processed_at", TZ),
    sa.Column("created_at", TZ, nullable=False),
    # Also the lease of a pending attempt: whoever calls the processor touches it first, and the
    # sweeper only settles attempts nobody touched for a while.
    sa.Column("updated_at", TZ, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # The sweeper's per-row back-off (see shared.attempts).
    sa.Column("next_check_at", TZ),
    sa.Column("check_failures", sa.Integer, nullable=False),
    sa.Index("platform_payments_one_live_per_route", "route_id", unique=True,
             postgresql_where=sa.text("status NOT IN ('failed', 'canceled')")),
    sa.Index("platform_payments_barber", "barber_id", "created_at"),
    sa.Index("platform_payments_created", "created_at", "id"),
    sa.Index("platform_payments_pending", "updated_at", postgresql_where=sa.text("status = 'pending'")),
)

platform_refunds = sa.Table(
    "platform_refunds",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("payment_id", UUID(as_uuid=True), sa.ForeignKey("router.platform_payments.id"), nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("processor_idempotency_key", sa.Text, nullable=False, unique=True),
    sa.Column("stripe_refund_id", sa.Text, unique=True),
    sa.Column("failure_reason", sa.Text),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),  # the lease of a pending refund, as for payments
    sa.Column("next_check_at", TZ),
    sa.Column("check_failures", sa.Integer, nullable=False),
    sa.Index("platform_refunds_payment", "payment_id"),
    sa.Index("platform_refunds_pending", "updated_at", postgresql_where=sa.text("status = 'pending'")),
)

# Payment history imported from BookedBarber V2 (`tools/legacy_import.py`), and the import's runs.
legacy_payments = sa.Table(
    "legacy_payments",
    metadata,
    sa.Column("transaction_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("legacy_id", sa.BigInteger, nullable=False, unique=True),
    sa.Column("barber_id", sa.Integer, nullable=False),
    sa.Column("appointment_id", sa.BigInteger),
    sa.Column("client_id", sa.BigInteger),
    sa.Column("amount", Money, nullable=False),
    sa.Column("refunded_amount", Money, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("commission_rate", Rate, nullable=False),
    sa.Column("commission_amount", Money, nullable=False),
    sa.Column("processor_fee", Money, nullable=False),
    sa.Column("stripe_payment_intent_id", sa.Text),
    sa.Column("processed_at", TZ, nullable=False),
    sa.Column("imported_at", TZ, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Index("legacy_payments_barber", "barber_id", "processed_at"),
)

legacy_imports = sa.Table(
    "legacy_imports",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # running | imported | reconciled | differences
    sa.Column("checkpoint", sa.BigInteger, nullable=False),  # the last legacy payment id committed
    sa.Column("started_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
    sa.Column("finished_at", TZ),
    sa.Column("report", JSONB),
    sa.Index("legacy_imports_one_running", "source", unique=True, postgresql_where=sa.text("status = 'running'")),
)

legacy_import_skips = sa.Table(
    "legacy_import_skips",
    metadata,
    sa.Column("legacy_table", sa.Text, primary_key=True),
    sa.Column("legacy_id", sa.BigInteger, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("run_id", sa.Integer, nullable=False),
)
