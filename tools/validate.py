"""Post-migration validation: is the suite that is running now whole and healthy? (`make validate`)

    python -m tools.validate                                   # against what `make run` recorded
    python -m tools.validate --router-url http://10.0.0.5:8001 --database-url postgresql://... --stream PAYMENTS

It prints one line per check and subject, `PASS <check>: <detail>` or `FAIL <check>: <what is wrong>`
(naming the service, consumer or schema), then a count on stderr. Exit 0 when every check passed, 1
when any failed, 2 for a usage error (a bad flag, no JWT secret). The checks are independent: one
failing does not stop the others, and an unreachable database or NATS fails only the checks that
need it.

  schema          each service schema (router, external, collections, analytics) is at the head
                  revision of the code here (`shared.migrations`)
  ready           each service's `GET /health/ready` answers 200 (its database and NATS reachable)
  endpoints       each service answers a few read-only GETs of its documented API with 200, with an
                  admin token (or a barber token where the endpoint is for barbers), and 401 without
                  a token (auth is on)
  route           the router decides a route: `POST /api/v1/hybrid-payments/route` for the probe
                  barber PROBE_BARBER_ID (2000000000, near the top of the int4 `barber_id`; no real
                  barber has it) and 1.00 USD answers 200 with a `payment_type`. This records one
                  routing decision for the probe barber per run (nothing is charged)
  stream          the JetStream stream exists and carries the suite's subjects
  consumers       every durable consumer the services declare (read from each service's
                  `create_app`, as the running services create them) is in the stream, reads the
                  subjects the code says, and has at most --max-backlog events waiting (pending plus
                  delivered but unacknowledged)
  dead-letters    no event parked in any schema's `dead_letters` and neither replayed nor discarded
                  (`python -m tools.dead_letters` lists, replays or discards them)
  outbox          no event in any schema's outbox still unpublished after --outbox-age (60) seconds
  legacy-import   the last `make import` (`router.legacy_imports`, latest run) reconciled cleanly:
                  `reconciled` passes, `differences` fails with the first differences, `running` or
                  `imported` fails (unfinished: run `make import` again); no import at all passes

Where the suite is: each flag, else what `make run` recorded in `.run/run.json` (service URLs,
database, NATS, JWT secret), else the defaults: router http://127.0.0.1:8001, external :8002,
collections :8003, analytics :8004, nats://127.0.0.1:4222. The database and the JWT secret are
found as the other operator tools find them (`--database-url`, `$DATABASE_URL`, run.json;
`--jwt-secret`, `$JWT_SECRET`, `.env`, run.json), NATS as `--nats-url`, `$NATS_URL`, run.json.
The stream and subject prefix are `--stream` / `--subject-prefix`, else `$EVENT_STREAM` /
`$EVENT_SUBJECT_PREFIX` (or `.env`), else what `make run` recorded, else PAYMENTS and none, as the
services default them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import nats
import sqlalchemy as sa
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.auth import issue_token
from shared.config import BaseSettings, load_settings, mask_url, normalise_database_url
from shared.db import PlatformTables
from shared.events import stream_subjects
from shared.migrations import SERVICES, SchemaNotAtHead, check_at_head, head_revision
from shared.service import consumer_of
from tools.run import ADMIN_SUBJECT
from tools.run import SERVICES as DEFAULT_PORTS
from tools.runstate import RUN_STATE, SUITE_DATABASE_URL, pick_database_url, pick_event_names, pick_jwt_secret

PROBE_BARBER_ID = 2_000_000_000  # barber_id is int4 (max 2147483647); no real barber is this high
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_STREAM = "PAYMENTS"
ROUTE = "/api/v1/hybrid-payments/route"

# Read-only GETs per service from its README's API table: (path, role); "barber" means the probe barber.
ENDPOINTS: dict[str, list[tuple[str, str]]] = {
    "router": [
        (f"/api/v1/hybrid-payments/config/{PROBE_BARBER_ID}", "admin"),
        ("/api/v1/hybrid-payments/transactions?limit=1", "admin"),
        ("/api/v1/hybrid-payments/my-options", "barber"),
        ("/api/v1/hybrid-payments/config", "barber"),
    ],
    "external": [
        ("/api/v1/external-payments/connections?limit=1", "admin"),
        ("/api/v1/external-payments/transactions?limit=1", "admin"),
        ("/api/v1/external-payments/connections?limit=1", "barber"),
    ],
    "collections": [
        ("/api/v1/platform-collections?limit=1", "admin"),
        (f"/api/v1/platform-collections/balance/{PROBE_BARBER_ID}", "admin"),
        ("/api/v1/platform-collections/my-collections?limit=1", "barber"),
        ("/api/v1/platform-collections/my-balance", "barber"),
    ],
    "analytics": [
        ("/api/v1/unified-payment-analytics/dashboard", "admin"),
        (f"/api/v1/unified-payment-analytics/six-figure-insights?barber_id={PROBE_BARBER_ID}", "admin"),
        ("/api/v1/unified-payment-analytics/dashboard", "barber"),
    ],
}


@dataclass(frozen=True)
class Result:
    ok: bool
    check: str
    detail: str

    @property
    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.check}: {self.detail}"


@dataclass
class Target:
    """The suite to validate and the limits to hold it to."""

    urls: dict[str, str]
    database_url: str
    nats_url: str
    stream: str
    subject_prefix: str
    jwt_secret: str
    max_backlog: int = 1000
    outbox_age: float = 60.0
    timeout: float = 5.0
    tokens: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = {"admin": issue_token(self.jwt_secret, ADMIN_SUBJECT, "admin", ttl_seconds=600),
                       "barber": issue_token(self.jwt_secret, PROBE_BARBER_ID, "barber", ttl_seconds=600)}


# ---- what the code declares -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedConsumer:
    service: str
    durable: str
    event_types: tuple[str, ...]


def declared_consumers(service: str) -> list[ExpectedConsumer]:
    """The durable consumers `service` creates when it starts, from its own `create_app` (built with
    placeholder settings: building the app connects nothing, only its lifespan does)."""
    from cryptography.fernet import Fernet

    app_module = importlib.import_module(f"services.{service}.app")
    settings_module = importlib.import_module(f"services.{service}.settings")
    (settings_class,) = [v for v in vars(settings_module).values() if isinstance(v, type)
                         and issubclass(v, BaseSettings) and v.__module__ == settings_module.__name__]
    placeholders = {"jwt_secret": "placeholder", "connection_encryption_keys": Fernet.generate_key().decode(),
                    "log_level": "error"}  # building the app points logging at stdout: errors only, then stderr
    fields = {f.name for f in msgspec.structs.fields(settings_class)}
    settings = load_settings(settings_class, env={}, dotenv=None,
                             **{k: v for k, v in placeholders.items() if k in fields})
    runtime = app_module.create_app(settings).state.runtime
    expected = []
    for spec in runtime.consumer_specs:
        consumer = consumer_of(settings.service_name, spec, runtime.link, runtime.uow)  # as the service does
        expected.append(ExpectedConsumer(service, consumer.durable, tuple(spec.event_types)))
    return expected


# ---- HTTP checks ----------------------------------------------------------------------------------


def why_unreachable(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, ConnectionRefusedError) or isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(getattr(os_error, "strerror", None) or exc) or type(exc).__name__


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str | None = None,
               body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers, json=body) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


def problem(answer: Any) -> str:
    if isinstance(answer, dict):
        return str(answer.get("detail") or answer.get("title") or answer)[:200]
    return str(answer)[:200]


async def check_ready(http: aiohttp.ClientSession, target: Target, service: str) -> Result:
    url = target.urls[service]
    try:
        status, answer = await call(http, "GET", url + "/health/ready")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Result(False, "ready", f"{service} ({url}) not answering: {why_unreachable(exc, target.timeout)}")
    if status != 200:
        return Result(False, "ready", f"{service} ({url}) not ready: /health/ready answered {status}: "
                                      f"{problem(answer)}")
    return Result(True, "ready", f"{service} ({url})")


async def check_endpoints(http: aiohttp.ClientSession, target: Target, service: str) -> Result:
    url, calls = target.urls[service], ENDPOINTS[service]
    wrong = []
    try:
        for path, role in calls:
            status, answer = await call(http, "GET", url + path, target.tokens[role])
            if status != 200:
                wrong.append(f"GET {path} ({role}) answered {status}: {problem(answer)}")
        status, answer = await call(http, "GET", url + calls[0][0])
        if status != 401:
            wrong.append(f"GET {calls[0][0]} without a token answered {status}, not 401: is auth off?")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Result(False, "endpoints", f"{service} ({url}) not answering: {why_unreachable(exc, target.timeout)}")
    if wrong:
        return Result(False, "endpoints", f"{service}: " + "; ".join(wrong))
    return Result(True, "endpoints", f"{service}: {len(calls)} GETs answered 200 (admin and barber tokens), "
                                     "401 without a token")


async def check_route(http: aiohttp.ClientSession, target: Target) -> Result:
    url = target.urls["router"]
    body = {"appointment_id": 1, "amount": "1.00", "currency": "USD"}
    try:
        status, answer = await call(http, "POST", url + ROUTE, target.tokens["barber"], body)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Result(False, "route", f"router ({url}) not answering: {why_unreachable(exc, target.timeout)}")
    if status != 200 or not isinstance(answer, dict) or not answer.get("payment_type"):
        return Result(False, "route", f"router: POST {ROUTE} for probe barber {PROBE_BARBER_ID} answered {status}: "
                                      f"{problem(answer)}")
    return Result(True, "route", f"probe barber {PROBE_BARBER_ID}, 1.00 USD: {answer['payment_type']} on "
                                 f"{answer.get('processor')} ({answer.get('reason')})")


# ---- NATS checks ----------------------------------------------------------------------------------


async def check_stream_and_consumers(target: Target, expected: list[ExpectedConsumer]) -> list[Result]:
    where = mask_url(target.nats_url)
    try:
        nc = await nats.connect(target.nats_url, connect_timeout=target.timeout, allow_reconnect=False,
                                max_reconnect_attempts=0)
    except Exception as exc:
        reason = f"NATS at {where} unreachable: {str(exc) or type(exc).__name__}"
        return [Result(False, "stream", reason), Result(False, "consumers", f"none checked: {reason}")]
    results: list[Result] = []
    try:
        js = nc.jetstream(timeout=target.timeout)
        try:
            info = await js.stream_info(target.stream)
        except NotFoundError:
            return [Result(False, "stream", f"{target.stream} missing on {where}"),
                    Result(False, "consumers", f"none checked: stream {target.stream} missing")]
        have = set(info.config.subjects or [])
        lacking = [s for s in stream_subjects(target.subject_prefix) if s not in have]
        results.append(Result(False, "stream", f"{target.stream} does not carry {', '.join(lacking)} (it has "
                                               f"{', '.join(sorted(have))}; is the subject prefix right?)")
                       if lacking else Result(True, "stream", f"{target.stream} on {where}, {info.state.messages} "
                                                              "messages"))
        for consumer in expected:
            results.append(await check_consumer(js, target, consumer))
        known = {c.durable for c in expected}
        others = sorted(name for name in await consumer_names(js, target.stream) if name not in known)
        if others:  # e.g. durables of an older release: they hold events nobody reads
            results.append(Result(True, "consumers", f"also in {target.stream}, declared by no service: "
                                                     f"{', '.join(others)}"))
    except Exception as exc:
        results.append(Result(False, "consumers", f"NATS at {where}: {str(exc) or type(exc).__name__}"))
    finally:
        await nc.close()
    return results


async def consumer_names(js, stream: str) -> list[str]:
    return [c.name for c in await js.consumers_info(stream)]


async def check_consumer(js, target: Target, consumer: ExpectedConsumer) -> Result:
    try:
        info = await js.consumer_info(target.stream, consumer.durable)
    except NotFoundError:
        return Result(False, "consumers", f"{consumer.durable} missing from stream {target.stream} ({consumer.service} "
                                          "creates it when it starts)")
    wanted = sorted(target.subject_prefix + t for t in consumer.event_types)
    filters = sorted(info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject
                                                     else []))
    if filters != wanted:
        return Result(False, "consumers", f"{consumer.durable} in {target.stream} reads {', '.join(filters) or 'all'}, "
                                          f"the code says {', '.join(wanted)}")
    backlog = info.num_pending + info.num_ack_pending
    detail = f"{consumer.durable}: backlog {backlog} ({info.num_pending} pending, {info.num_ack_pending} unacked)"
    if backlog > target.max_backlog:
        return Result(False, "consumers", f"{detail} exceeds --max-backlog {target.max_backlog} ({consumer.service} "
                                          "falling behind?)")
    return Result(True, "consumers", detail)


# ---- database checks ------------------------------------------------------------------------------


async def check_schemas(engine: AsyncEngine) -> list[Result]:
    results = []
    for service in SERVICES:
        try:
            await check_at_head(service, engine)
        except SchemaNotAtHead as exc:
            results.append(Result(False, "schema", str(exc)))
        else:
            results.append(Result(True, "schema", f"{service} at head {head_revision(service)}"))
    return results


async def check_dead_letters(engine: AsyncEngine) -> list[Result]:
    results = []
    for service in SERVICES:
        parked = PlatformTables(sa.MetaData(schema=service)).dead_letters
        waiting = parked.c.replayed_at.is_(None) & parked.c.discarded_at.is_(None)
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(parked.c.consumer, sa.func.count()).where(waiting)
                                       .group_by(parked.c.consumer).order_by(parked.c.consumer))).all()
        count = sum(n for _, n in rows)
        results.append(Result(True, "dead-letters", f"{service}: none waiting") if not count else Result(
            False, "dead-letters", f"{service}: {count} dead-lettered event(s) not replayed ("
            + ", ".join(f"{consumer} {n}" for consumer, n in rows)
            + f"): python -m tools.dead_letters list --service {service}"))
    return results


async def check_outbox(engine: AsyncEngine, max_age: float) -> list[Result]:
    results = []
    for service in SERVICES:
        outbox = PlatformTables(sa.MetaData(schema=service)).outbox
        age = sa.func.extract("epoch", sa.func.now() - outbox.c.created_at)
        async with engine.connect() as conn:
            row = (await conn.execute(sa.select(
                sa.func.count().filter(age > max_age), sa.func.count(), sa.func.max(age))
                .where(outbox.c.published_at.is_(None)))).one()
            stale, unpublished, oldest = row
            if stale:
                error = await conn.scalar(sa.select(outbox.c.last_error).where(
                    outbox.c.published_at.is_(None), outbox.c.last_error.is_not(None)).order_by(outbox.c.id).limit(1))
        if stale:
            results.append(Result(False, "outbox", f"{service}: {stale} event(s) unpublished for more than "
                                                   f"{max_age:g} s (oldest {float(oldest):.0f} s)"
                                                   + (f", last error: {error[:200]}" if error else "")
                                                   + f": is {service}'s outbox relay running and NATS reachable?"))
        else:
            results.append(Result(True, "outbox", f"{service}: drained ({unpublished} unpublished, none older than "
                                                  f"{max_age:g} s)"))
    return results


async def check_legacy_import(engine: AsyncEngine) -> Result:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.text(
            "SELECT id, source, status, report -> 'differences' AS differences, finished_at "
            "FROM router.legacy_imports ORDER BY id DESC LIMIT 1"))).mappings().first()
    if row is None:
        return Result(True, "legacy-import", "no legacy import has run")
    run = f"run {row['id']} from {row['source']}"
    if row["status"] == "reconciled":
        return Result(True, "legacy-import", f"{run} reconciled: no differences")
    if row["status"] == "differences":
        found = row["differences"] if isinstance(row["differences"], list) else []
        shown = "; ".join(map(str, found[:3])) + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")
        return Result(False, "legacy-import", f"{run}: reconciliation found {len(found)} difference(s): "
                                              f"{shown or 'see its report'}")
    if row["status"] in ("running", "imported"):
        return Result(False, "legacy-import", f"{run} unfinished ({row['status']}), run make import again")
    return Result(False, "legacy-import", f"{run} has unknown status {row['status']!r}")


async def database_checks(target: Target) -> list[Result]:
    """Schema, dead letters, outbox, legacy import; each fails on its own when it cannot read."""
    engine = create_async_engine(normalise_database_url(target.database_url), poolclass=sa.pool.NullPool,
                                 connect_args={"timeout": target.timeout})
    where = mask_url(target.database_url)
    try:
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            reason = f"database {where} unreachable: {short_error(exc)}"
            return [Result(False, check, reason) for check in ("schema", "dead-letters", "outbox", "legacy-import")]
        checks: list[tuple[str, Awaitable[Any]]] = [
            ("schema", check_schemas(engine)), ("dead-letters", check_dead_letters(engine)),
            ("outbox", check_outbox(engine, target.outbox_age)), ("legacy-import", check_legacy_import(engine))]
        results: list[Result] = []
        for name, check in checks:
            try:
                found = await check
            except Exception as exc:  # e.g. a schema that was never migrated: its tables are missing
                found = Result(False, name, f"cannot read it in {where}: {short_error(exc)}")
            results += found if isinstance(found, list) else [found]
        return results
    finally:
        await engine.dispose()


def short_error(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    return (str(orig or exc).strip().splitlines() or [type(exc).__name__])[0][:300]


# ---- the whole run --------------------------------------------------------------------------------


async def expected_consumers() -> list[ExpectedConsumer] | Result:
    try:
        found = []
        for service in SERVICES:
            found += await asyncio.to_thread(declared_consumers, service)
        return found
    except Exception as exc:
        return Result(False, "consumers", f"cannot read the declared consumers from the code: {short_error(exc)}")
    finally:
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING, force=True)  # stdout is the report


async def validate(target: Target) -> list[Result]:
    """Every check, concurrently; the results in a fixed order."""
    async def nats_checks() -> list[Result]:
        expected = await expected_consumers()
        if isinstance(expected, Result):
            return [expected]
        return await check_stream_and_consumers(target, expected)

    timeout = aiohttp.ClientTimeout(total=target.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        ready, endpoints, route, database, events = await asyncio.gather(
            asyncio.gather(*(check_ready(http, target, s) for s in SERVICES)),
            asyncio.gather(*(check_endpoints(http, target, s) for s in SERVICES)),
            check_route(http, target), database_checks(target), nats_checks())
    schema = [r for r in database if r.check == "schema"]
    return [*schema, *ready, *endpoints, route, *events, *(r for r in database if r.check != "schema")]


def report(results: list[Result], console: Console) -> int:
    for r in results:
        console.print(Text.assemble(("PASS" if r.ok else "FAIL", "green" if r.ok else "bold red"),
                                    f" {r.check}: {r.detail}"))
    failed = sum(not r.ok for r in results)
    summary = f"{failed} of {len(results)} checks failed" if failed else f"all {len(results)} checks passed"
    print(f"validate: {summary}", file=sys.stderr)
    return 1 if failed else 0


def recorded() -> dict[str, Any]:
    """What `make run` recorded (while it runs)."""
    try:
        return json.loads(RUN_STATE.read_text())
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for service, port in DEFAULT_PORTS.items():
        parser.add_argument(f"--{service}-url", metavar="URL", help=f"default: run.json, else http://127.0.0.1:{port}")
    parser.add_argument("--database-url")
    parser.add_argument("--nats-url")
    parser.add_argument("--stream", help=f"JetStream stream (default: $EVENT_STREAM, else {DEFAULT_STREAM})")
    parser.add_argument("--subject-prefix", help="event subject prefix (default: $EVENT_SUBJECT_PREFIX, else none)")
    parser.add_argument("--jwt-secret")
    parser.add_argument("--max-backlog", type=int, default=1000, help="most events a consumer may have waiting")
    parser.add_argument("--outbox-age", type=float, default=60.0, help="seconds an outbox event may stay unpublished")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per HTTP call and connection")
    args = parser.parse_args(argv)
    if args.max_backlog < 0 or args.outbox_age <= 0 or args.timeout <= 0:
        parser.error("--max-backlog must be >= 0, --outbox-age and --timeout > 0")
    secret = pick_jwt_secret(args.jwt_secret)
    if not secret:
        print("no JWT secret: pass --jwt-secret or set JWT_SECRET (as the services have it)", file=sys.stderr)
        return 2
    state = recorded()
    stream, subject_prefix = pick_event_names(args.stream, args.subject_prefix)
    urls = {s: (getattr(args, f"{s}_url") or state.get("urls", {}).get(s) or f"http://127.0.0.1:{port}").rstrip("/")
            for s, port in DEFAULT_PORTS.items()}
    target = Target(
        urls=urls,
        database_url=pick_database_url(args.database_url, SUITE_DATABASE_URL)[0],
        nats_url=args.nats_url or os.environ.get("NATS_URL") or state.get("nats_url") or DEFAULT_NATS_URL,
        stream=stream, subject_prefix=subject_prefix,
        jwt_secret=secret, max_backlog=args.max_backlog, outbox_age=args.outbox_age, timeout=args.timeout,
    )
    return report(asyncio.run(validate(target)), Console(highlight=False, soft_wrap=True))


if __name__ == "__main__":
    sys.exit(main())
