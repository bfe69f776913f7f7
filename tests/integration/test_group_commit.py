"""`shared.db.GroupCommit` against a real Postgres: concurrent single-row inserts share statements,
each caller learns whether its own row went in, nobody is answered before its row is committed,
and a bad row fails only its own caller."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import pytest

from shared.db import GroupCommit
from tests.integration.platform_support import CountingHotPath

TABLE = "platform_test.group_rows"
INSERT = (f"INSERT INTO {TABLE} (key, amount) SELECT * FROM unnest($1::text[], $2::numeric[]) "
          "ON CONFLICT DO NOTHING RETURNING key")


@pytest.fixture
async def pool(database_url, platform_engine):
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    await pool.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (key text PRIMARY KEY, amount numeric CHECK (amount > 0))")
    yield pool
    await pool.close()


async def test_concurrent_rows_share_statements_and_each_caller_waits_for_its_own(pool):
    hot = CountingHotPath(pool)
    group = GroupCommit(hot, INSERT)
    keys = [f"k-{uuid.uuid4()}" for _ in range(200)]

    async def insert_then_look(key: str) -> bool:
        inserted = await group.insert((key, Decimal("1.50")), key)
        # Answered: the row is committed, so another connection sees it already.
        seen = await pool.fetchval(f"SELECT count(*) FROM {TABLE} WHERE key = $1", key)
        return inserted and seen == 1

    assert all(await asyncio.gather(*(insert_then_look(k) for k in keys)))
    assert hot.statements < len(keys) / 5  # grouped, not one statement per row
    assert await pool.fetchval(f"SELECT count(*) FROM {TABLE} WHERE key = ANY($1)", keys) == len(keys)

    again = keys[:10] + [f"k-{uuid.uuid4()}" for _ in range(10)]
    answers = await asyncio.gather(*(group.insert((k, Decimal("2")), k) for k in again))
    assert answers == [False] * 10 + [True] * 10  # each learns about its own row only


async def test_a_bad_row_fails_only_its_caller(pool):
    group = GroupCommit(CountingHotPath(pool), INSERT)
    keys = [f"b-{uuid.uuid4()}" for _ in range(20)]
    amounts = [Decimal("-1") if i == 7 else Decimal("3") for i in range(20)]
    answers = await asyncio.gather(*(group.insert((k, a), k) for k, a in zip(keys, amounts, strict=True)),
                                   return_exceptions=True)
    assert isinstance(answers[7], asyncpg.CheckViolationError)
    assert [a for i, a in enumerate(answers) if i != 7] == [True] * 19
    assert await pool.fetchval(f"SELECT count(*) FROM {TABLE} WHERE key = ANY($1)", keys) == 19
