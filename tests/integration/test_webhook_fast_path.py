"""The external service's webhook fast path (`webhook_fast` in `services/external/controllers.py`,
served by `shared.edge`) answers exactly as the Litestar route it stands beside: each notice below
goes to the service with its fast path and to the same service without it, and the two answers
must match (status, headers, body; the event id aside where each side gets its own event), and
the fast path must have served the cases it takes itself (Litestar read no body for them).
"""

from __future__ import annotations

import itertools
import time

import msgspec
import pytest
import sqlalchemy as sa
import stripe
from litestar.connection import Request
from litestar.testing import AsyncTestClient

from services.external import tables as et
from services.external.app import create_app
from services.external.settings import ExternalSettings
from shared.edge import FAST_BODY_LIMIT, FAST_PATH_OPT
from tests.integration.external_support import (  # noqa: F401 (fixtures)
    connect_stripe,
    external_log,
    external_url,
    http,
    rows,
    sdk,
    stripe_key,
)
from tests.support import count_body_reads

_ids = itertools.count(1)
WEBHOOKS = "/api/v1/webhooks"
SAME_HEADERS_BUT = {"date", "x-request-id", "content-length"}


def next_barber() -> int:
    return 640_000 + next(_ids)


@pytest.fixture(scope="module")
async def clients(external_url, make_settings, stripe_sim):
    """(fast, plain): the service in process as served, and the same without the fast path.
    (`external_url` is there for its migrations and the connections' API.)"""
    def app(fast: bool):
        settings = make_settings(ExternalSettings, stripe_api_base=stripe_sim, log_level="error",
                                 rate_limit_per_minute=100_000, sweep_interval=3600.0, reconcile_interval=3600.0)
        made = create_app(settings)
        handlers = [h for r in made.routes if r.path.startswith(WEBHOOKS)
                    for h in getattr(r, "route_handlers", ()) if "POST" in h.http_methods]
        assert len(handlers) == 1 and FAST_PATH_OPT in handlers[0].opt
        if not fast:
            del handlers[0].opt[FAST_PATH_OPT]
        return made

    async with AsyncTestClient(app(True)) as fast, AsyncTestClient(app(False)) as plain:
        yield fast, plain


@pytest.fixture
def litestar_reads(monkeypatch):
    """The requests whose body Litestar read (the fast path reads it itself)."""
    return count_body_reads(monkeypatch, Request, "body")


def signed(secret: str, event: dict) -> tuple[bytes, dict]:
    now = int(time.time())
    body = msgspec.json.encode({"created": now, "object": "event", **event})
    signature = stripe.WebhookSignature._compute_signature(f"{now}.{body.decode()}", secret)
    return body, {"Stripe-Signature": f"t={now},v1={signature}", "content-type": "application/json"}


def answer(response) -> tuple:
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    if response.status_code == 200:
        assert body.pop("event_id")  # each side's own event
    headers = sorted((k, v) for k, v in response.headers.items() if k not in SAME_HEADERS_BUT)
    return response.status_code, headers, body


async def both(clients, reads, *, served_fast: bool, path: str, fast: tuple[bytes, dict],
               plain: tuple[bytes, dict] | None = None, read: bool = True) -> tuple:
    """`fast` (body, headers) to the service with the fast path, `plain` (the same unless given) to
    the one without; the answers must match. `served_fast`: whether the fast path answered (else
    Litestar read the body on both sides, unless `read` is False: its path parameters refused it)."""
    fast_client, plain_client = clients
    before = len(reads)
    request_id = {"x-request-id": f"webhook-fast-path-{before}"}
    plain = plain or fast
    a = await fast_client.post(path, content=fast[0], headers={**fast[1], **request_id})
    b = await plain_client.post(path, content=plain[0], headers={**plain[1], **request_id})
    assert a.headers["x-request-id"] == b.headers["x-request-id"] == request_id["x-request-id"]
    assert len(reads) == before + (1 if served_fast else 2 if read else 0), a.text
    assert answer(a) == answer(b)
    return answer(a)


async def paid_at_stripe(stripe_sim: str, b: int, cents: int) -> str:
    intent = await sdk(stripe_sim, stripe_key(b)).v1.payment_intents.create_async(params={
        "amount": cents, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    return intent.id


def succeeded(event_id: str, intent_id: str) -> dict:
    return {"id": event_id, "type": "payment_intent.succeeded",
            "data": {"object": {"id": intent_id, "object": "payment_intent"}}}


async def test_notices_are_applied_and_redeliveries_answered_alike(clients, http, db, litestar_reads, stripe_sim):
    b = next_barber()
    secret = f"whsec_fast_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    path = f"{WEBHOOKS}/stripe/{connection['id']}"
    first, second = await paid_at_stripe(stripe_sim, b, 4200), await paid_at_stripe(stripe_sim, b, 4300)
    to_fast, to_plain = signed(secret, succeeded(f"evt_fast_{b}", first)), signed(secret, succeeded(f"evt_plain_{b}", second))
    status, _, ack = await both(clients, litestar_reads, served_fast=True, path=path, fast=to_fast, plain=to_plain)
    assert (status, ack["outcome"], ack["duplicate"]) == (200, "applied", False)
    # Each event again, to the other side: a redelivery, answered without recording anything twice.
    status, _, ack = await both(clients, litestar_reads, served_fast=True, path=path,
                                fast=signed(secret, succeeded(f"evt_plain_{b}", second)),
                                plain=signed(secret, succeeded(f"evt_fast_{b}", first)))
    assert (status, ack["outcome"], ack["duplicate"]) == (200, "duplicate", True)
    recorded = await rows(db, sa.select(et.transactions.c.external_transaction_id, et.transactions.c.amount)
                          .where(et.transactions.c.connection_id == connection["id"]))
    assert sorted((r["external_transaction_id"], str(r["amount"])) for r in recorded) == [
        *sorted([(first, "42.0000"), (second, "43.0000")])]
    # An event type nobody acts on: 200, ignored, by both.
    status, _, ack = await both(clients, litestar_reads, served_fast=True, path=path,
                                fast=signed(secret, {"id": f"evt_other_a_{b}", "type": "customer.created",
                                                     "data": {"object": {"id": "cus_1", "object": "customer"}}}),
                                plain=signed(secret, {"id": f"evt_other_b_{b}", "type": "customer.created",
                                                      "data": {"object": {"id": "cus_1", "object": "customer"}}}))
    assert (status, ack["outcome"]) == (200, "ignored")


async def test_refusals_match(clients, http, litestar_reads, stripe_sim):
    b = next_barber()
    secret = f"whsec_refusals_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    notice = succeeded(f"evt_refused_{b}", await paid_at_stripe(stripe_sim, b, 1000))
    body, headers = signed(secret, notice)
    path = f"{WEBHOOKS}/stripe/{connection['id']}"
    cases = [  # (path, body and headers, served by the fast path, status, code; None: Litestar's)
        (path, signed("whsec_not_the_secret", notice), True, 400, "invalid_signature"),
        (path, (body, {"content-type": "application/json"}), True, 400, "invalid_signature"),  # unsigned
        (path, (body + b" ", headers), True, 400, "invalid_signature"),  # the body changed after signing
        (f"{WEBHOOKS}/square/{connection['id']}", (body, headers), True, 404, "not_found"),  # not its processor
        (f"{WEBHOOKS}/stripe/{2**31 - 1}", (body, headers), True, 404, "not_found"),  # no such connection
        (path, signed(secret, {**notice, "data": {"object": {"id": "pi_\x00", "object": "payment_intent"}}}),
         True, 400, "invalid_event"),
        (f"{WEBHOOKS}/visa/{connection['id']}", (body, headers), False, 422, None),  # not a processor
        (f"{WEBHOOKS}/stripe/0", (body, headers), False, 422, None),  # ids start at 1
        (f"{WEBHOOKS}/stripe/{2**31}", (body, headers), False, 422, None),  # past the column
    ]
    for where, sent, served_fast, expected, code in cases:
        status, _, out = await both(clients, litestar_reads, served_fast=served_fast, path=where, fast=sent,
                                    read=code is not None)
        assert status == expected and out["code"] and (code is None or out["code"] == code), (where, out)


async def test_a_body_past_the_edges_limit_goes_to_litestar(clients, http, litestar_reads, stripe_sim):
    b = next_barber()
    secret = f"whsec_large_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    path = f"{WEBHOOKS}/stripe/{connection['id']}"
    first, second = await paid_at_stripe(stripe_sim, b, 500), await paid_at_stripe(stripe_sim, b, 600)

    def padded(event_id: str, intent: str) -> tuple[bytes, dict]:
        return signed(secret, {**succeeded(event_id, intent), "padding": "x" * FAST_BODY_LIMIT})

    status, _, ack = await both(clients, litestar_reads, served_fast=False, path=path,
                                fast=padded(f"evt_large_a_{b}", first), plain=padded(f"evt_large_b_{b}", second))
    assert (status, ack["outcome"]) == (200, "applied")
