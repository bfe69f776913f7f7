"""The whole suite conserves money, end to end: `make run` (gateway, the four services and the
three processor simulators as real processes over real Postgres and NATS), barbers in every mode
on every processor, payments routed and processed through the gateway (some declined, some
refunded) while every simulator delivers each webhook twice. Then, against sums this test keeps
itself in integer cents from what the gateway answered:

- analytics shows each barber exactly what was processed (counts, volume, refunds, commission kept);
- collections accrued, for each barber, exactly the commission kept on its own processors;
- `POST /run` with `force` collects it on the platform account, and for every barber
  collections + unbilled == accrued, and analytics' collected and outstanding agree.

It runs twice: one worker process per service, and two (`WEB_CONCURRENCY=2`).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from shared.auth import issue_token
from tests.e2e.ledger import Barber, analytics_shows, collect, collections_accrued, pay, set_up
from tests.run_support import make_run

_ids = itertools.count(1)

@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def suite(request, service_env, tmp_path_factory):
    """The suite with one worker process per service, then with two (`WEB_CONCURRENCY=2`): with
    two, consumers share durable consumers, one relay of each service leads, jobs take their lock
    per run, and every sum below must still come out exact."""
    env = {**service_env, "WEB_CONCURRENCY": str(request.param)}
    with make_run(env, tmp_path_factory.mktemp(f"conserve{request.param}")) as running:
        for service in ("router", "external", "collections", "analytics"):  # granian's workers, forked
            pid = running.state["children"][service]
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            assert len(children) == request.param, f"{service}: {len(children)} workers"
        yield running


def barbers() -> list[Barber]:
    base = 981_000 + next(_ids) * 10
    return [
        Barber(base + 1, "centralized", None, "0.20", [("45.00", True, None), ("80.00", True, "30.00"),
                                                        ("25.00", False, None)]),
        Barber(base + 2, "decentralized", "stripe", "0.10", [("120.00", True, None), ("60.00", True, "all"),
                                                             ("15.00", False, None), ("333.33", True, "100.00")]),
        Barber(base + 3, "decentralized", "square", "0.15", [("200.00", True, None), ("99.99", True, "33.33"),
                                                             ("12.00", False, None)]),
        Barber(base + 4, "decentralized", "paypal", "0.125", [("150.00", True, None), ("75.50", True, "20.00"),
                                                              ("40.00", False, None)]),
        # Hybrid: below 50.00 on the platform, from 50.00 on its own Square.
        Barber(base + 5, "hybrid", "square", "0.20", [("30.00", True, None), ("70.00", True, None),
                                                      ("90.00", True, "45.00"), ("20.00", False, None)]),
    ]


async def test_money_is_conserved_across_the_four_services(suite):
    state, urls = suite.state, suite.state["urls"]
    secret = state["jwt_secret"]
    admin = {"Authorization": f"Bearer {issue_token(secret, 1000, 'admin')}"}
    team = barbers()
    async with aiohttp.ClientSession(base_url=urls["gateway"]) as http, aiohttp.ClientSession() as raw:
        for processor in ("stripe", "square", "paypal"):
            async with raw.post(urls[f"{processor}-sim"] + "/_sim/webhooks/duplicate", json={"enabled": True}) as r:
                assert r.status == 200
        try:
            for b in team:
                await set_up(http, admin, b, secret)
            for b in team:
                await pay(http, b, secret)
        finally:
            for processor in ("stripe", "square", "paypal"):
                async with raw.post(urls[f"{processor}-sim"] + "/_sim/webhooks/duplicate", json={"enabled": False}):
                    pass
        # Every payment was made just now: a range of today and its neighbours holds them all, even
        # across a midnight.
        today = datetime.now(UTC).date()
        days = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}
        for b in team:
            await analytics_shows(http, admin, b, days)
            await collections_accrued(http, admin, b)
        for b in team:
            await collect(http, admin, b, days)
