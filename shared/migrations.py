"""Alembic plumbing shared by the four services' environments, and the API to run them.

Each service keeps its own `migrations/` folder, its schema and its version table
(`<schema>.alembic_version`); `env.py` there only names them and calls `run_env`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.dialects.postgresql  # noqa: F401  (sa.dialects.postgresql below)
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

from shared.config import normalise_database_url

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("router", "external", "collections", "analytics")


def run_env(context, *, schema: str, target_metadata: sa.MetaData | None = None) -> None:
    """Body of each service's `env.py` (online mode only: migrations need a live database)."""
    url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("DATABASE_URL is not set")

    def include_object(obj, name, type_, reflected, compare_to) -> bool:
        # Autogenerate looks only at this service's schema.
        return getattr(obj, "schema", schema) == schema if type_ == "table" else True

    def do_run(connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table="alembic_version",
            version_table_schema=schema,
            include_schemas=True,
            include_object=include_object,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(normalise_database_url(url), poolclass=sa.pool.NullPool)
        async with engine.connect() as connection:
            # The version table lives in the schema, so the schema must exist first.
            await connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await connection.commit()
            await connection.run_sync(do_run)
            await connection.commit()
        await engine.dispose()

    asyncio.run(main())


def alembic_config(service: str, database_url: str | None = None) -> Config:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    cfg = Config(str(ROOT / "services" / service / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "services" / service / "migrations"))
    if database_url:
        cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


class SchemaNotAtHead(RuntimeError):
    """A service's schema is not at the revision its code needs."""


def head_revision(service: str) -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(service)).get_current_head()
    if head is None:
        raise RuntimeError(f"the {service} migrations have no head revision")
    return head


async def check_at_head(service: str, engine) -> None:
    """Refuse to run a service on a schema its code was not written for (a deploy before its
    migration, or a restore of an older backup): a clear message instead of errors mid-request."""
    if service not in SERVICES:
        return
    head = head_revision(service)
    async with engine.connect() as conn:
        exists = await conn.scalar(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{service}.alembic_version"})
        found = (await conn.scalar(sa.text(f'SELECT version_num FROM "{service}".alembic_version'))
                 if exists else None)
    if found != head:
        raise SchemaNotAtHead(
            f"the {service} schema is at {found or 'no revision (not migrated)'}, this code needs {head}: "
            f"run `make migrate` (or `python -m tools.migrate upgrade --service {service}`), then start it again")


def upgrade(service: str, database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(service, database_url), revision)


def downgrade(service: str, database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(service, database_url), revision)


def current(service: str, database_url: str | None = None) -> None:
    command.current(alembic_config(service, database_url), verbose=False)


# ---- frozen DDL of the platform tables every service schema has ----------------------------------
# Written out, not built from `shared.db.PlatformTables`: a migration must create the same tables
# forever, whatever the live model becomes. A change to the live model needs a new function here.

def create_platform_tables_v1(op, schema: str) -> None:
    """Revision 1 of every service: outbox, processed events, idempotency keys."""
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.dialects.postgresql.UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", tz, nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", tz),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        schema=schema,
    )
    op.create_index("outbox_unpublished", "outbox", ["id"], schema=schema,
                    postgresql_where=sa.text("published_at IS NULL"))
    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("event_id", sa.dialects.postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("processed_at", tz, nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("response_status", sa.Integer),
        sa.Column("response_body", sa.LargeBinary),
        sa.Column("response_media_type", sa.Text),
        sa.Column("created_at", tz, nullable=False, server_default=sa.func.now()),
        sa.Column("locked_at", tz, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("state in ('in_progress', 'completed')", name="idempotency_state"),
        sa.CheckConstraint("char_length(key) between 1 and 255", name="idempotency_key_length"),
        schema=schema,
    )
    op.create_index("idempotency_keys_created", "idempotency_keys", ["created_at"], schema=schema)


def drop_platform_tables_v1(op, schema: str) -> None:
    for name in ("idempotency_keys", "processed_events", "outbox"):
        op.drop_table(name, schema=schema)


def create_dead_letters_v2(op, schema: str) -> None:
    """Revision 2 of every service: events a consumer could not apply, kept for replay."""
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("event_id", sa.dialects.postgresql.UUID(as_uuid=True)),
        sa.Column("event_type", sa.Text),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("parked_at", tz, nullable=False, server_default=sa.func.now()),
        sa.Column("replayed_at", tz),
        sa.Column("discarded_at", tz),
        sa.Column("note", sa.Text),
        schema=schema,
    )
    op.create_index("dead_letters_one_per_event", "dead_letters", ["consumer", "event_id"], unique=True,
                    schema=schema, postgresql_where=sa.text("event_id IS NOT NULL"))


def drop_dead_letters_v2(op, schema: str) -> None:
    op.drop_table("dead_letters", schema=schema)


def outbox_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel a schema's outbox announces its commits on."""
    return f"{schema}_outbox"


def create_outbox_notify_v3(op, schema: str) -> None:
    """Every statement that adds outbox rows (a unit of work, a hot path's CTE, the legacy import's
    COPY) notifies `<schema>_outbox` at commit, so the relay wakes on commits in any process
    instead of polling. Postgres folds a transaction's identical notifications into one."""
    op.execute(f"""
CREATE OR REPLACE FUNCTION {schema}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{outbox_channel(schema)}', '');
    RETURN NULL;
END $$
""")
    op.execute(f"""
CREATE OR REPLACE TRIGGER outbox_notify AFTER INSERT ON {schema}.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.outbox_notify();
""")


def drop_outbox_notify_v3(op, schema: str) -> None:
    op.execute(f"DROP TRIGGER outbox_notify ON {schema}.outbox")
    op.execute(f"DROP FUNCTION {schema}.outbox_notify()")


def create_audit_log_v4(op, schema: str) -> None:
    """Every service: operator actions (who, what, before, after, when), written in the same
    transaction as the action (`shared.operations`)."""
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor_role", sa.Text, nullable=False),
        sa.Column("actor_id", sa.BigInteger, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("before", sa.dialects.postgresql.JSONB),
        sa.Column("after", sa.dialects.postgresql.JSONB),
        schema=schema,
    )
    op.create_index("audit_log_subject", "audit_log", ["subject", "id"], schema=schema)


def drop_audit_log_v4(op, schema: str) -> None:
    op.drop_table("audit_log", schema=schema)


def create_replica_coordination_v5(op, schema: str) -> None:
    """Every service: what replicas of one service must agree on, kept in its database.

    `rate_limits`: one GCRA cell per caller (`tat`, the theoretical arrival time in epoch seconds;
    `granted`, how many of the last statement's requests it let through), shared by every replica
    (`shared.ratelimit`). UNLOGGED: no WAL for a counter that may be lost
    (after a Postgres crash every caller simply starts with a full budget).
    `job_schedule`: when each periodic job is next due and how often it ran, so N replicas run a
    job once per interval, not N times (`shared.scheduler`)."""
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("tat", sa.Float(precision=53), nullable=False),
        sa.Column("granted", sa.Integer, nullable=False, server_default="0"),
        schema=schema,
        prefixes=["UNLOGGED"],
    )
    op.create_table(
        "job_schedule",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("runs", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_started_at", sa.DateTime(timezone=True)),
        sa.Column("last_holder", sa.Text),
        schema=schema,
    )


def drop_replica_coordination_v5(op, schema: str) -> None:
    op.drop_table("job_schedule", schema=schema)
    op.drop_table("rate_limits", schema=schema)
