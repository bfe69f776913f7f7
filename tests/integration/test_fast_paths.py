"""The router's fast paths (`shared.edge`; `route_fast` and `process_fast` in
`services/router/controllers.py`) answer exactly as the Litestar routes they stand beside: every
request below goes to the router with its fast paths and to the same router without them, and the
two answers must match (status, headers, body; new ids and times aside), and the fast path must
have served the cases it takes itself.
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
from tests.support import count_body_reads

_ids = itertools.count(1)
# New with every decision or payment, so not compared (each must be there in a 200).
FRESH = {"/route": ("route_id", "decided_at"), "/process": ("route_id", "transaction_id", "external_transaction_id")}
# Compared apart: the request id is echoed (checked in `both`), the length follows the body (a new
# `decided_at` with 0 microseconds is 7 characters shorter).
SAME_HEADERS_BUT = {"date", "x-request-id", "content-length"}


def next_barber() -> int:
    return 610_000 + next(_ids)


@pytest.fixture(scope="module")
async def plain_client(make_settings, stripe_sim):
    """The same router with the fast paths taken out of their routes' options."""
    settings = make_settings(RouterSettings, stripe_secret_key=ROUTER_SIM_KEY, stripe_api_base=stripe_sim,
                             stripe_timeout=1.0, log_level="error", external_service_url="http://127.0.0.1:1")
    app = create_app(settings)
    handlers = [h for r in app.routes if r.path in (f"{BASE}/route", f"{BASE}/process")
                for h in getattr(r, "route_handlers", ()) if "POST" in h.http_methods]
    assert len(handlers) == 2 and all(FAST_PATH_OPT in h.opt for h in handlers)
    for handler in handlers:
        del handler.opt[FAST_PATH_OPT]
    async with AsyncTestClient(app) as test_client:
        yield test_client


@pytest.fixture
def litestar_reads(monkeypatch):
    """How many requests Litestar decoded a JSON body for (the fast path does not)."""
    return count_body_reads(monkeypatch, ExactJSONRequest, "json")


def answer(response, path: str = "/route") -> tuple:
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    if isinstance(body, dict) and response.status_code == 200:
        for name in FRESH[path]:
            assert body.pop(name)  # present, and not compared
    headers = sorted((k, v) for k, v in response.headers.items() if k not in SAME_HEADERS_BUT)
    return response.status_code, headers, body


async def both(client, plain_client, reads, *, served_fast: bool, headers: dict, path: str = "/route",
               plain_headers: dict | None = None, **request) -> tuple:
    """Send the request to both routers (`plain_headers` to the one without fast paths, when it
    needs a key of its own); their answers must match. `served_fast`: whether the fast path
    answered it (Litestar then decoded no body), else Litestar did for both."""
    before = len(reads)
    request_id = {"x-request-id": f"fast-path-test-{len(reads)}"}
    fast = await client.post(f"{BASE}{path}", headers={**headers, **request_id}, **request)
    plain = await plain_client.post(f"{BASE}{path}", headers={**(plain_headers or headers), **request_id}, **request)
    assert fast.headers["x-request-id"] == plain.headers["x-request-id"] == request_id["x-request-id"]
    if request.get("content") != b"":  # (Litestar refuses an empty body before decoding it)
        assert len(reads) == before + (1 if served_fast else 2), fast.text
    assert answer(fast, path) == answer(plain, path)
    return answer(fast, path)


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


async def test_a_body_past_the_limit_and_a_keyed_route_go_to_litestar(client, plain_client, litestar_reads):
    b = next_barber()
    padded = b'{"barber_id": %d, "appointment_id": 1, "amount": "5.00"}' % b + b" " * FAST_BODY_LIMIT
    status, *_ = await both(client, plain_client, litestar_reads, served_fast=False,
                            headers={**admin(), "content-type": "application/json"}, content=padded)
    assert status == 200
    body = {"barber_id": b, "appointment_id": 2, "amount": "5.00"}
    status, _, first = await both(client, plain_client, litestar_reads, served_fast=False,
                                  headers={**admin(), "Idempotency-Key": f"fast-{b}"},
                                  plain_headers={**admin(), "Idempotency-Key": f"plain-{b}"}, json=body)
    again = await client.post(f"{BASE}/route", headers={**admin(), "Idempotency-Key": f"fast-{b}"}, json=body)
    assert status == again.status_code == 200 and again.headers["idempotent-replayed"] == "true"


# ---- /process ------------------------------------------------------------------------------

def counted(action, calls: list):
    async def wrapped(*args, **kwargs):
        calls.append(args)
        return await action(*args, **kwargs)
    return wrapped


def keyed(headers: dict, key: str) -> dict:
    return {**headers, "Idempotency-Key": key}


async def paying_barber(client) -> int:
    """A barber paid on the platform (a payout account; the default commission, 0.20)."""
    b = next_barber()
    put = await client.put(f"{BASE}/config/{b}", headers=admin(), json={"connect_account_id": f"acct_{b}"})
    assert put.status_code == 200, put.text
    return b


async def test_route_and_pay_matches_the_litestar_route(client, plain_client, litestar_reads):
    b = await paying_barber(client)
    body = {"appointment_id": 1, "amount": "42.00", "payment_method": "pm_card_visa"}
    status, _, paid = await both(client, plain_client, litestar_reads, served_fast=True, path="/process",
                                 headers=keyed(barber(b), f"fast-{b}"), plain_headers=keyed(barber(b), f"plain-{b}"),
                                 json=body)
    assert status == 200 and (paid["status"], paid["amount"], paid["commission_amount"]) == ("completed", "42.00",
                                                                                             "8.40")
    # Without a key, and as an admin naming the barber.
    status, *_ = await both(client, plain_client, litestar_reads, served_fast=True, path="/process",
                            headers=admin(), json={**body, "barber_id": b, "appointment_id": 2})
    assert status == 200
    # Paying a route decided before (its id differs on each side, so each pays its own).
    routes = [await c.post(f"{BASE}/route", headers=barber(b), json={"appointment_id": 3, "amount": "9.99"})
              for c in (client, plain_client)]
    fast = await client.post(f"{BASE}/process", headers=barber(b),
                             json={"route_id": routes[0].json()["route_id"], "payment_method": "pm_card_visa"})
    plain = await plain_client.post(f"{BASE}/process", headers=barber(b),
                                    json={"route_id": routes[1].json()["route_id"], "payment_method": "pm_card_visa"})
    assert answer(fast, "/process") == answer(plain, "/process") and fast.json()["amount"] == "9.99"
    # A declined card: a remembered 402 on both.
    declined = {"appointment_id": 4, "amount": "25.00", "payment_method": "pm_card_chargeDeclined"}
    fast = await client.post(f"{BASE}/process", headers=keyed(barber(b), f"fast-d-{b}"), json=declined)
    plain = await plain_client.post(f"{BASE}/process", headers=keyed(barber(b), f"plain-d-{b}"), json=declined)
    assert fast.status_code == plain.status_code == 402
    assert {k: v for k, v in fast.json().items() if k != "transaction_id"} == {
        k: v for k, v in plain.json().items() if k != "transaction_id"}


async def test_a_key_used_through_one_path_is_honoured_by_the_other(client, plain_client, litestar_reads,
                                                                     monkeypatch):
    """The fingerprint the fast path stores is the Litestar route's: a retry served by either side
    replays the first answer, and another body under the key is refused alike. A retry tries the
    payment's first statement once (which finds the key taken), not once per side."""
    b = await paying_barber(client)
    body = {"appointment_id": 1, "amount": "30.00", "payment_method": "pm_card_visa"}
    before = len(litestar_reads)
    first = await client.post(f"{BASE}/process", headers=keyed(barber(b), f"k-{b}"), json=body)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    assert len(litestar_reads) == before  # the fast path paid it
    tries = []
    for app_client in (client, plain_client):
        payments = app_client.app.state.router.payments
        monkeypatch.setattr(payments, "process_payment", counted(payments.process_payment, tries))
    for retry_client in (plain_client, client):  # the fast side finds the key taken and declines
        before, tries[:] = len(litestar_reads), []
        retry = await retry_client.post(f"{BASE}/process", headers=keyed(barber(b), f"k-{b}"), json=body)
        assert len(litestar_reads) == before + 1
        assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
        assert retry.json() == first.json()
        assert len(tries) == 1, retry_client
    other = {**body, "amount": "31.00"}
    status, _, refused = await both(client, plain_client, litestar_reads, served_fast=False, path="/process",
                                    headers=keyed(barber(b), f"k-{b}"), json=other)
    assert status == 422, refused
    # ... and the other way round: first through Litestar, then a retry through the fast side.
    plain_first = await plain_client.post(f"{BASE}/process", headers=keyed(barber(b), f"p-{b}"), json=body)
    retry = await client.post(f"{BASE}/process", headers=keyed(barber(b), f"p-{b}"), json=body)
    assert plain_first.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == plain_first.json()


@pytest.mark.parametrize(("headers", "content"), [
    ({}, b'{"appointment_id": 1, "amount": "5.001", "payment_method": "pm_card_visa"}'),
    ({}, b'{"appointment_id": 1, "payment_method": "pm_card_visa"}'),
    ({}, b'{"appointment_id": 1, "amount": "5", "payment_method": "acct_123"}'),
    ({}, b'{"appointment_id": 1, "amount": "5"'),
    ({"Idempotency-Key": "x" * 256}, b'{"appointment_id": 1, "amount": "5.001", "payment_method": "pm_card_visa"}'),
])
async def test_process_bodies_the_fast_path_declines_get_litestars_answer(client, plain_client, litestar_reads,
                                                                         headers, content):
    b = next_barber()
    status, _, out = await both(client, plain_client, litestar_reads, served_fast=False, path="/process",
                                headers={**barber(b), **headers, "content-type": "application/json"},
                                content=content)
    assert status == 422 or status == 400, out


async def test_a_bad_key_is_refused_alike(client, plain_client, litestar_reads):
    b = next_barber()
    status, _, out = await both(client, plain_client, litestar_reads, served_fast=True, path="/process",
                                headers=keyed(barber(b), "x" * 256),
                                json={"appointment_id": 1, "amount": "5", "payment_method": "pm_card_visa"})
    assert (status, out["field"]) == (422, "Idempotency-Key")
