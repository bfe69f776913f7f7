"""Alembic plumbing shared by the four services' environments, and the API to run them.

Each service keeps its own `migrations/` folder, its schema and its version table
(`<schema>.alembic_version`); `env.py` there only names them and calls `run_env`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import sqlalchemy as sa
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


def upgrade(service: str, database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(service, database_url), revision)


def downgrade(service: str, database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(service, database_url), revision)


def current(service: str, database_url: str | None = None) -> None:
    command.current(alembic_config(service, database_url), verbose=False)
