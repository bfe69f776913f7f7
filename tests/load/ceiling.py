"""The ceilings: minimal Litestar handlers served like the services (granian, the same options):
`python -m tests.load.ceiling --port 8099 --database-url ... [--stripe-api-base URL]`.

- `POST /ceiling`, for `/route`: one asyncpg `INSERT ... RETURNING` per request.
- `POST /pay-ceiling`, for route-and-pay: the bare minimum of the same work: one insert (the
  pending attempt), the same PaymentIntent create through the same Stripe SDK client and call as the
  router's adapter (same client options, same simulator), then one update and one outbox row
  (one statement). No routing, no idempotency, no events relayed.
- `POST /api/v1/webhooks/{processor}/{connection_id}`, for webhooks (the external service's path shape,
  so the webhook load tool drives it unchanged): the bare minimum a webhook must do once the
  re-fetch is required (a webhook body is a claim, see services/external/webhooks.py): verify the
  signature and fetch the payment it names through the same adapters the external service uses
  (`shared.processors`, same SDK clients, same simulators), then one statement that claims the event
  id and writes the payment and an outbox row. No connection lookup, no attribution, no merge.
  The load barbers' credentials and secrets are derived as `tests.load.webhooks` derives them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import asyncpg
import msgspec
import stripe
from litestar import Litestar, Request, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from shared.processors import base as p
from shared.processors.square.adapter import SquareCredentials, SquareProcessor
from shared.processors.stripe.adapter import StripeCredentials, StripeProcessor

PATH = "/ceiling"
PAY_PATH = "/pay-ceiling"
POOL_SIZE = 10  # the services' DB_POOL_SIZE default
_ENV_URL = "LOAD_CEILING_DATABASE_URL"
_ENV_STRIPE = "LOAD_CEILING_STRIPE_API_BASE"
_ENV_SQUARE = "LOAD_CEILING_SQUARE_API_BASE"
# The "connection id" is the load barber's id times ten plus 0 for Stripe, 1 for Square
# (tests.load.webhooks.ceiling_endpoints): the ceiling has no connections to look up.
WEBHOOK_PATH = "/api/v1/webhooks/{processor:str}/{connection_id:int}"
SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS load_ceiling;
CREATE TABLE IF NOT EXISTS load_ceiling.samples (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    appointment_id bigint NOT NULL,
    amount numeric(12, 2) NOT NULL,
    currency text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS load_ceiling.payments (
    id uuid PRIMARY KEY,
    appointment_id bigint NOT NULL,
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL,
    intent_id text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS load_ceiling.outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    body bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS load_ceiling.webhook_events (
    event_id text PRIMARY KEY
);
"""
OPEN_SQL = "INSERT INTO load_ceiling.payments (id, appointment_id, amount, status) VALUES ($1, $2, $3, 'pending')"
SETTLE_SQL = """
WITH settled AS (
    UPDATE load_ceiling.payments SET status = $2, intent_id = $3 WHERE id = $1 AND status = 'pending' RETURNING id
)
INSERT INTO load_ceiling.outbox (event_id, body) SELECT $4, $5 FROM settled
"""
WEBHOOK_SQL = """
WITH claimed AS (
    INSERT INTO load_ceiling.webhook_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING event_id
), recorded AS (
    INSERT INTO load_ceiling.payments (id, appointment_id, amount, status, intent_id)
    SELECT $2, 0, $3, $4, $5 FROM claimed RETURNING id
)
INSERT INTO load_ceiling.outbox (event_id, body) SELECT $6, $7 FROM recorded RETURNING id
"""
INSERT_SQL = ("INSERT INTO load_ceiling.samples (appointment_id, amount, currency) "
              "VALUES ($1, $2, $3) RETURNING id")


class Payment(msgspec.Struct):
    """The route-and-pay body."""

    appointment_id: int
    amount: Decimal
    payment_method: str
    currency: str = "USD"
    barber_id: int | None = None
    client_id: int | None = None


class Sample(msgspec.Struct):
    """The /route body; `barber_id` and `client_id` are accepted and ignored."""

    appointment_id: int
    amount: Decimal
    currency: str = "USD"
    barber_id: int | None = None
    client_id: int | None = None


@post(PATH, status_code=200)
async def record(data: Sample, state: State) -> dict[str, object]:
    sample_id = await state.pool.fetchval(INSERT_SQL, data.appointment_id, data.amount, data.currency)
    return {"id": sample_id, "appointment_id": data.appointment_id, "amount": str(data.amount),
            "currency": data.currency}


@post(PAY_PATH, status_code=200)
async def pay(data: Payment, state: State) -> dict[str, object]:
    payment_id = uuid.uuid4()
    await state.pool.execute(OPEN_SQL, payment_id, data.appointment_id, data.amount)
    cents = int(data.amount * 100)
    # The SDK's raw-request API, as the router's adapter calls it (shared.processors.stripe).
    response = await state.stripe.raw_request_async(
        "post", "/v1/payment_intents", amount=cents, currency=data.currency.lower(),
        payment_method=data.payment_method, confirm=True, payment_method_types=["card"],
        metadata={"reference": str(payment_id)}, application_fee_amount=cents // 10,
        transfer_data={"destination": "acct_loadceiling"}, idempotency_key=f"ceiling-{payment_id}")
    raw = response.data
    event_id = uuid.uuid4()
    body = msgspec.json.encode({"event_id": str(event_id), "transaction_id": str(payment_id), "status": raw["status"],
                                "amount": str(data.amount)})
    await state.pool.execute(SETTLE_SQL, payment_id, raw["status"], raw["id"], event_id, body)
    return {"transaction_id": str(payment_id), "status": raw["status"], "external_transaction_id": raw["id"],
            "amount": str(data.amount), "currency": data.currency}


@post(WEBHOOK_PATH, status_code=200)
async def webhook(processor: str, connection_id: int, request: Request, state: State) -> dict[str, object]:
    adapter, secret = state.webhook_adapter(processor, connection_id // 10)
    body = await request.body()
    try:
        await adapter.verify_webhook(body, request.headers, secret=secret, url=str(request.url))
        event = adapter.parse_webhook(body)
    except p.ProcessorError as exc:
        raise HTTPException(status_code=400, detail=exc.message) from None
    if event.payment_id is None:
        return {"event_id": event.event_id, "duplicate": False, "ignored": True, "outcome": "ignored"}
    payment = await adapter.retrieve_payment(event.payment_id)
    payment_id, event_id = uuid.uuid4(), uuid.uuid4()
    recorded = msgspec.json.encode({"event_id": str(event_id), "transaction_id": str(payment_id),
                                    "status": payment.status, "amount": str(payment.amount)})
    row = await state.pool.fetchval(WEBHOOK_SQL, event.event_id, payment_id, payment.amount, payment.status,
                                    payment.processor_payment_id, event_id, recorded)
    outcome = "applied" if row is not None else "duplicate"
    return {"event_id": event.event_id, "duplicate": row is None, "ignored": False, "outcome": outcome}


@get("/health/live", sync_to_thread=False)
def live() -> dict[str, str]:
    return {"status": "ok"}


def asyncpg_dsn(url: str) -> str:
    """asyncpg wants postgresql://; accept the services' postgresql+asyncpg:// too."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


def create_app(database_url: str | None = None, stripe_api_base: str | None = None,
               square_api_base: str | None = None) -> Litestar:
    from tests.load import webhooks as load  # the load barbers' credentials (imports this module)

    dsn = asyncpg_dsn(database_url or os.environ[_ENV_URL])
    api_base = stripe_api_base or os.environ.get(_ENV_STRIPE, "http://127.0.0.1:12111")
    square_base = square_api_base or os.environ.get(_ENV_SQUARE, "http://127.0.0.1:12112")
    adapters: dict[tuple[str, int], tuple[p.PaymentProcessor, p.Secret]] = {}

    def webhook_adapter(processor: str, barber_id: int) -> tuple[p.PaymentProcessor, p.Secret]:
        """A load barber's adapter, built once, as the external service keeps one per connection."""
        if (processor, barber_id) not in adapters:
            if processor == "stripe":
                adapter: p.PaymentProcessor = StripeProcessor(
                    StripeCredentials(p.Secret(f"sk_test_hpload{barber_id}")), api_base=api_base)
            elif processor == "square":
                adapter = SquareProcessor(SquareCredentials(p.Secret(load.square_access_token(barber_id)),
                                                            load.square_location_id(barber_id)), api_base=square_base)
            else:
                raise HTTPException(status_code=404, detail=f"no {processor} webhooks here")
            adapters[processor, barber_id] = adapter, p.Secret(load.webhook_secret(processor, barber_id))
        return adapters[processor, barber_id]
    logging.getLogger("stripe").setLevel(logging.WARNING)  # as the services do (shared.observability)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
        # The router adapter's client, built the same way (shared/processors/stripe/adapter.py).
        http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=10.0))
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(8099)")  # two workers start together
                await conn.execute(SCHEMA_SQL)
            app.state.pool = pool
            app.state.stripe = stripe.StripeClient("sk_test_loadceiling", base_addresses={"api": api_base},
                                                   http_client=http, max_network_retries=0)
            app.state.webhook_adapter = webhook_adapter
            yield
        finally:
            for adapter, _ in adapters.values():
                await adapter.close()
            await http.close_async()
            await pool.close()

    return Litestar(route_handlers=[record, pay, webhook, live], lifespan=[lifespan], openapi_config=None, debug=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL",
                                                            "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--stripe-api-base", default="http://127.0.0.1:12111", help="the Stripe simulator")
    parser.add_argument("--square-api-base", default="http://127.0.0.1:12112", help="the Square simulator")
    parser.add_argument("--workers", type=int, default=1, help="as the services' WEB_CONCURRENCY")
    args = parser.parse_args(argv)
    from granian import Granian
    from granian.constants import Interfaces, Loops

    os.environ[_ENV_URL] = args.database_url  # the granian worker builds the app from it
    os.environ[_ENV_STRIPE] = args.stripe_api_base
    os.environ[_ENV_SQUARE] = args.square_api_base
    # The same server options as shared.service.serve, so only the handler differs.
    Granian("tests.load.ceiling:create_app", address=args.host, port=args.port, interface=Interfaces.ASGI,
            factory=True, log_access=False, workers=args.workers, loop=Loops.uvloop).serve()


if __name__ == "__main__":
    main()
