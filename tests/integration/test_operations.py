"""Operator commands against the services as real processes: rolling barbers back to centralized
payments (`tools.rollback`, `make rollback`)."""

from __future__ import annotations

import itertools
import os

import aiohttp
import nats
import pytest
import sqlalchemy as sa

from services.router import tables as rt
from shared.auth import issue_token
from shared.db import PlatformTables
from shared.events import ConnectionChanged, encode_event, new_event
from tests.conftest import JWT_SECRET
from tests.integration.router_support import admin, barber
from tests.support import eventually, free_port, running_process
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
