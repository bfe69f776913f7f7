"""The ceiling for `/route`: a minimal Litestar handler doing one asyncpg `INSERT ... RETURNING` per request,
served like the services (granian, one worker): `python -m tests.load.ceiling --port 8099 --database-url ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import msgspec
from litestar import Litestar, get, post
from litestar.datastructures import State

PATH = "/ceiling"
POOL_SIZE = 10  # the services' DB_POOL_SIZE default
_ENV_URL = "LOAD_CEILING_DATABASE_URL"
SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS load_ceiling;
CREATE TABLE IF NOT EXISTS load_ceiling.samples (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    appointment_id bigint NOT NULL,
    amount numeric(12, 2) NOT NULL,
    currency text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""
INSERT_SQL = ("INSERT INTO load_ceiling.samples (appointment_id, amount, currency) "
              "VALUES ($1, $2, $3) RETURNING id")


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


@get("/health/live", sync_to_thread=False)
def live() -> dict[str, str]:
    return {"status": "ok"}


def asyncpg_dsn(url: str) -> str:
    """asyncpg wants postgresql://; accept the services' postgresql+asyncpg:// too."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


def create_app(database_url: str | None = None) -> Litestar:
    dsn = asyncpg_dsn(database_url or os.environ[_ENV_URL])

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
        try:
            await pool.execute(SCHEMA_SQL)
            app.state.pool = pool
            yield
        finally:
            await pool.close()

    return Litestar(route_handlers=[record, live], lifespan=[lifespan], openapi_config=None, debug=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.load.ceiling", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL",
                                                            "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = p.parse_args(argv)
    from granian import Granian
    from granian.constants import Interfaces

    os.environ[_ENV_URL] = args.database_url  # the granian worker builds the app from it
    # The same server options as shared.service.serve, so only the handler differs.
    Granian("tests.load.ceiling:create_app", address=args.host, port=args.port, interface=Interfaces.ASGI,
            factory=True, log_access=False, workers=1).serve()


if __name__ == "__main__":
    main()
