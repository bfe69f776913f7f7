"""Tables of the `collections` schema (SQLAlchemy Core; the migrations are the source of truth).

`platform_collections` keeps every column of the seed's table under the same names; money is
`numeric(18,4)` and the rate `numeric(6,5)` (the seed's `DECIMAL(10,2)`/`DECIMAL(5,2)` cannot hold
three-decimal currencies or 0.125), and ids are UUIDs (they travel in events).
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from shared.db import PlatformTables

SCHEMA = "collections"
metadata = sa.MetaData(schema=SCHEMA)
# outbox, processed_events, idempotency_keys, dead_letters: the tables every service schema has.
platform = PlatformTables(metadata)

Money = sa.Numeric(18, 4)
Rate = sa.Numeric(6, 5)
TZ = sa.DateTime(timezone=True)

# Each barber's collection settings, from the router's `config.changed`.
barber_settings = sa.Table(
    "barber_settings",
    metadata,
    sa.Column("barber_id", sa.Integer, primary_key=True),
    sa.Column("commission_collection_frequency", sa.Text, nullable=False),
    sa.Column("auto_collection_enabled", sa.Boolean, nullable=False),
    sa.Column("connect_account_id", sa.Text),
    sa.Column("commission_rate", Rate, nullable=False),
    sa.Column("config_version", sa.Integer, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
)

# How the platform charges a barber: a saved Stripe payment method (else its Connect account).
payment_methods = sa.Table(
    "payment_methods",
    metadata,
    sa.Column("barber_id", sa.Integer, primary_key=True),
    sa.Column("stripe_customer_id", sa.Text),
    sa.Column("stripe_payment_method_id", sa.Text, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
)

# Per transaction: the state its accruals were computed from (the latest event wins by sequence).
transaction_states = sa.Table(
    "transaction_states",
    metadata,
    sa.Column("transaction_id", sa.Text, primary_key=True),
    sa.Column("barber_id", sa.Integer, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("refunded_amount", Money, nullable=False),
    sa.Column("commission_amount", Money, nullable=False),
    sa.Column("commission_accrued", Money, nullable=False),
    sa.Column("commission_reversed", Money, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
)

accruals = sa.Table(
    "commission_accruals",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("barber_id", sa.Integer, nullable=False),
    sa.Column("transaction_id", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # commission | reversal
    sa.Column("amount", Money, nullable=False),  # reversals are negative
    # When the payment (or refund) happened: the collection window it falls in.
    sa.Column("accrued_at", TZ, nullable=False),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False),
    sa.Column("collection_id", UUID(as_uuid=True),  # null: unbilled
              sa.ForeignKey(f"{SCHEMA}.platform_collections.id", name="accrual_collection")),
    sa.Column("created_at", TZ, nullable=False),
    sa.Index("accruals_unbilled", "barber_id", "currency", "accrued_at",
             postgresql_where=sa.text("collection_id IS NULL")),
    sa.Index("accruals_collection", "collection_id"),
    sa.Index("accruals_transaction", "transaction_id"),
)

collections = sa.Table(
    "platform_collections",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("barber_id", sa.Integer, nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("collection_type", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # pending | collected | failed | overdue
    sa.Column("external_transaction_ids", JSONB, nullable=False),
    sa.Column("commission_rate", Rate),
    sa.Column("due_date", sa.Date, nullable=False),
    sa.Column("collection_method", sa.Text),  # payment_method | connect_debit (set by the attempt)
    sa.Column("stripe_invoice_id", sa.Text),
    sa.Column("payment_intent_id", sa.Text),
    sa.Column("collected_at", TZ),
    sa.Column("failed_reason", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_failed_at", TZ),
    sa.Column("next_attempt_at", TZ),
    sa.Column("period_end", TZ, nullable=False),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Index("collections_barber", "barber_id", "created_at"),
    sa.Index("collections_created", "created_at", "id"),
    sa.Index("collections_retry", "next_attempt_at", postgresql_where=sa.text("status = 'failed'")),
)

attempts = sa.Table(
    "collection_attempts",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("collection_id", UUID(as_uuid=True), sa.ForeignKey(f"{SCHEMA}.platform_collections.id"),
              nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # pending | succeeded | failed
    # payment_method (an off-session PaymentIntent) | connect_debit (a charge on the Connect account):
    # set when the attempt is first driven, so a later look-up asks Stripe for the right object.
    sa.Column("method", sa.Text),
    sa.Column("processor_idempotency_key", sa.Text, nullable=False, unique=True),
    # Stripe's id for what this attempt made, kept as soon as Stripe names it (even while pending).
    sa.Column("payment_intent_id", sa.Text),
    sa.Column("failure_reason", sa.Text),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),  # also the lease of a pending attempt
    # The sweeper's per-row back-off (see shared.attempts).
    sa.Column("next_check_at", TZ),
    sa.Column("check_failures", sa.Integer, nullable=False),
    sa.UniqueConstraint("collection_id", "attempt", name="attempts_once"),
    sa.Index("attempts_pending", "updated_at", postgresql_where=sa.text("status = 'pending'")),
)
