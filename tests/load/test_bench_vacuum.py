"""`make bench` on a Postgres whose autovacuum is off (this machine's CI config) vacuums the
suite's database before each stage, as a production server's autovacuum would have: without it
every settled payment's old row version stays, and each run measures a more bloated database than
the one before (tests/load/README.md, "Sixth session")."""

from __future__ import annotations

import asyncpg

from shared.config import libpq_url
from tests.load.bench import vacuum_when_autovacuum_is_off


async def test_vacuums_exactly_when_the_server_does_not(database_url):
    conn = await asyncpg.connect(libpq_url(database_url))
    try:
        autovacuum = await conn.fetchval("SHOW autovacuum")
        await conn.execute("DROP TABLE IF EXISTS bench_vacuum_probe")
        await conn.execute("CREATE TABLE bench_vacuum_probe (id int PRIMARY KEY, n int)")
        await conn.execute("INSERT INTO bench_vacuum_probe SELECT g, 0 FROM generate_series(1, 1000) AS g")
        await conn.execute("UPDATE bench_vacuum_probe SET n = n + 1")  # 1,000 dead row versions
        seconds = await vacuum_when_autovacuum_is_off(database_url)
        manual_vacuums = await conn.fetchval(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'bench_vacuum_probe'")
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_vacuum_probe")
        await conn.close()
    if autovacuum == "off":
        assert seconds is not None and manual_vacuums == 1
    else:  # the server's own autovacuum looks after it: the bench leaves the database alone
        assert seconds is None and manual_vacuums == 0
