"""`/route`'s fast path (`shared.edge`, `services.router.controllers.route_fast`) answers exactly as
the Litestar route it stands beside: every request below goes to the router with its fast path and
to the same router without it, and the two answers must match (status, headers, body; the new
route's id and time aside), and the fast path must have served the plain cases itself.
"""

from __future__ import annotations

import itertools

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.router.app import create_app
from services.router.settings import RouterSettings
from shared.edge import FAST_BODY_LIMIT, FAST_PATH_OPT
from shared.requests import ExactJSONRequest
from tests.integration.conftest import ROUTER_SIM_KEY
from tests.integration.router_support import BASE, admin, barber

_ids = itertools.count(1)
FRESH = ("route_id", "decided_at")  # new with every decision
SAME_HEADERS_BUT = {"date", "x-request-id"}


def next_barber() -> int:
    return 610_000 + next(_ids)


@pytest.fixture(scope="module")
async def plain_client(make_settings, stripe_sim):
    """The same router with `/route`'s fast path taken out of its route's options."""
    settings = make_settings(RouterSettings, stripe_secret_key=ROUTER_SIM_KEY, stripe_api_base=stripe_sim,
                             stripe_timeout=1.0, log_level="error", external_service_url="http://127.0.0.1:1")
    app = create_app(settings)
    handlers = [h for r in app.routes if r.path == f"{BASE}/route"
                for h in getattr(r, "route_handlers", ()) if "POST" in h.http_methods]
    assert handlers and all(FAST_PATH_OPT in h.opt for h in handlers)
    for handler in handlers:
        del handler.opt[FAST_PATH_OPT]
    async with AsyncTestClient(app) as test_client:
        yield test_client


@pytest.fixture
def litestar_reads(monkeypatch):
    """How many requests Litestar decoded a JSON body for (the fast path does not)."""
    reads = []
    original = ExactJSONRequest.json

    async def counted(self):
        reads.append(self.url.path)
        return await original(self)

    monkeypatch.setattr(ExactJSONRequest, "json", counted)
    return reads


def answer(response) -> tuple:
    body = response.json()
    if isinstance(body, dict) and response.status_code == 200:
        for name in FRESH:
            assert body.pop(name)  # present, and not compared
    headers = sorted((k, v) for k, v in response.headers.items() if k not in SAME_HEADERS_BUT)
    return response.status_code, headers, body


async def both(client, plain_client, reads, *, served_fast: bool, headers: dict, **request) -> tuple:
    """Send the request to both routers; their answers must match. `served_fast`: whether the fast
    path answered it (Litestar then decoded no body), else Litestar did for both."""
    before = len(reads)
    fast = await client.post(f"{BASE}/route", headers=headers, **request)
    plain = await plain_client.post(f"{BASE}/route", headers=headers, **request)
    if request.get("content") != b"":  # (Litestar refuses an empty body before decoding it)
        assert len(reads) == before + (1 if served_fast else 2), fast.text
    assert answer(fast) == answer(plain)
    return answer(fast)


async def test_plain_decisions_match_the_litestar_route(client, plain_client, litestar_reads):
    b = next_barber()
    bodies = [
        {"barber_id": b, "appointment_id": 1, "amount": "50.00"},
        {"barber_id": b, "appointment_id": 2, "amount": 50},
        {"barber_id": b, "appointment_id": 3, "amount": 12.5, "currency": "usd", "client_id": 9},
        {"barber_id": b, "appointment_id": 4, "amount": "1000", "currency": "JPY"},
        {"barber_id": b, "appointment_id": 2**63 - 1, "amount": "0.01"},
    ]
    for body in bodies:
        status, _, out = await both(client, plain_client, litestar_reads, served_fast=True, headers=admin(), json=body)
        assert status == 200 and out["barber_id"] == b and out["appointment_id"] == body["appointment_id"]
    # A barber routes its own payments without naming itself.
    status, _, out = await both(client, plain_client, litestar_reads, served_fast=True, headers=barber(b),
                                json={"appointment_id": 7, "amount": "80.00"})
    assert status == 200 and out["barber_id"] == b and out["commission_amount"] == "16.00"
    # A body in a content type that is not JSON is read as JSON by the route too.
    status, *_ = await both(client, plain_client, litestar_reads, served_fast=True,
                            headers={**admin(), "content-type": "text/plain"},
                            content=msgspec.json.encode({"barber_id": b, "appointment_id": 8, "amount": 5}))
    assert status == 200


async def test_refusals_from_the_use_case_match(client, plain_client, litestar_reads):
    b = next_barber()
    cases = [
        (admin(), {"barber_id": b, "appointment_id": 1, "amount": "100000000.00"}),  # over the maximum
        (admin(), {"appointment_id": 1, "amount": "5.00"}),  # an admin must name the barber
        (barber(b), {"barber_id": b + 1, "appointment_id": 1, "amount": "5.00"}),  # another barber's
    ]
    for headers, body in cases:
        status, _, out = await both(client, plain_client, litestar_reads, served_fast=True, headers=headers,
                                    json=body)
        assert 400 <= status < 500 and out["code"], out
    # A decentralized barber without a connection has no route (422 no_payment_route).
    put = await client.put(f"{BASE}/config/{b}", headers=admin(),
                           json={"payment_mode": "decentralized", "fallback_enabled": False})
    assert put.status_code == 200, put.text
    status, _, out = await both(client, plain_client, litestar_reads, served_fast=True, headers=barber(b),
                                json={"appointment_id": 2, "amount": 60})
    assert (status, out["code"]) == (422, "no_payment_route")


@pytest.mark.parametrize("content", [
    b'{"appointment_id": 1, "amount": "50.001", "barber_id": 5}',
    b'{"appointment_id": 1, "amount": "1e3", "barber_id": 5}',
    b'{"appointment_id": 0, "amount": "5", "barber_id": 5}',
    b'{"appointment_id": 1, "amount": true, "barber_id": 5}',
    b'{"appointment_id": 1, "amount": "5", "barber_id": 5, "tip": 1}',
    b'{"appointment_id": 1, "amount": "5", "currency": "XXXX", "barber_id": 5}',
    b'{"amount": "5", "barber_id": 5}',
    b'{"appointment_id": 1, "amount": "5", "barber_id": 5',
    b"[" * 10_000 + b"]" * 10_000,
    b"null",
    b"",
])
async def test_bodies_the_fast_path_declines_get_litestars_answer(client, plain_client, litestar_reads, content):
    status, _, out = await both(client, plain_client, litestar_reads, served_fast=False,
                                headers={**admin(), "content-type": "application/json"}, content=content)
    assert 400 <= status < 500 and out["code"], out


async def test_a_body_past_the_limit_and_a_keyed_request_go_to_litestar(client, plain_client, litestar_reads):
    b = next_barber()
    padded = b'{"barber_id": %d, "appointment_id": 1, "amount": "5.00"}' % b + b" " * FAST_BODY_LIMIT
    status, *_ = await both(client, plain_client, litestar_reads, served_fast=False,
                            headers={**admin(), "content-type": "application/json"}, content=padded)
    assert status == 200
    before = len(litestar_reads)
    keyed = await client.post(f"{BASE}/route", headers={**admin(), "Idempotency-Key": f"fast-{b}"},
                              json={"barber_id": b, "appointment_id": 2, "amount": "5.00"})
    again = await client.post(f"{BASE}/route", headers={**admin(), "Idempotency-Key": f"fast-{b}"},
                              json={"barber_id": b, "appointment_id": 2, "amount": "5.00"})
    assert keyed.status_code == again.status_code == 200 and keyed.json() == again.json()
    assert len(litestar_reads) > before
