"""Tables of the `external` schema (SQLAlchemy Core; the migrations are the source of truth).

`payment_processor_connections` and `external_transactions` keep every column of the seed's
tables under the same names. Where the seed's type cannot hold the value exactly it is widened:
money is `numeric(18,4)` (the seed's `DECIMAL(10,2)` has no room for three-decimal currencies),
ids of transactions are UUIDs (the router needs one before the processor answers), and the seed's
`connection_data`/`webhook_secret` hold ciphertext, never a secret in the clear.
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from shared.db import PlatformTables

SCHEMA = "external"
metadata = sa.MetaData(schema=SCHEMA)
# outbox, processed_events, idempotency_keys, dead_letters: the tables every service schema has.
platform = PlatformTables(metadata)

Money = sa.Numeric(18, 4)
Rate = sa.Numeric(6, 5)
TZ = sa.DateTime(timezone=True)

connections = sa.Table(
    "payment_processor_connections",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("barber_id", sa.Integer, nullable=False),
    sa.Column("processor_type", sa.Text, nullable=False),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("account_name", sa.Text),
    # pending (credentials not yet checked), active, error (the processor refused them: see
    # status_reason), disconnected (DELETE).
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("status_reason", sa.Text),
    # Non-secret processor details (Square's location id, the credentials' masked hint).
    sa.Column("connection_data", JSONB, nullable=False),
    # The credentials, Fernet-encrypted under CONNECTION_ENCRYPTION_KEYS.
    sa.Column("credentials", sa.Text, nullable=False),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_secret", sa.Text),  # Fernet-encrypted too
    sa.Column("webhook_endpoint_id", sa.Text),
    sa.Column("supports_payments", sa.Boolean, nullable=False),
    sa.Column("supports_refunds", sa.Boolean, nullable=False),
    sa.Column("supports_recurring", sa.Boolean, nullable=False),
    sa.Column("default_currency", sa.Text, nullable=False),
    sa.Column("processing_fees", JSONB),
    sa.Column("last_sync_at", TZ),
    sa.Column("last_transaction_at", TZ),
    sa.Column("total_transactions", sa.Integer, nullable=False),
    sa.Column("total_volume", Money, nullable=False),
    # What `connection.changed` last told the others (a disabled processor publishes as unusable).
    sa.Column("published_status", sa.Text),
    # The account the processor said the credentials belong to (set by the first verified check):
    # new credentials must belong to it; two connections with one account share its payments.
    sa.Column("processor_account", sa.Text),
    sa.Column("connected_at", TZ, nullable=False),
    sa.Column("disconnected_at", TZ),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.UniqueConstraint("barber_id", "processor_type", "account_id", name="connections_one_per_account"),
    sa.Index("connections_barber", "barber_id"),
    sa.Index("connections_processor_account", "processor_type", "processor_account"),
)

transactions = sa.Table(
    "external_transactions",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("connection_id", sa.Integer, sa.ForeignKey(f"{SCHEMA}.payment_processor_connections.id"),
              nullable=False),
    sa.Column("processor_type", sa.Text, nullable=False),
    # Null only while our own attempt waits for the processor's first answer.
    sa.Column("external_transaction_id", sa.Text),
    sa.Column("amount", Money, nullable=False),
    sa.Column("refunded_amount", Money, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("barber_id", sa.Integer, nullable=False),
    sa.Column("appointment_id", sa.BigInteger),
    sa.Column("client_id", sa.BigInteger),
    sa.Column("route_id", UUID(as_uuid=True)),
    sa.Column("external_customer_id", sa.Text),
    sa.Column("external_metadata", JSONB),
    sa.Column("processor_fees", Money, nullable=False),
    sa.Column("commission_rate", Rate, nullable=False),
    sa.Column("commission_amount", Money, nullable=False),
    sa.Column("payment_method", sa.Text),
    # Our processor idempotency key, derived from this row (null for payments we did not start).
    sa.Column("processor_idempotency_key", sa.Text, unique=True),
    # api (we charged it), webhook or reconciliation (we learned of it).
    sa.Column("origin", sa.Text, nullable=False),
    sa.Column("failure_code", sa.Text),
    sa.Column("failure_reason", sa.Text),
    sa.Column("reconciled_at", TZ),
    sa.Column("reconciliation_status", sa.Text),
    sa.Column("processed_at", TZ),
    # `double_charge`: an attempt failed wrongly that proved completed beside its route's live one.
    # Both are money taken; this one is to be refunded (and alerted on).
    sa.Column("flagged", sa.Text),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),  # also the lease of a pending attempt
    sa.Column("version", sa.Integer, nullable=False),  # `sequence` of transaction.recorded
    # The sweeper's per-row back-off (see shared.attempts).
    sa.Column("next_check_at", TZ),
    sa.Column("check_failures", sa.Integer, nullable=False),
    sa.Index("external_transactions_processor_id", "processor_type", "external_transaction_id", unique=True,
             postgresql_where=sa.text("external_transaction_id IS NOT NULL")),
    sa.Index("external_transactions_one_live_per_route", "route_id", unique=True, postgresql_where=sa.text(
        "route_id IS NOT NULL AND status NOT IN ('failed', 'canceled') AND flagged IS NULL")),
    sa.Index("external_transactions_barber", "barber_id", "created_at"),
    sa.Index("external_transactions_created", "created_at", "id"),
    sa.Index("external_transactions_pending", "updated_at", postgresql_where=sa.text("status = 'pending'")),
)

refunds = sa.Table(
    "external_refunds",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    # Null for a refund whose payment we have not heard of yet (a webhook that came first).
    sa.Column("transaction_id", UUID(as_uuid=True), sa.ForeignKey(f"{SCHEMA}.external_transactions.id")),
    sa.Column("processor_type", sa.Text, nullable=False),
    # The connection whose credentials fetched it: an early refund is adopted only by a payment of
    # the same processor account.
    sa.Column("connection_id", sa.Integer, sa.ForeignKey(f"{SCHEMA}.payment_processor_connections.id")),
    sa.Column("processor_payment_id", sa.Text),
    sa.Column("processor_refund_id", sa.Text),
    sa.Column("amount", Money, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("processor_idempotency_key", sa.Text, unique=True),
    sa.Column("failure_reason", sa.Text),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
    sa.Column("next_check_at", TZ),
    sa.Column("check_failures", sa.Integer, nullable=False),
    sa.Index("external_refunds_processor_id", "processor_type", "processor_refund_id", unique=True,
             postgresql_where=sa.text("processor_refund_id IS NOT NULL")),
    sa.Index("external_refunds_transaction", "transaction_id"),
    sa.Index("external_refunds_orphans", "processor_type", "processor_payment_id",
             postgresql_where=sa.text("transaction_id IS NULL")),
)

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("processor_type", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("connection_id", sa.Integer, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("understood", sa.Boolean, nullable=False),
    # applied | ignored (not a type we act on) | not_found (the processor has no such object: not its
    # notice) | unattributed (a payment on a shared account nobody started)
    sa.Column("outcome", sa.Text),
    sa.Column("received_at", TZ, nullable=False),
    # Per connection: two barbers may connect one processor account, and each endpoint must hear it.
    sa.UniqueConstraint("connection_id", "event_id", name="webhook_events_once_per_connection"),
    sa.Index("webhook_events_received", "received_at"),
    sa.Index("webhook_events_connection_received", "connection_id", "received_at"),
)

# A payment nobody started, on a processor account more than one barber connected: whichever
# endpoint heard it first must not get it; it waits for an operator to attribute it.
unattributed_payments = sa.Table(
    "unattributed_payments",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("processor_type", sa.Text, nullable=False),
    sa.Column("processor_account", sa.Text, nullable=False),
    sa.Column("external_transaction_id", sa.Text, nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("connection_ids", JSONB, nullable=False),
    sa.Column("heard_from", sa.Text, nullable=False),
    sa.Column("first_heard_at", TZ, nullable=False),
    sa.Column("last_heard_at", TZ, nullable=False),
    sa.Column("attributed_to", sa.Integer, sa.ForeignKey(f"{SCHEMA}.payment_processor_connections.id")),
    sa.Column("transaction_id", UUID(as_uuid=True)),
    sa.Column("attributed_at", TZ),
    sa.UniqueConstraint("processor_type", "external_transaction_id", name="unattributed_once"),
)

# The commission rate of each barber, from the router's `config.changed` (payments we learn of by
# webhook or reconciliation carry no rate of their own).
barber_rates = sa.Table(
    "barber_rates",
    metadata,
    sa.Column("barber_id", sa.Integer, primary_key=True),
    sa.Column("commission_rate", Rate, nullable=False),
    sa.Column("config_version", sa.Integer, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
)

# Every reconciliation run (scheduled or an operator's), with its counts and differences.
reconciliation_runs = sa.Table(
    "reconciliation_runs",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("as_of", TZ, nullable=False),
    sa.Column("finished_at", TZ, nullable=False),
    sa.Column("since", TZ, nullable=False),
    sa.Column("until", TZ, nullable=False),
    sa.Column("connection_id", sa.Integer),
    sa.Column("trigger", sa.Text, nullable=False),
    sa.Column("connections", sa.Integer, nullable=False),
    sa.Column("matched", sa.Integer, nullable=False),
    sa.Column("mismatch", sa.Integer, nullable=False),
    sa.Column("missing_local", sa.Integer, nullable=False),
    sa.Column("failed_connections", JSONB, nullable=False),
    sa.Column("findings", JSONB, nullable=False),
    sa.CheckConstraint("trigger in ('scheduled', 'operator')", name="reconciliation_trigger"),
    sa.CheckConstraint("matched >= 0 and mismatch >= 0 and missing_local >= 0", name="reconciliation_counts"),
    sa.Index("reconciliation_runs_as_of", "as_of", "id"),
)
