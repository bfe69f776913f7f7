"""`shared.db.Stage`: a bulk write's staging table whose amounts travel as text. What comes out of
the stage, cast back, must be the very numbers that went in (compared as Decimals and as the text
Postgres stores), whatever their shape."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest

from shared.config import libpq_url
from shared.db import Stage

AMOUNTS = [Decimal("0"), Decimal("-0.00"), Decimal("45.00"), Decimal("0.125"), Decimal("1E-7"), Decimal("0E-8"),
           Decimal("1E+1"), Decimal("-12.3400"), Decimal("99999999999999.9999"), Decimal("0.20000")]


@pytest.fixture
async def conn(database_url):
    conn = await asyncpg.connect(libpq_url(database_url))
    await conn.execute("CREATE TEMP TABLE stage_target (id int PRIMARY KEY, label text, amount numeric(24, 8), "
                       "fee numeric(24, 8) NOT NULL)")
    yield conn
    await conn.close()


async def test_amounts_come_out_of_the_stage_exactly_as_they_went_in(conn):
    stage = Stage("stage_in", "stage_target", ("id", "label", "amount", "fee"), ("amount", "fee"))
    rows = [(i, f"row {i}", None if i == 3 else amount, amount) for i, amount in enumerate(AMOUNTS)]
    async with conn.transaction():
        await stage.copy(conn, stage.records(rows))
        await conn.execute(f"INSERT INTO stage_target SELECT {stage.select} FROM stage_in")
        # The stage's own columns hold text; the target's numeric.
        kinds = dict(await conn.fetch("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                      "WHERE attrelid = 'stage_in'::regclass AND attnum > 0"))
        assert kinds == {"id": "integer", "label": "text", "amount": "text", "fee": "text"}
    got = {r["id"]: (r["amount"], r["fee"]) for r in await conn.fetch("SELECT id, amount, fee FROM stage_target")}
    assert got == {i: (None if i == 3 else amount, amount) for i, amount in enumerate(AMOUNTS)}
    # ON COMMIT DELETE ROWS: the stage is empty after the transaction, and a second batch in the
    # same session reuses it (CREATE ... IF NOT EXISTS).
    assert await conn.fetchval("SELECT count(*) FROM stage_in") == 0
    async with conn.transaction():
        await stage.copy(conn, stage.records([(100, None, Decimal("1.5"), Decimal("2"))]))
        assert await conn.fetchval(f"SELECT {stage.select} FROM stage_in") == 100


def test_records_turn_only_the_text_columns_into_text_and_keep_nulls():
    stage = Stage("s", "t", ("a", "b", "c"), ("b",))
    assert stage.records([(Decimal("1.10"), Decimal("-0.5"), 3), (None, None, None)]) == [
        (Decimal("1.10"), "-0.5", 3), (None, None, None)]
    assert stage.select == "a, b::numeric AS b, c"


def test_a_text_column_must_be_one_of_the_columns():
    with pytest.raises(ValueError, match="amount"):
        Stage("s", "t", ("a", "b"), ("amount",))
