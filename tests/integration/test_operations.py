"""Operator commands: rolling barbers back to centralized payments (`tools.rollback`, against the
router as a real process), and backup and restore (`tools.backup`, on databases of their own)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os

import aiohttp
import nats
import pytest
import sqlalchemy as sa

from services.router import tables as rt
from shared.auth import issue_token
from shared.config import libpq_url
from shared.db import PlatformTables
from shared.events import ConnectionChanged, encode_event, new_event
from tests.conftest import JWT_SECRET
from tests.integration.router_support import admin, barber
from tests.support import eventually, free_port, running_process, scratch_database
from tools import rollback

HP = "/api/v1/hybrid-payments"
_ids = itertools.count(1)
outbox = PlatformTables(rt.metadata).outbox


@pytest.fixture(scope="module")
def router_url(service_env, tmp_path_factory):
    port = free_port()
    env = {**os.environ, **service_env, "PORT": str(port), "STRIPE_SECRET_KEY": "", "LOG_LEVEL": "warning",
           "RATE_LIMIT_PER_MINUTE": "100000"}
    url = f"http://127.0.0.1:{port}"
    with running_process(["services.router"], env, ready_url=url + "/health/ready",
                         log=tmp_path_factory.mktemp("ops") / "router.log"):
        yield url


async def decentralized_barber(http, js, event_names) -> int:
    """A barber paid on its own Square account: its routes are external."""
    b = 870_000 + next(_ids)
    async with http.put(f"{HP}/config/{b}", headers=admin(), json={
            "payment_mode": "decentralized", "preferred_processor": "square", "fallback_enabled": False,
            "connect_account_id": f"acct_1Ops{b}"}) as resp:
        assert resp.status == 200, await resp.text()
    event = new_event(ConnectionChanged(connection_id=b, barber_id=b, processor="square", account_id=f"sq-{b}",
                                        status="active", default_currency="USD", supports_payments=True,
                                        supports_refunds=True))
    await js.publish(event_names["EVENT_SUBJECT_PREFIX"] + "connection.changed", encode_event(event))

    async def external():  # once the router has heard of the connection (422 no route until then)
        async with http.post(f"{HP}/route", headers=barber(b), json={"appointment_id": 1, "amount": "50.00"}) as r:
            return r.status == 200 and (await r.json())["payment_type"] == "external"

    await eventually(external, timeout=30)
    return b


async def test_rollback_puts_barbers_back_on_centralized_payments(router_url, db, infra, event_names):
    nc = await nats.connect(infra.nats_url)
    token = issue_token(JWT_SECRET, 1, "admin")
    async with aiohttp.ClientSession(base_url=router_url) as http:
        one, other = [await decentralized_barber(http, nc.jetstream(), event_names) for _ in range(2)]
        dry = await rollback.rollback(router_url, token, [one], dry_run=True)
        assert [(o.result, o.before, o.after) for o in dry] == [(
            "would roll back", "decentralized, fallback off, prefers square",
            "centralized, fallback on, prefers square")]
        done = await rollback.rollback(router_url, token, [one])
        assert [o.result for o in done] == ["rolled back"]
        # The next payment of the rolled-back barber is centralized; the other barber is untouched.
        async with http.post(f"{HP}/route", headers=barber(one), json={"appointment_id": 2, "amount": "50.00"}) as r:
            assert (await r.json())["payment_type"] == "centralized"
        async with http.post(f"{HP}/route", headers=barber(other), json={"appointment_id": 2, "amount": "50.00"}) as r:
            assert (await r.json())["payment_type"] == "external"
        again = await rollback.rollback(router_url, token, [one])  # twice: nothing more changes
        assert [o.result for o in again] == ["already centralized"]
    await nc.close()
    async with db.connect() as conn:
        bodies = (await conn.execute(sa.select(outbox.c.body).where(outbox.c.event_type == "config.changed")
                                     .order_by(outbox.c.id))).scalars().all()
    changes = [b for b in bodies if f'"barber_id":{one},'.encode() in b]
    assert len(changes) == 2 and b'"payment_mode":"centralized"' in changes[-1]  # set up, then rolled back
    # --all finds every configured barber (read from the router's table) and rolls the rest back.
    assert other in await rollback.configured_barbers(db.url.render_as_string(hide_password=False))


def test_the_command_says_when_the_router_cannot_be_reached(capsys):
    code = rollback.main(["--barber", "5", "--router-url", f"http://127.0.0.1:{free_port()}",
                          "--jwt-secret", JWT_SECRET])
    assert code == 2 and "HYBRID_PAYMENTS_ENABLED=false" in capsys.readouterr().err


# ---- backup and restore ---------------------------------------------------------------------------------

@pytest.fixture
def suite_database(infra):
    """A database of its own with every service's schema at head."""
    with scratch_database(infra, f"hp_ops_{next(_ids)}_{os.getpid()}") as url:
        yield libpq_url(url)


async def tool(database_url: str, *args: str) -> int:
    from tools import backup

    return await asyncio.to_thread(backup.main, ["--database-url", database_url, *args])


async def test_a_backup_is_proved_and_restores_what_was_dumped(suite_database, tmp_path):
    import asyncpg

    from tools import backup

    conn = await asyncpg.connect(suite_database)
    try:
        await conn.execute("INSERT INTO router.hybrid_payment_configs (barber_id, payment_mode, commission_rate, "
                           "version) VALUES (7, 'hybrid', 0.125, 3)")
        assert await tool(suite_database, "backup", "--out", str(tmp_path)) == 0
        [dumped] = list(tmp_path.glob("hybrid-payments-*.dump"))
        manifest = json.loads(dumped.with_suffix(".json").read_text())
        assert manifest["row_counts"]["router.hybrid_payment_configs"] == 1
        assert set(manifest["revisions"]) == {"router", "external", "collections", "analytics"}
        # Things go wrong after the backup ...
        await conn.execute("DELETE FROM router.hybrid_payment_configs")
        await conn.execute("INSERT INTO analytics.daily_collections VALUES ('2026-11-26', 0, 'USD', 1, 5)")
        # ... the restore refuses while another session (here: this one) is connected ...
        assert await tool(suite_database, "restore", str(dumped)) == 1
    finally:
        await conn.close()
    # ... and puts back exactly what was dumped once nobody is.
    assert await tool(suite_database, "restore", str(dumped)) == 0
    conn = await asyncpg.connect(suite_database)
    rows = await conn.fetch("SELECT barber_id, payment_mode, version FROM router.hybrid_payment_configs")
    await conn.close()
    assert [tuple(r) for r in rows] == [(7, "hybrid", 3)]
    found = await backup.manifest_of(suite_database, manifest["schemas"])
    assert found["row_counts"]["analytics.daily_collections"] == 0 and found["revisions"] == manifest["revisions"]


async def test_a_dump_that_does_not_match_its_manifest_is_caught(suite_database, tmp_path):
    from tools import backup

    assert await tool(suite_database, "backup", "--out", str(tmp_path)) == 0
    [dumped] = list(tmp_path.glob("hybrid-payments-*.dump"))
    manifest_path = dumped.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    manifest["row_counts"]["router.hybrid_payment_configs"] = 5  # as if rows went missing from the dump
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(backup.BackupError, match="row count of router.hybrid_payment_configs: expected 5, found 0"):
        await asyncio.to_thread(backup.prove, dumped, suite_database)
