"""The external service as a real process for integration tests, and the helpers its test modules
share: connecting barbers' accounts, charging through the internal API, signing notices, peeking
at rows and events. Import the fixtures into a test module to use them (each module gets its own
external process)."""

from __future__ import annotations

import os
import time
import uuid
from decimal import Decimal

import aiohttp
import msgspec
import pytest
import sqlalchemy as sa
import stripe

from services.external import tables as et
from shared.auth import issue_token
from shared.db import PlatformTables
from tests.conftest import JWT_SECRET
from tests.integration.router_support import barber
from tests.support import eventually, free_port, running_process

BASE = "/api/v1/external-payments"
outbox = PlatformTables(et.metadata).outbox
SERVICE = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 1, 'service')}"}


@pytest.fixture(scope="module")
def external_log(tmp_path_factory):
    return tmp_path_factory.mktemp("external") / "external.log"


@pytest.fixture(scope="module")
def external_url(service_env, stripe_sim, square_sim, paypal_sim, external_log):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **service_env, "PORT": str(port), "WEBHOOK_BASE_URL": url, "STRIPE_API_BASE": stripe_sim,
           "SQUARE_API_BASE": square_sim, "PAYPAL_API_BASE": paypal_sim,
           "PROCESSOR_TIMEOUT": "2", "PENDING_SWEEP_AFTER": "9", "SWEEP_INTERVAL": "1", "STATS_INTERVAL": "1",
           "LOG_LEVEL": "info",
           "RATE_LIMIT_PER_MINUTE": "100000"}
    with running_process(["services.external"], env, ready_url=url + "/health/ready", log=external_log):
        yield url


@pytest.fixture
async def http(external_url):
    async with aiohttp.ClientSession(base_url=external_url) as session:
        yield session


@pytest.fixture(scope="module")
def router_url(service_env, stripe_sim, external_url, tmp_path_factory):
    """A router process whose external payments go to this module's external process."""
    port = free_port()
    env = {**os.environ, **service_env, "PORT": str(port), "STRIPE_SECRET_KEY": "sk_test_platform_ext",
           "STRIPE_API_BASE": stripe_sim, "EXTERNAL_SERVICE_URL": external_url, "LOG_LEVEL": "warning",
           "RATE_LIMIT_PER_MINUTE": "100000"}
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("router-ext") / "router.log"
    with running_process(["services.router"], env, ready_url=url + "/health/ready", log=log):
        yield url


async def call(http, method: str, path: str, headers: dict, json=None) -> tuple[int, dict]:
    async with http.request(method, path, headers=headers, json=json) as resp:
        return resp.status, await resp.json(content_type=None)


async def rows(db, query) -> list[dict]:
    async with db.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def events(db, event_type: str, key: str, value) -> list[dict]:
    found = await rows(db, sa.select(outbox.c.body).where(outbox.c.event_type == event_type).order_by(outbox.c.id))
    payloads = [msgspec.json.decode(r["body"])["payload"] for r in found]
    return [p for p in payloads if p.get(key) == value]


async def transaction(db, transaction_id: str) -> dict:
    return (await rows(db, sa.select(et.transactions).where(et.transactions.c.id == uuid.UUID(transaction_id))))[0]


def stripe_key(b: int) -> str:
    return f"sk_test_barber_{b}_own_account"


async def connect_stripe(http, b: int, *, key: str | None = None, account_id: str | None = None, **extra) -> dict:
    status, body = await call(http, "POST", f"{BASE}/connections", barber(b), {
        "processor": "stripe", "account_id": account_id or f"acct_own_{b}", "account_name": "Own Stripe",
        "credentials": {"secret_key": key or stripe_key(b)}, "default_currency": "USD", **extra})
    assert status == 201, body
    return body


def charge_body(b: int, connection_id: int, amount: str = "50.00", method: str = "pm_card_visa", **extra) -> dict:
    return {"route_id": str(uuid.uuid4()), "barber_id": b, "connection_id": connection_id, "appointment_id": 7,
            "amount": amount, "currency": "USD", "commission_rate": "0.10",
            "commission_amount": str((Decimal(amount) * Decimal("0.10")).quantize(Decimal("0.01"))),
            "estimated_processor_fee": "1.75", "payment_method": method, **extra}


def sdk(stripe_sim: str, key: str) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": stripe_sim}, http_client=stripe.AIOHTTPClient())


# What each processor takes: credentials, and the sandbox's good and declined payment methods.
PROCESSORS = {
    "stripe": (lambda b: {"secret_key": stripe_key(b)}, "pm_card_visa", "pm_card_chargeDeclined"),
    "square": (lambda b: {"access_token": f"EAAAsq-barber-{b}-token", "location_id": f"LBARBER{b}"},
               "cnon:card-nonce-ok", "cnon:card-nonce-declined"),
    "paypal": (lambda b: {"client_id": f"AbarberClient{b}", "client_secret": f"EPaypalSecret-{b}-xyz"},
               "paypal-approved", "paypal-declined"),
}


async def connect(http, b: int, processor: str, **extra) -> dict:
    credentials = PROCESSORS[processor][0](b)
    status, body = await call(http, "POST", f"{BASE}/connections", barber(b), {
        "processor": processor, "account_id": f"{processor}-own-{b}", "credentials": credentials,
        "default_currency": "USD", **extra})
    assert status == 201, body
    return body


async def webhook_events_of(db, connection_id: int) -> list[dict]:
    return await rows(db, sa.select(et.webhook_events).where(et.webhook_events.c.connection_id == connection_id))


async def post_stripe_notice(http, connection_id: int, secret: str, event: dict) -> tuple[int, dict]:
    """A Stripe event body signed with `secret` (as a barber holding its own signing secret could)."""
    body = msgspec.json.encode({"created": int(time.time()), **event})
    now = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{now}.{body.decode()}", secret)
    async with http.post(f"/api/v1/webhooks/stripe/{connection_id}", data=body,
                         headers={"Stripe-Signature": f"t={now},v1={signature}"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def deliveries_answered(stripe_sim: str, url: str, event_type: str, count: int = 1) -> bool:
    """The Stripe simulator delivered `count` events of that type to `url`, and each was answered."""
    from tests.integration.router_support import sim_call

    state = await sim_call(stripe_sim, "GET", "/_sim/deliveries")
    mine = [d for d in state["data"] if d["url"] == url and d["type"] == event_type]
    return len(mine) >= count and all(d["status"] is not None for d in mine)


async def wait_applied(db, connection_id: int, event_type: str, count: int = 1, timeout: float = 15) -> list[dict]:
    """Wait until `count` notices of that type were taken for the connection (their effect commits
    with the webhook event's row, so there is nothing more to wait for after it)."""
    async def taken():
        found = [e for e in await webhook_events_of(db, connection_id) if e["event_type"] == event_type]
        return found if len(found) >= count else None

    return await eventually(taken, timeout=timeout)
