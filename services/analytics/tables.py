"""Tables of the `analytics` schema (SQLAlchemy Core; the migrations are the source of truth).

Facts hold the latest state of each transaction and collection; rollups hold their sums per UTC
day, kept up to date in the consumer's transaction, so the dashboard reads rollups only. A rollup
row with `barber_id` 0 sums every barber (barber ids start at 1), so "all barbers" is as cheap to
read as one barber.
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from shared.db import PlatformTables

SCHEMA = "analytics"
metadata = sa.MetaData(schema=SCHEMA)
# outbox, processed_events, idempotency_keys, dead_letters: the tables every service schema has.
platform = PlatformTables(metadata)

Money = sa.Numeric(18, 4)
Sum = sa.Numeric(24, 4)  # sums of many payments
Rate = sa.Numeric(6, 5)
TZ = sa.DateTime(timezone=True)

# The latest state of each transaction (`transaction.recorded`, the highest `sequence` wins).
transaction_facts = sa.Table(
    "transaction_facts",
    metadata,
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
    sa.Column("amount", Money, nullable=False),
    sa.Column("refunded_amount", Money, nullable=False),
    sa.Column("commission_rate", Rate, nullable=False),
    sa.Column("commission_amount", Money, nullable=False),
    sa.Column("processor_fee", Money, nullable=False),
    sa.Column("processed_at", TZ, nullable=False),
    sa.Column("day", sa.Date, nullable=False),  # the UTC day of processed_at: its rollup row
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("source", sa.Text, nullable=False),  # live | legacy
    sa.Column("updated_at", TZ, nullable=False),  # when analytics applied this state
    sa.Column("event_at", TZ, nullable=False),  # when the producer wrote it (the event's occurred_at)
    sa.Index("facts_barber_time", "barber_id", "processed_at"),
)


def _measures() -> list[sa.Column]:
    return [
        sa.Column("transaction_count", sa.BigInteger, nullable=False),
        sa.Column("completed_count", sa.BigInteger, nullable=False),
        sa.Column("failed_count", sa.BigInteger, nullable=False),
        sa.Column("gross_volume", Sum, nullable=False),
        sa.Column("refunded_amount", Sum, nullable=False),
        sa.Column("commission", Sum, nullable=False),
        sa.Column("processor_fees", Sum, nullable=False),
        sa.Column("barber_net", Sum, nullable=False),
    ]


# Per UTC day, barber (0: all barbers), payment type, processor, currency and source.
daily_payments = sa.Table(
    "daily_payments",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("barber_id", sa.Integer, primary_key=True),
    sa.Column("payment_type", sa.Text, primary_key=True),
    sa.Column("processor", sa.Text, primary_key=True),
    sa.Column("currency", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, primary_key=True),
    *_measures(),
    sa.Index("daily_payments_scope", "barber_id", "currency", "day"),
)

# The latest state of each platform collection (`collection.due`, `collection.settled`).
collection_facts = sa.Table(
    "collection_facts",
    metadata,
    sa.Column("collection_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("barber_id", sa.Integer, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # pending | collected | failed | overdue
    sa.Column("failed_reason", sa.Text),
    sa.Column("collected_at", TZ),
    sa.Column("changed_at", TZ, nullable=False),  # the time of the event that set `status`
)

# Commission collected per UTC day (of collection), barber (0: all barbers) and currency.
daily_collections = sa.Table(
    "daily_collections",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("barber_id", sa.Integer, primary_key=True),
    sa.Column("currency", sa.Text, primary_key=True),
    sa.Column("collected_count", sa.BigInteger, nullable=False),
    sa.Column("collected_amount", Sum, nullable=False),
)
