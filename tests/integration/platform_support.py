"""A throwaway service schema (`platform_test`) with the platform tables and one business table,
so the outbox, relay, consumer and idempotency mechanisms are tested on their own.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from shared.db import PlatformTables
from shared.messaging import NatsLink
from shared.outbox import OutboxRelay, UnitOfWork

SCHEMA = "platform_test"
metadata = sa.MetaData(schema=SCHEMA)
tables = PlatformTables(metadata)
widgets = sa.Table(
    "widgets",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("amount", sa.Numeric(20, 4), sa.CheckConstraint("amount > 0"), nullable=False),
)


def make_uow(sessions, link, relay=None) -> UnitOfWork:
    return UnitOfWork(sessions, tables, subject_prefix=link.subject_prefix, relay=relay)


def make_relay(sessions, link) -> OutboxRelay:
    return OutboxRelay(sessions, tables, link, poll_interval=0.1)


async def stream_messages(link: NatsLink) -> int:
    info = await link.js.stream_info(link.stream)
    return info.state.messages


async def unpublished(sessions, event_id: uuid.UUID) -> bool:
    async with sessions() as session:
        value = await session.scalar(
            sa.select(tables.outbox.c.published_at).where(tables.outbox.c.event_id == event_id)
        )
        return value is None


class CountingHotPath:
    """The one method `shared.db.GroupCommit` (and `shared.ratelimit.CellTakes`) uses, on a plain
    asyncpg pool, counting the statements it sends."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.statements = 0

    async def fetch_sql(self, sql: str, *args):
        self.statements += 1
        return await self.pool.fetch(sql, *args)
