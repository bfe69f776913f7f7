"""Webhook bursts: POST signed Stripe and Square webhook events to the external service's
`/api/v1/webhooks/{stripe|square}/{connection_id}` as fast as a closed loop of N workers allows (or at a
fixed rate), with a share of redeliveries, and report verified, deduplicated webhooks per second against
the one-insert ceiling measured in the same run: `python -m tests.load.webhooks --help`.

Every fresh event is a new payment the barber took on its own account (`payment_intent.succeeded` /
`payment.updated` COMPLETED), so the service verifies it, claims the event id, inserts the transaction and
writes `transaction.recorded` to its outbox: that is the cost measured. A redelivery is an event already
applied, sent again as the processor would (same body and event id, signed again) and must be answered
`"duplicate": true`.

Set-up is done here, so this runs right after `make run`: tokens are minted with the JWT secret found
as `bench.py` finds it, and `--connections` Stripe and Square connections are created for load barbers
(reused on later runs). Their webhook secrets are derived from a fixed seed, the processor and the
barber id (`webhook_secret`), so a reused connection still has the secret this tool signs with.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import random
import secrets
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from rich.console import Console
from rich.table import Table

from tests.load.bench import ceiling_app, reachable
from tests.load.ceiling import PATH as CEILING_PATH
from tests.load.loadtest import (
    ADMIN_SUBJECT,
    Driver,
    LoadConfig,
    LoadError,
    _exception_kind,  # private in loadtest.py; reused rather than copied
    amount_text,
    check_target,
    error_kind,
    probe,
    render,
    run_load,
    write_json,
)
from tests.load.stats import MIN_SUCCESS_RATE, Recorder, summarize, verdict
from tools.runstate import pick_database_url, pick_jwt_secret, run_state

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_URL = "http://127.0.0.1:8002"  # the external service under `make run`
DEFAULT_JSON = ROOT / ".run" / "webhook-load-results.json"
CEILING_LOG = ROOT / ".run" / "logs" / "webhook-load-ceiling.log"
CONNECTIONS_PATH = "/api/v1/external-payments/connections"
TRANSACTIONS_PATH = "/api/v1/external-payments/transactions"
WEBHOOK_PATH = "/api/v1/webhooks/{processor}/{connection_id}"
PROCESSORS = ("stripe", "square")
# The webhook secrets of the load connections are HMAC-SHA256(SECRET_SEED, "<processor>:<barber id>"):
# fixed, so a connection created by an earlier run is signed for with the secret it was created with.
# They are public by construction: load connections belong on a development suite only.
SECRET_SEED = b"hybrid-payments/tests.load.webhooks/v1"
TARGET_RATIO = 0.5  # applied webhooks/s >= half the one-insert ceiling's req/s
DEFAULT_BARBER_ID_START = 960001
DUPLICATE = "duplicate"  # the recorder's kind for a redelivery answered `"duplicate": true`
STRIPE_API_VERSION = "2026-10-28.endive"
STRIPE_SIGNATURE_HEADER = "Stripe-Signature"
SQUARE_SIGNATURE_HEADER = "x-square-hmacsha256-signature"
CURRENCY = "USD"
_SQUARE_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


# --- connections (pure) ------------------------------------------------------------------------

def webhook_secret(processor: str, barber_id: int, seed: bytes = SECRET_SEED) -> str:
    """The webhook secret a load connection is created with: Stripe `whsec_<hex>`, a Square
    signature key (22 url-safe base64 characters, the length Square hands out)."""
    digest = hmac.new(seed, f"{processor}:{barber_id}".encode(), hashlib.sha256).digest()
    if processor == "stripe":
        return "whsec_" + digest.hex()[:32]
    return base64.urlsafe_b64encode(digest).decode()[:22]


def plan_connections(count: int, barber_id_start: int) -> list[tuple[str, int]]:
    """(processor, barber id) of each load connection: barber k gets a Stripe and a Square one."""
    return [(PROCESSORS[k % 2], barber_id_start + k // 2) for k in range(count)]


def account_id(processor: str, barber_id: int) -> str:
    return f"acct_hpload{barber_id}" if processor == "stripe" else f"sq_hpload{barber_id}"


def square_location_id(barber_id: int) -> str:
    return f"LHPLOAD{barber_id}"  # Square location ids start with L (the simulator accepts any such)


def square_access_token(barber_id: int) -> str:
    return f"EAAAhpload{barber_id}"


def connection_request(processor: str, barber_id: int) -> dict[str, Any]:
    """The POST body that connects a load barber's account with an explicit webhook secret, so the
    service registers no endpoint with the processor (it still checks the credentials there)."""
    if processor == "stripe":
        credentials: dict[str, str] = {"secret_key": f"sk_test_hpload{barber_id}"}
    else:
        credentials = {"access_token": square_access_token(barber_id), "location_id": square_location_id(barber_id)}
    return {"processor": processor, "account_id": account_id(processor, barber_id),
            "account_name": f"load barber {barber_id}", "credentials": credentials,
            "webhook_secret": webhook_secret(processor, barber_id)}


@dataclass(frozen=True)
class Endpoint:
    """One connection to deliver to: where (its `webhook_url`, which Square signs) and with what."""

    processor: str
    connection_id: int
    barber_id: int
    secret: str
    url: str  # the connection's webhook_url as the API answers it (Square's notification URL)

    @property
    def path(self) -> str:
        return WEBHOOK_PATH.format(processor=self.processor, connection_id=self.connection_id)


# --- events and signatures (pure) --------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    endpoint: Endpoint
    event_id: str
    payment_id: str
    amount_cents: int
    body: bytes


def rfc3339(moment: datetime) -> str:
    """Square's timestamps: milliseconds and a Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stripe_event(event_id: str, payment_id: str, amount_cents: int, created: int) -> dict[str, Any]:
    """`payment_intent.succeeded` as Stripe sends it for a payment on the barber's own account."""
    intent = {
        "id": payment_id, "object": "payment_intent", "amount": amount_cents, "amount_capturable": 0,
        "amount_received": amount_cents, "capture_method": "automatic", "confirmation_method": "automatic",
        "created": created, "currency": CURRENCY.lower(), "customer": None, "description": None,
        "last_payment_error": None, "latest_charge": "ch_" + payment_id.removeprefix("pi_"), "livemode": False,
        "metadata": {}, "payment_method": "pm_card_visa", "payment_method_types": ["card"],
        "status": "succeeded",
    }
    return {"id": event_id, "object": "event", "api_version": STRIPE_API_VERSION, "created": created,
            "data": {"object": intent}, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "type": "payment_intent.succeeded"}


def square_event(event_id: str, payment_id: str, amount_cents: int, created: datetime, *, merchant_id: str,
                 location_id: str) -> dict[str, Any]:
    """`payment.updated` with the payment COMPLETED, as Square sends it."""
    stamp = rfc3339(created)
    money = {"amount": amount_cents, "currency": CURRENCY}
    payment = {
        "id": payment_id, "created_at": stamp, "updated_at": stamp, "amount_money": money,
        "total_money": dict(money), "approved_money": dict(money), "status": "COMPLETED",
        "source_type": "CARD", "location_id": location_id,
        "card_details": {"status": "CAPTURED", "card": {"card_brand": "VISA", "last_4": "1111"},
                         "entry_method": "KEYED"},
        "version_token": payment_id[:20],
    }
    return {"merchant_id": merchant_id, "type": "payment.updated", "event_id": event_id, "created_at": stamp,
            "data": {"type": "payment", "id": payment_id, "object": {"payment": payment}}}


def square_merchant_id(barber_id: int) -> str:
    """The seller id the simulator derives from the access token (any stable id would do)."""
    return "M" + hashlib.sha256(square_access_token(barber_id).encode()).hexdigest()[:12].upper()


def stripe_signature(body: bytes, secret: str, timestamp: int) -> str:
    """`Stripe-Signature`: t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>."""
    mac = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def square_signature(body: bytes, signature_key: str, notification_url: str) -> str:
    """`x-square-hmacsha256-signature`: base64 HMAC-SHA256(key, notification URL + body)."""
    mac = hmac.new(signature_key.encode(), notification_url.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def signed_headers(event: Event, now: float) -> dict[str, str]:
    """The headers of one delivery; a redelivery is signed again (Stripe: a new timestamp)."""
    ep = event.endpoint
    if ep.processor == "stripe":
        signature = {STRIPE_SIGNATURE_HEADER: stripe_signature(event.body, ep.secret, int(now))}
    else:
        signature = {SQUARE_SIGNATURE_HEADER: square_signature(event.body, ep.secret, ep.url)}
    return {"Content-Type": "application/json", **signature}


class EventFactory:
    """New events with fresh ids (never reused across runs) and amounts from a seeded generator.

    With a `pool` (payments made at the simulators beforehand, per connection), each event names
    one of them, as a processor's notice does: the service re-fetches what a notice names, so a
    notice about a payment the processor never made is ignored (webhooks are notices, issue 14).
    Each pooled payment is announced once; `pick` chooses among connections with some left."""

    def __init__(self, rng: random.Random, token: Callable[[int], str] = secrets.token_hex,
                 pool: dict[int, list[tuple[str, int]]] | None = None) -> None:
        self.rng = rng
        self.token = token
        self.pool = pool

    def pick(self, endpoints: list[Endpoint]) -> Endpoint:
        if self.pool is None:
            return endpoints[self.rng.randrange(len(endpoints))]
        left = [ep for ep in endpoints if self.pool.get(ep.connection_id)]
        if not left:
            raise LoadError("every payment made for the run was announced: raise --payments-per-connection")
        return left[self.rng.randrange(len(left))]

    def new(self, endpoint: Endpoint, now: float) -> Event:
        cents = self.rng.randint(500, 90_000)
        made = self.pool[endpoint.connection_id].pop() if self.pool is not None else None
        if made is not None:
            payment, cents = made
        if endpoint.processor == "stripe":
            event_id, payment_id = "evt_" + self.token(12), "pi_" + self.token(12)
            if made is not None:
                payment_id = payment
            body = json.dumps(stripe_event(event_id, payment_id, cents, int(now)), indent=2).encode()
        else:
            event_id = str(uuid.UUID(self.token(16), version=4))
            payment_id = "".join(_SQUARE_ID_ALPHABET[b % 62] for b in bytes.fromhex(self.token(29)))
            if made is not None:
                payment_id = payment
            body = json.dumps(square_event(
                event_id, payment_id, cents, datetime.fromtimestamp(now, UTC),
                merchant_id=square_merchant_id(endpoint.barber_id),
                location_id=square_location_id(endpoint.barber_id))).encode()
        return Event(endpoint, event_id, payment_id, cents, body)


# --- redeliveries (pure) -----------------------------------------------------------------------

class DuplicateSchedule:
    """Decides, send by send, whether the next delivery is a redelivery of an applied event.

    Exactly `ratio` of the sends are redeliveries over a run: each send adds `ratio` to what is owed,
    and a redelivery is sent whenever a whole one is owed and some event was applied before (at the
    start, the debt waits for the first). Which event is redelivered is a seeded random pick among
    the last `pool_size` applied.
    """

    def __init__(self, ratio: float, rng: random.Random, pool_size: int = 4096) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError("the duplicate ratio must be at least 0 and below 1")
        self.ratio = ratio
        self.rng = rng
        self.pool: deque[Event] = deque(maxlen=pool_size)
        self.owed = 0.0
        self.sends = 0
        self.redeliveries = 0

    def remember(self, event: Event) -> None:
        """An event the service applied: from now on it may be delivered again."""
        self.pool.append(event)

    def next(self) -> Event | None:
        """The event to deliver again now, or None for a fresh one."""
        self.sends += 1
        self.owed += self.ratio
        if self.owed >= 1.0 - 1e-9 and self.pool:
            self.owed -= 1.0
            self.redeliveries += 1
            return self.pool[self.rng.randrange(len(self.pool))]
        return None


# --- outcomes (pure) ---------------------------------------------------------------------------

class _Ack(msgspec.Struct):
    event_id: str
    duplicate: bool
    ignored: bool = False
    received: bool = True


def classify(status: int, body: bytes, *, event_id: str, redelivery: bool) -> str | None:
    """None: verified and applied (a 200 with `"duplicate": false`, for a fresh event);
    `DUPLICATE`: a redelivery answered `"duplicate": true`; anything else is an error kind:
    `<status> <code>` for an error answer, and for a 200 that is not what it should be
    `200 ignored` (the service did not understand the event), `200 duplicate_not_detected`
    (a redelivery applied again), `200 unexpected_duplicate` (a fresh event taken for a redelivery),
    `200 wrong_event_id`, `200 unreadable_ack`."""
    if status != 200:
        return error_kind(status, body)
    try:
        ack = msgspec.json.decode(body, type=_Ack)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "200 unreadable_ack"
    if ack.event_id != event_id:
        return "200 wrong_event_id"
    if ack.ignored:
        return "200 ignored"
    if redelivery:
        return DUPLICATE if ack.duplicate else "200 duplicate_not_detected"
    return "200 unexpected_duplicate" if ack.duplicate else None


def outcome_class(kind: str | None) -> str:
    return "applied" if kind is None else DUPLICATE if kind == DUPLICATE else "error"


@dataclass
class WebhookRecorder(Recorder):
    """`stats.Recorder` (applied = its successes, redeliveries a kind of their own), plus the
    latencies of each outcome class apart."""

    by_outcome: dict[str, list[float]] = field(default_factory=dict)

    def add(self, started: float, latency_s: float | None, kind: str | None, lag_s: float = 0.0) -> None:
        super().add(started, latency_s, kind, lag_s)
        if latency_s is not None and self.start <= started < self.end:
            self.by_outcome.setdefault(outcome_class(kind), []).append(latency_s * 1000.0)


def webhook_summary(rec: WebhookRecorder) -> dict[str, Any]:
    """The run's numbers: applied and duplicates per second, errors by kind, latency percentiles
    over every request sent (and per outcome). `success_rate` counts both answers that did what a
    processor wants (applied, or recognised as a duplicate), so `stats.verdict` reads it as usual."""
    errors = Counter(rec.errors)
    duplicates = errors.pop(DUPLICATE, 0)
    applied = rec.successes
    duration = rec.end - rec.start
    base = summarize(rec.latencies_ms, applied, errors, duration)  # errors_by_kind without duplicates
    requests = applied + duplicates + base["errors"]
    answered = applied + duplicates

    def per_second(n: int) -> float:
        return round(n / duration, 1) if duration > 0 else 0.0

    lags = rec.summary()["send_lag_ms"]
    return {
        "requests": requests,
        "applied": applied,
        "duplicates": duplicates,
        "successes": answered,
        "errors": base["errors"],
        "errors_by_kind": base["errors_by_kind"],
        "success_rate": answered / requests if requests else 0.0,
        "duplicate_share": round(duplicates / answered, 4) if answered else 0.0,
        "duration_s": base["duration_s"],
        "throughput_rps": per_second(requests),
        "applied_rps": per_second(applied),
        "duplicate_rps": per_second(duplicates),
        "success_rps": per_second(applied),  # what is compared with the ceiling
        "latency_ms": base["latency_ms"],
        "latency_ms_by_outcome": {name: summarize(values, 0, {}, duration)["latency_ms"]
                                  for name, values in sorted(rec.by_outcome.items())},
        "send_lag_ms": lags,
    }


def webhook_checks(webhooks: dict[str, Any], ceiling: dict[str, Any] | None, *, duplicate_ratio: float,
                   closed_loop: bool, target: float = TARGET_RATIO,
                   webhook_ceiling: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows (check, value, target, passed); passed is None for what is only shown (no ceiling
    measured, or an open loop, whose throughput is the rate asked for, or the webhook ceiling's
    ratios, which show how much of the gap the required processor re-fetch accounts for)."""
    rows: list[dict[str, Any]] = []
    if ceiling is None:
        rows.append({"check": "applied webhooks/s / ceiling req/s", "value": None,
                     "target": f">= {target} (no ceiling measured)", "passed": None})
    else:
        base = ceiling["success_rps"]
        ratio = round(webhooks["applied_rps"] / base, 3) if base > 0 else None
        rows.append({"check": "applied webhooks/s / ceiling req/s", "value": ratio,
                     "target": f">= {target}" if closed_loop else f">= {target} (open loop: informational)",
                     "passed": (ratio is not None and ratio >= target) if closed_loop else None})
    rows.append({"check": "answered applied or duplicate", "value": round(webhooks["success_rate"], 5),
                 "target": f">= {MIN_SUCCESS_RATE}",
                 "passed": webhooks["requests"] > 0 and webhooks["success_rate"] >= MIN_SUCCESS_RATE})
    rows.append({"check": "duplicate share of answers", "value": webhooks["duplicate_share"],
                 "target": f"{duplicate_ratio:g} ± 0.02",
                 "passed": abs(webhooks["duplicate_share"] - duplicate_ratio) <= 0.02})
    if webhook_ceiling is not None and webhook_ceiling["applied_rps"] > 0:
        rows.append({"check": "applied webhooks/s / webhook ceiling's",
                     "value": round(webhooks["applied_rps"] / webhook_ceiling["applied_rps"], 3),
                     "target": "(shown)", "passed": None})
        if ceiling is not None and ceiling["success_rps"] > 0:
            rows.append({"check": "webhook ceiling / one-insert ceiling",
                         "value": round(webhook_ceiling["applied_rps"] / ceiling["success_rps"], 3),
                         "target": "(shown: the most a re-fetching webhook can reach)", "passed": None})
    return rows


def ceiling_endpoints(endpoints: list[Endpoint], ceiling_url: str) -> list[Endpoint]:
    """The same load barbers, delivered to the ceiling app (tests.load.ceiling), which has no
    connections: its "connection id" is the barber id and the processor (barber * 10 + 0 for
    Stripe, + 1 for Square), from which it derives the barber's credentials and secret."""
    out = []
    for ep in endpoints:
        key = ep.barber_id * 10 + PROCESSORS.index(ep.processor)
        path = WEBHOOK_PATH.format(processor=ep.processor, connection_id=key)
        out.append(replace(ep, connection_id=key, url=ceiling_url.rstrip("/") + path))
    return out


# --- configuration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class WebhookConfig:
    url: str = DEFAULT_URL
    duration: float = 15.0
    warmup: float = 3.0
    concurrency: int | None = 32
    rate: float | None = None
    max_inflight: int = 256
    timeout: float = 5.0
    duplicate_ratio: float = 0.1
    connections: int = 100
    barber_id_start: int = DEFAULT_BARBER_ID_START
    jwt_secret: str = ""
    random_seed: int = 1
    # Payments made at the simulators per connection before the run, each announced once.
    payments_per_connection: int = 150
    stripe_api_base: str | None = None  # default: the simulators `make run` recorded
    square_api_base: str | None = None


def simulator_urls(cfg: WebhookConfig) -> dict[str, str]:
    urls = run_state().get("urls", {})
    return {"stripe": cfg.stripe_api_base or urls.get("stripe-sim", "http://127.0.0.1:12111"),
            "square": cfg.square_api_base or urls.get("square-sim", "http://127.0.0.1:12112")}


# --- set-up (I/O) ------------------------------------------------------------------------------

def _token(secret: str, subject: int, role: str) -> str:
    from shared.auth import issue_token  # imported here: it pulls in Litestar

    return issue_token(secret, subject, role, ttl_seconds=3600)  # type: ignore[arg-type]


async def _existing_connection(session: aiohttp.ClientSession, base: str, headers: Mapping[str, str],
                               processor: str, account: str) -> dict[str, Any] | None:
    cursor: str | None = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        async with session.get(base + CONNECTIONS_PATH, params=params, headers=headers) as resp:
            if resp.status != 200:
                raise LoadError(f"listing connections failed: {resp.status} {(await resp.read())[:300]!r}")
            page = await resp.json()
        for row in page["items"]:
            if row["processor"] == processor and row["account_id"] == account:
                return row
        cursor = page.get("next_cursor")
        if not cursor:
            return None


async def ensure_connections(session: aiohttp.ClientSession, cfg: WebhookConfig
                             ) -> tuple[list[Endpoint], dict[str, Any]]:
    """Create the load connections, or find the ones an earlier run created (409 connection_exists)."""
    base = cfg.url.rstrip("/")
    gate = asyncio.Semaphore(16)
    created = reused = 0
    statuses: Counter[str] = Counter()

    async def one(processor: str, barber_id: int) -> Endpoint:
        nonlocal created, reused
        headers = {"Authorization": f"Bearer {_token(cfg.jwt_secret, barber_id, 'barber')}"}
        async with gate:
            async with session.post(base + CONNECTIONS_PATH, json=connection_request(processor, barber_id),
                                    headers=headers) as resp:
                body = await resp.read()
                status = resp.status
            if status == 201:
                row = msgspec.json.decode(body)
                created += 1
            elif status == 409 and error_kind(status, body) == "409 connection_exists":
                row = await _existing_connection(session, base, headers, processor, account_id(processor, barber_id))
                if row is None:
                    raise LoadError(f"barber {barber_id}: 409 connection_exists, but no {processor} connection "
                                    f"{account_id(processor, barber_id)} is listed")
                reused += 1
            else:
                hint = " (is the JWT secret the services' JWT_SECRET?)" if status == 401 else ""
                raise LoadError(f"creating a {processor} connection for barber {barber_id} failed: "
                                f"{status} {body[:300]!r}{hint}")
        if not row.get("webhook_secret_set") or not row.get("webhook_url"):
            raise LoadError(f"connection {row['id']} has no webhook secret or URL; "
                            "pick other barbers with --barber-id-start")
        statuses[row["status"]] += 1
        return Endpoint(processor, row["id"], barber_id, webhook_secret(processor, barber_id), row["webhook_url"])

    try:
        endpoints = await asyncio.gather(*(one(p, b) for p, b in plan_connections(cfg.connections,
                                                                                   cfg.barber_id_start)))
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise LoadError(f"creating connections failed: {type(exc).__name__}: {exc}") from None
    return list(endpoints), {"created": created, "reused": reused, "statuses": dict(statuses)}


async def deliver(session: aiohttp.ClientSession, base: str, event: Event, *, redelivery: bool) -> str | None:
    """POST one (re)delivery; its outcome as `classify` names it."""
    headers = signed_headers(event, time.time())
    try:
        async with session.post(base + event.endpoint.path, data=event.body, headers=headers) as resp:
            return classify(resp.status, await resp.read(), event_id=event.event_id, redelivery=redelivery)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return _exception_kind(exc)


async def make_payments(session: aiohttp.ClientSession, endpoints: list[Endpoint], per_connection: int,
                        sims: Mapping[str, str], rng: random.Random) -> dict[int, list[tuple[str, int]]]:
    """Payments made at the simulators with each load barber's own credentials, as its clients
    would pay it: what the run's notices then announce. (payment id, amount in cents) per connection."""
    gate = asyncio.Semaphore(32)

    async def one(ep: Endpoint) -> tuple[int, tuple[str, int]]:
        cents = rng.randint(500, 90_000)
        async with gate:
            if ep.processor == "stripe":
                request = session.post(sims["stripe"] + "/v1/payment_intents", data=[
                    ("amount", str(cents)), ("currency", CURRENCY.lower()), ("payment_method", "pm_card_visa"),
                    ("confirm", "true"), ("payment_method_types[0]", "card")],
                    headers={"Authorization": f"Bearer sk_test_hpload{ep.barber_id}"})
            else:
                request = session.post(sims["square"] + "/v2/payments", json={
                    "source_id": "cnon:card-nonce-ok", "idempotency_key": secrets.token_hex(16),
                    "amount_money": {"amount": cents, "currency": CURRENCY},
                    "location_id": square_location_id(ep.barber_id)},
                    headers={"Authorization": f"Bearer {square_access_token(ep.barber_id)}"})
            async with request as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise LoadError(f"the {ep.processor} simulator refused a payment: {resp.status} {body}")
        return ep.connection_id, (body["id"] if ep.processor == "stripe" else body["payment"]["id"], cents)

    pool: dict[int, list[tuple[str, int]]] = {ep.connection_id: [] for ep in endpoints}
    for connection_id, made in await asyncio.gather(*(one(ep) for ep in endpoints for _ in range(per_connection))):
        pool[connection_id].append(made)
    return pool


async def preflight(session: aiohttp.ClientSession, base: str, endpoints: list[Endpoint],
                    factory: EventFactory) -> list[Event]:
    """One fresh event and its redelivery per connection, before the load: each must be applied,
    then recognised as a duplicate (else the signature, the secret or the event shape is wrong)."""
    gate = asyncio.Semaphore(16)

    async def one(ep: Endpoint) -> tuple[Endpoint, Event, str | None, str | None]:
        event = factory.new(ep, time.time())
        async with gate:
            first = await deliver(session, base, event, redelivery=False)
            again = await deliver(session, base, event, redelivery=True) if first is None else None
        return ep, event, first, again

    results = await asyncio.gather(*(one(ep) for ep in endpoints))
    bad = [(ep, first or again) for ep, _, first, again in results if first is not None or again != DUPLICATE]
    if bad:
        kinds = Counter(kind for _, kind in bad)
        ep = bad[0][0]
        raise LoadError(f"pre-flight: {len(bad)} of {len(endpoints)} connections did not take a signed event "
                        f"({dict(kinds)}); first: {ep.processor} connection {ep.connection_id} "
                        f"(barber {ep.barber_id}). A connection created with another secret fails here: "
                        "pick other barbers with --barber-id-start")
    return [event for _, event, _, _ in results]


# --- the load (I/O) ----------------------------------------------------------------------------

class WebhookDriver(Driver):
    """`loadtest.Driver`'s closed and open loops, sending webhook deliveries instead of /route calls.
    (Its __init__ mints /route barber tokens, which a webhook needs none of, so it is not called.)"""

    def __init__(self, session: aiohttp.ClientSession, base: str, endpoints: list[Endpoint],
                 schedule: DuplicateSchedule, factory: EventFactory, rng: random.Random) -> None:
        self.session = session
        self.base = base
        self.url = base + WEBHOOK_PATH
        self.endpoints = endpoints
        self.schedule = schedule
        self.factory = factory
        self.rng = rng
        self.recorder: Recorder = WebhookRecorder(0.0, 0.0)
        self.applied: deque[Event] = deque(maxlen=64)  # for the spot check after the run

    async def send(self, started: float) -> None:
        lag = time.perf_counter() - started
        again = self.schedule.next()
        event = again or self.factory.new(self.factory.pick(self.endpoints), time.time())
        kind = await deliver(self.session, self.base, event, redelivery=again is not None)
        if kind is None:
            self.schedule.remember(event)
            self.applied.append(event)
        self.recorder.add(started, time.perf_counter() - started, kind, lag)


async def spot_check(session: aiohttp.ClientSession, base: str, secret: str, events: list[Event]) -> dict[str, Any]:
    """Read a few applied payments back (admin token): each must be one completed transaction with
    the amount sent, learned from the webhook."""
    headers = {"Authorization": f"Bearer {_token(secret, ADMIN_SUBJECT, 'admin')}"}
    mismatches = []
    for event in events:
        params = {"processor": event.endpoint.processor, "external_transaction_id": event.payment_id}
        async with session.get(base + TRANSACTIONS_PATH, params=params, headers=headers) as resp:
            page = await resp.json() if resp.status == 200 else {"items": [], "status": resp.status}
        items = page.get("items", [])
        want = amount_text(event.amount_cents)
        if (len(items) != 1 or items[0]["status"] != "completed" or items[0]["amount"] != want
                or items[0]["connection_id"] != event.endpoint.connection_id):
            mismatches.append({"payment_id": event.payment_id, "expected_amount": want,
                               "found": items if items else page.get("status", "none")})
    return {"checked": len(events), "matched": len(events) - len(mismatches), "mismatches": mismatches}


def _spot_sample(events: list[Event], per_processor: int = 3) -> list[Event]:
    picked: list[Event] = []
    for processor in PROCESSORS:
        picked += [e for e in events if e.endpoint.processor == processor][-per_processor:]
    return picked


async def run_webhooks(cfg: WebhookConfig, endpoints: list[Endpoint], session: aiohttp.ClientSession,
                       console: Console | None = None, pool: dict[int, list[tuple[str, int]]] | None = None,
                       ) -> tuple[dict[str, Any], list[Event]]:
    """Drive the deliveries for warmup + duration; the result document and the last applied events."""
    rng = random.Random(cfg.random_seed)
    driver = WebhookDriver(session, cfg.url.rstrip("/"), endpoints, DuplicateSchedule(cfg.duplicate_ratio, rng),
                           EventFactory(rng, pool=pool), rng)
    if console is not None:
        how = f"{cfg.concurrency} workers" if cfg.concurrency else f"{cfg.rate:g} webhooks/s"
        console.print(f"[dim]{driver.url}: {how}, {cfg.warmup:g} s warmup + {cfg.duration:g} s measured, "
                      f"{len(endpoints)} connections, {cfg.duplicate_ratio:.0%} redeliveries[/]")
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.perf_counter()
    end = start + cfg.warmup + cfg.duration
    driver.recorder = recorder = WebhookRecorder(start + cfg.warmup, end)
    if cfg.concurrency:
        await driver.closed_loop(cfg.concurrency, end)
    else:
        assert cfg.rate is not None
        await driver.open_loop(cfg.rate, start, cfg.warmup + cfg.duration, cfg.max_inflight)
    summary = webhook_summary(recorder)
    failures = verdict(summary)
    return {
        "target": driver.url,
        "mode": "concurrency" if cfg.concurrency else "rate",
        "started_at": started_at,
        "config": {k: v for k, v in asdict(cfg).items() if k != "jwt_secret"},
        "schedule": {"sends": driver.schedule.sends, "redeliveries": driver.schedule.redeliveries},
        "summary": summary,
        "failures": failures,
        "passed": not failures,
    }, list(driver.applied)


async def measure(cfg: WebhookConfig, ceiling_url: str | None, console: Console) -> dict[str, Any]:
    """Set up the connections, measure the ceiling (when given), then the webhook burst."""
    width = max(cfg.concurrency or cfg.max_inflight, 16)
    connector = aiohttp.TCPConnector(limit=width, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=cfg.timeout)
    base = cfg.url.rstrip("/")
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        await probe(session, cfg.url)
        console.rule("set-up")
        endpoints, setup = await ensure_connections(session, cfg)
        console.print(f"connections: {setup['created']} created, {setup['reused']} reused "
                      f"({len(endpoints)}: {', '.join(f'{n} {s}' for s, n in setup['statuses'].items())})")
        if set(setup["statuses"]) - {"active"}:
            console.print("[yellow]note:[/] not every connection is active (the processor did not accept or "
                          "could not check its credentials); webhooks are verified all the same")
        sims = simulator_urls(cfg)
        made = await make_payments(session, endpoints, cfg.payments_per_connection + 1, sims,
                                   random.Random(cfg.random_seed + 2))
        console.print(f"payments made at the simulators to announce: {sum(map(len, made.values())):,}")
        checked = await preflight(session, base, endpoints, EventFactory(random.Random(cfg.random_seed + 1),
                                                                          pool=made))
        setup["preflight"] = f"{len(checked)} connections: applied, then answered duplicate"
        console.print(f"pre-flight: {setup['preflight']}")
        runs: dict[str, Any] = {}
        if ceiling_url is not None:
            console.rule("ceiling app")
            ceiling_cfg = LoadConfig(url=ceiling_url, path=CEILING_PATH, seed=False, duration=cfg.duration,
                                     warmup=cfg.warmup, concurrency=cfg.concurrency or 32, timeout=cfg.timeout,
                                     jwt_secret=cfg.jwt_secret)
            runs["ceiling"] = await run_load(ceiling_cfg, console)
            render(runs["ceiling"], console, title="ceiling")
            # The webhook ceiling: verify, re-fetch through the same adapters, one statement. Its
            # notices name payments made for it (more of them: it goes faster than the service).
            console.rule("webhook ceiling")
            targets = ceiling_endpoints(endpoints, ceiling_url)
            made_for_ceiling = await make_payments(session, targets, cfg.payments_per_connection * 3, sims,
                                                   random.Random(cfg.random_seed + 3))
            runs["webhook_ceiling"], _ = await run_webhooks(replace(cfg, url=ceiling_url), targets, session, console,
                                                            pool=made_for_ceiling)
            render_webhooks(runs["webhook_ceiling"], console)
        console.rule("webhooks")
        runs["webhooks"], applied = await run_webhooks(cfg, endpoints, session, console, pool=made)
        render_webhooks(runs["webhooks"], console)
        spot = await spot_check(session, base, cfg.jwt_secret, _spot_sample(checked + applied))
    return {"setup": setup, "runs": runs, "spot_check": spot}


# --- output ------------------------------------------------------------------------------------

def render_webhooks(result: dict[str, Any], console: Console) -> None:
    s, lat, cfg = result["summary"], result["summary"]["latency_ms"], result["config"]
    load = f"concurrency {cfg['concurrency']}" if result["mode"] == "concurrency" else f"{cfg['rate']:g}/s"
    console.print(f"[bold]webhooks[/] {result['target']} — {load}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("requests", f"{s['requests']:,}"), ("applied", f"{s['applied']:,}"), ("duplicates", f"{s['duplicates']:,}"),
        ("errors", f"{s['errors']:,}"), ("applied webhooks/s", f"{s['applied_rps']:,.1f}"),
        ("duplicates/s", f"{s['duplicate_rps']:,.1f}"), ("requests/s", f"{s['throughput_rps']:,.1f}"),
        ("p50", f"{lat['p50']:.2f} ms"), ("p95", f"{lat['p95']:.2f} ms"),
        ("p99", f"{lat['p99']:.2f} ms"), ("max", f"{lat['max']:.2f} ms"),
    ]
    for name, by in s["latency_ms_by_outcome"].items():
        rows.append((f"[dim]{name}: p50 / p99[/]", f"[dim]{by['p50']:.2f} / {by['p99']:.2f} ms[/]"))
    if result["mode"] == "rate":
        rows.append(("[dim]send lag p99 / max[/]", f"[dim]{s['send_lag_ms']['p99']:.2f} / "
                                                    f"{s['send_lag_ms']['max']:.2f} ms[/]"))
    for name, value in rows:
        table.add_row(name, value)
    for kind, n in s["errors_by_kind"].items():
        table.add_row(f"[red]error {kind}[/]", f"{n:,}")
    console.print(table)


def render_checks(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="webhook bursts against the one-insert ceiling", title_justify="left")
    for column, justify in (("check", "left"), ("measured", "right"), ("target", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for row in rows:
        value = "n/a" if row["value"] is None else f"{row['value']:g}"
        mark = {True: "[bold green]PASS[/]", False: "[bold red]MISS[/]", None: "[dim]—[/]"}[row["passed"]]
        table.add_row(row["check"], value, row["target"], mark)
    console.print(table)


# --- command line ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.load.webhooks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=DEFAULT_URL, help="the external service (default %(default)s; loopback only)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, help="closed loop: this many workers (default 32)")
    mode.add_argument("--rate", type=float, help="open loop: deliveries per second on a fixed timetable")
    p.add_argument("--max-inflight", type=int, default=256,
                   help="open loop: deliveries due beyond this many outstanding are dropped as client_overload")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds (after warmup)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    p.add_argument("--duplicate-ratio", type=float, default=0.1,
                   help="share of deliveries that redeliver an applied event (default %(default)s)")
    p.add_argument("--connections", type=int, default=100,
                   help="load connections, half Stripe and half Square (default %(default)s: webhooks are "
                        "rate limited per connection)")
    p.add_argument("--barber-id-start", type=int, default=DEFAULT_BARBER_ID_START)
    p.add_argument("--jwt-secret", help="default: $JWT_SECRET, else JWT_SECRET in .env, else .run/run.json")
    p.add_argument("--database-url", help="the ceiling's database (default: as bench.py picks it)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the ceiling app (no ratio)")
    p.add_argument("--random-seed", type=int, default=1)
    p.add_argument("--payments-per-connection", type=int, default=150,
                   help="payments made at the simulators per connection before the run, each announced once "
                        "(default %(default)s; the run stops early when they run out)")
    p.add_argument("--stripe-api-base", help="the Stripe simulator (default: as `make run` recorded it)")
    p.add_argument("--square-api-base", help="the Square simulator (default: as `make run` recorded it)")
    p.add_argument("--json", default=str(DEFAULT_JSON), metavar="FILE",
                   help="the result document (default .run/webhook-load-results.json; '-' for stdout)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check is missed (default: report only)")
    p.add_argument("--allow-remote", action="store_true", help="permit a non-loopback target")
    args = p.parse_args(argv)
    if args.rate is None and args.concurrency is None:
        args.concurrency = 32
    for name in ("duration", "timeout", "rate", "concurrency", "connections", "max_inflight",
                 "payments_per_connection"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    if not 0 <= args.duplicate_ratio < 1:
        p.error("--duplicate-ratio must be at least 0 and below 1")
    if args.barber_id_start < 1 or args.barber_id_start + args.connections // 2 > 2**31 - 1:
        p.error("--barber-id-start: barber ids must stay positive 32-bit integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=args.json == "-")
    cfg = WebhookConfig(url=args.url, duration=args.duration, warmup=args.warmup, concurrency=args.concurrency,
                        rate=args.rate, max_inflight=args.max_inflight, timeout=args.timeout,
                        duplicate_ratio=args.duplicate_ratio, connections=args.connections,
                        barber_id_start=args.barber_id_start, random_seed=args.random_seed,
                        payments_per_connection=args.payments_per_connection,
                        stripe_api_base=args.stripe_api_base, square_api_base=args.square_api_base)
    try:
        check_target(cfg.url, args.allow_remote)
        if (why := reachable(cfg.url)) is not None:
            raise LoadError(f"the external service is not reachable at {cfg.url} ({why}): "
                            "start the suite with `make run` first")
        secret = pick_jwt_secret(args.jwt_secret)
        if not secret:
            raise LoadError("no JWT secret: pass --jwt-secret or set JWT_SECRET to the one `make run` uses")
        cfg = replace(cfg, jwt_secret=secret)
        if args.no_ceiling:
            measured = asyncio.run(measure(cfg, None, console))
        else:
            database_url, db_source = pick_database_url(args.database_url)
            console.print(f"[dim]ceiling database from {db_source}; log {CEILING_LOG.relative_to(ROOT)}[/]")
            with ceiling_app(database_url, CEILING_LOG) as ceiling_url:
                measured = asyncio.run(measure(cfg, ceiling_url, console))
    except LoadError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    runs = measured["runs"]
    ceiling = runs["ceiling"]["summary"] if "ceiling" in runs else None
    rows = webhook_checks(runs["webhooks"]["summary"], ceiling, duplicate_ratio=cfg.duplicate_ratio,
                          closed_loop=cfg.concurrency is not None,
                          webhook_ceiling=runs["webhook_ceiling"]["summary"] if "webhook_ceiling" in runs else None)
    render_checks(rows, console)
    spot = measured["spot_check"]
    console.print(f"spot check: {spot['matched']} of {spot['checked']} applied payments read back as completed "
                  "transactions with the amount sent" + ("" if not spot["mismatches"] else
                                                          f"; [red]mismatches[/]: {spot['mismatches'][:3]}"))
    passed = all(row["passed"] is not False for row in rows) and not spot["mismatches"]
    write_json({
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "url": cfg.url, "target_ratio": TARGET_RATIO, **measured, "checks": rows, "passed": passed,
    }, args.json)
    if args.json != "-":
        console.print(f"results: {args.json}")
    console.print("[bold green]PASS[/]" if passed else
                  "[bold yellow]MISSED[/] (reported only; --strict makes this exit 1)" if not args.strict else
                  "[bold red]FAIL[/]")
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
