"""Drive `POST /route`, route-and-pay `POST /process` (or a ceiling app) at a fixed concurrency or a fixed rate and report throughput,
latency percentiles and errors by kind, as a table and as JSON: `python -m tests.load.loadtest --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import socket
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import count
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from rich.console import Console
from rich.table import Table

from tests.load.stats import CLIENT_OVERLOAD, Recorder, combined_summary, send_offsets, verdict

ROUTE_PATH = "/api/v1/hybrid-payments/route"
PROCESS_PATH = "/api/v1/hybrid-payments/process"
WORKLOADS = ("route", "pay")
CONFIG_PATH = "/api/v1/hybrid-payments/config"
MODES = ("centralized", "decentralized", "hybrid")
ADMIN_SUBJECT = 1000  # the seeding admin's id (the same operator id `make run` prints a token for)


class LoadError(Exception):
    """The run could not start (unreachable target, failed seeding, bad arguments)."""


@dataclass(frozen=True)
class LoadConfig:
    url: str
    path: str = ROUTE_PATH
    config_path: str = CONFIG_PATH
    duration: float = 20.0
    warmup: float = 3.0
    concurrency: int | None = 32
    rate: float | None = None
    max_inflight: int = 256
    timeout: float = 5.0
    barbers: int = 50
    barber_id_start: int = 900001
    seed: bool = True
    jwt_secret: str = ""
    random_seed: int = 1
    appointment_id_start: int = 0  # 0: derived from the clock, so ids stay unique across runs
    p95_ms: float | None = None
    # route: `/route` bodies over a mix of modes. pay: route-and-pay bodies (`payment_method`
    # pm_card_visa, an `Idempotency-Key` per payment) for barbers seeded centralized, so every
    # request charges the platform's Stripe (the simulator under `make run`).
    workload: str = "route"


# --- the workload (pure) ---------------------------------------------------------------------

def barber_config(index: int, barber_id: int) -> dict[str, Any]:
    """A deterministic mix of modes, processors and thresholds.

    Fallback is always on and `max_platform_amount` stays above the largest amount sent, so
    barbers without processor connections still get a route (centralized or fallback), not a 422.
    """
    return {
        "payment_mode": MODES[index % 3],
        "preferred_processor": (None, "stripe", "square", "paypal")[index % 4],
        "fallback_enabled": True,
        "min_external_amount": ("10.00", "20.00", "50.00", None)[index % 4],
        "max_platform_amount": ("1000.00", "2500.00", "5000.00")[index % 3],
        "split_threshold": ("100.00", "150.00", "250.00", "75.00", None)[index % 5],
        "commission_rate": ("0.10", "0.15", "0.20", "0.125")[index % 4],
        "connect_account_id": f"acct_load{barber_id}",
    }


def pay_config(index: int, barber_id: int) -> dict[str, Any]:
    """Route-and-pay barbers: centralized, so each payment is a destination charge on the platform."""
    return {"payment_mode": "centralized", "fallback_enabled": True,
            "commission_rate": ("0.10", "0.15", "0.20", "0.125")[index % 4],
            "connect_account_id": f"acct_load{barber_id}"}


def amount_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def route_body(appointment_id: int, cents: int) -> bytes:
    body = b'{"appointment_id":%d,"amount":"%s","currency":"USD"}'
    return body % (appointment_id, amount_text(cents).encode())


def pay_body(appointment_id: int, cents: int) -> bytes:
    body = b'{"appointment_id":%d,"amount":"%s","currency":"USD","payment_method":"pm_card_visa"}'
    return body % (appointment_id, amount_text(cents).encode())


def error_kind(status: int, body: bytes) -> str:
    """`<status> <code>` from a problem document, else the bare status."""
    try:
        code = msgspec.json.decode(body).get("code")
    except (msgspec.DecodeError, AttributeError):
        code = None
    return f"{status} {code}" if isinstance(code, str) else str(status)


def is_loopback_host(host: str, resolve=socket.getaddrinfo) -> bool:
    """True when the host is, or resolves only to, loopback addresses."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in resolve(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


# --- the run (I/O) ----------------------------------------------------------------------------

def _exception_kind(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error"
    return f"connection_error:{type(exc).__name__}"


class Driver:
    """Sends route requests as random seeded barbers and records each outcome."""

    def __init__(self, cfg: LoadConfig, session: aiohttp.ClientSession):
        from shared.auth import issue_token  # imported here: it pulls in Litestar

        ttl = int(cfg.warmup + cfg.duration + 600)
        self.url = cfg.url.rstrip("/") + cfg.path
        self.session = session
        self.recorder = Recorder(0.0, 0.0)  # the measured window is set when the load starts
        self.headers = [
            {"Authorization": f"Bearer {issue_token(cfg.jwt_secret, bid, 'barber', ttl_seconds=ttl)}",
             "Content-Type": "application/json"}
            for bid in range(cfg.barber_id_start, cfg.barber_id_start + cfg.barbers)
        ]
        self.rng = random.Random(cfg.random_seed)
        self.appointment_ids = count(cfg.appointment_id_start or time.time_ns() // 1000)
        self.pay = cfg.workload == "pay"

    async def send(self, started: float) -> None:
        """One request; latency runs from `started` (the scheduled time in an open loop)."""
        lag = time.perf_counter() - started
        headers = self.headers[self.rng.randrange(len(self.headers))]
        appointment_id = next(self.appointment_ids)
        if self.pay:
            body = pay_body(appointment_id, self.rng.randint(500, 90_000))
            headers = {**headers, "Idempotency-Key": f"load-{appointment_id}"}
        else:
            body = route_body(appointment_id, self.rng.randint(500, 90_000))
        kind: str | None
        try:
            async with self.session.post(self.url, data=body, headers=headers) as resp:
                payload = await resp.read()
                kind = None if resp.status == 200 else error_kind(resp.status, payload)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            kind = _exception_kind(exc)
        self.recorder.add(started, time.perf_counter() - started, kind, lag)

    async def closed_loop(self, workers: int, end: float) -> None:
        async def worker() -> None:
            while (now := time.perf_counter()) < end:
                await self.send(now)

        await asyncio.gather(*(worker() for _ in range(workers)))

    async def open_loop(self, rate: float, start: float, total: float, max_inflight: int) -> None:
        """Sends on a fixed timetable; when `max_inflight` are outstanding, the send is dropped."""
        inflight: set[asyncio.Task[None]] = set()
        for offset in send_offsets(rate, total):
            due = start + offset
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(inflight) >= max_inflight:
                self.recorder.add(due, None, CLIENT_OVERLOAD)
                continue
            task = asyncio.create_task(self.send(due))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.gather(*inflight)


async def probe(session: aiohttp.ClientSession, url: str) -> None:
    """Any HTTP answer on /health/live means the target listens."""
    try:
        async with session.get(url.rstrip("/") + "/health/live", timeout=aiohttp.ClientTimeout(total=3)) as r:
            await r.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise LoadError(f"{url} is not reachable ({type(exc).__name__}: {exc})") from None


async def seed_barbers(session: aiohttp.ClientSession, cfg: LoadConfig) -> None:
    """PUT every barber's config with an admin token; any failure stops the run."""
    from shared.auth import issue_token

    # `sub` must be a positive integer id for every role, admins included.
    token = issue_token(cfg.jwt_secret, ADMIN_SUBJECT, "admin", ttl_seconds=600)
    headers = {"Authorization": f"Bearer {token}"}
    gate = asyncio.Semaphore(16)
    base = cfg.url.rstrip("/") + cfg.config_path.rstrip("/")

    async def put(index: int) -> str | None:
        barber_id = cfg.barber_id_start + index
        config = pay_config(index, barber_id) if cfg.workload == "pay" else barber_config(index, barber_id)
        async with gate, session.put(f"{base}/{barber_id}", json=config,
                                     headers=headers) as resp:
            body = await resp.read()
            return None if resp.status == 200 else f"barber {barber_id}: {resp.status} {body[:300]!r}"

    try:
        failures = [f for f in await asyncio.gather(*(put(i) for i in range(cfg.barbers))) if f]
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise LoadError(f"seeding failed: {type(exc).__name__}: {exc}") from None
    if failures:
        hint = " (is --jwt-secret the services' JWT_SECRET?)" if ": 401 " in failures[0] else ""
        raise LoadError(f"seeding failed for {len(failures)} of {cfg.barbers} barbers{hint}; first: {failures[0]}")


async def run_load(cfg: LoadConfig, console: Console | None = None) -> dict[str, Any]:
    """Seed (optionally), drive the load for warmup + duration, and return the result document."""
    if not cfg.jwt_secret:
        raise LoadError("no JWT secret: pass --jwt-secret or set JWT_SECRET (the one the services use)")
    if (cfg.concurrency is None) == (cfg.rate is None):
        raise LoadError("give exactly one of concurrency or rate")
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    async with AsyncExitStack() as stack:
        driver = await _driver(stack, cfg)
        if console is not None:
            how = f"{cfg.concurrency} workers" if cfg.concurrency else f"{cfg.rate:g} req/s"
            console.print(f"[dim]{driver.url}: {how}, {cfg.warmup:g} s warmup + {cfg.duration:g} s measured, "
                          f"{cfg.barbers} barbers[/]")
        start = time.perf_counter()
        end = start + cfg.warmup + cfg.duration
        driver.recorder = recorder = Recorder(start + cfg.warmup, end)
        if cfg.concurrency:
            await driver.closed_loop(cfg.concurrency, end)
        else:
            await driver.open_loop(cfg.rate, start, cfg.warmup + cfg.duration, cfg.max_inflight)
    return _result(cfg, started_at, recorder.summary())


async def _driver(stack: AsyncExitStack, cfg: LoadConfig) -> Driver:
    """A driver for `cfg` on a session of its own (closed with `stack`): target probed, barbers
    seeded when asked."""
    connector = aiohttp.TCPConnector(limit=cfg.concurrency or cfg.max_inflight, limit_per_host=0)
    session = await stack.enter_async_context(aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=cfg.timeout), auto_decompress=False))
    await probe(session, cfg.url)
    if cfg.seed:
        await seed_barbers(session, cfg)
    return Driver(cfg, session)


# Seconds of load before each slice of a side-by-side run is measured: the target's pools, batches
# and caches are warm from its earlier slices; this only lets the switch from the other target settle.
SLICE_SETTLE = 1.0


async def run_side_by_side(cfgs: Sequence[LoadConfig], rounds: int = 3,
                           console: Console | None = None) -> list[dict[str, Any]]:
    """Closed loops against several targets taking turns: `rounds` slices of duration/rounds each,
    a, b, a, b, ... after one warmup each, so a machine that is busier in one part of the run than
    in another weighs on every target alike. One result per config, as `run_load` gives it, over all
    of its slices."""
    if not cfgs or any(not c.concurrency for c in cfgs) or any(not c.jwt_secret for c in cfgs):
        raise LoadError("side by side runs are closed loops with a JWT secret")
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    async with AsyncExitStack() as stack:
        drivers = [await _driver(stack, cfg) for cfg in cfgs]
        if console is not None:
            console.print(f"[dim]side by side, {rounds} rounds: "
                          + "; ".join(f"{d.url} ({c.concurrency} workers, {c.duration / rounds:g} s a slice)"
                                      for d, c in zip(drivers, cfgs, strict=True)) + "[/]")
        slices: list[list[Recorder]] = [[] for _ in cfgs]
        for round_no in range(rounds):
            for index, (cfg, driver) in enumerate(zip(cfgs, drivers, strict=True)):
                settle = cfg.warmup if round_no == 0 else SLICE_SETTLE
                start = time.perf_counter()
                end = start + settle + cfg.duration / rounds
                driver.recorder = recorder = Recorder(start + settle, end)
                await driver.closed_loop(cfg.concurrency, end)
                slices[index].append(recorder)
    return [_result(cfg, started_at, combined_summary(recorders)) | {"slices": len(recorders)}
            for cfg, recorders in zip(cfgs, slices, strict=True)]


def _result(cfg: LoadConfig, started_at: str, summary: dict[str, Any]) -> dict[str, Any]:
    failures = verdict(summary, p95_ms=cfg.p95_ms)
    return {
        "target": cfg.url.rstrip("/") + cfg.path,
        "mode": "concurrency" if cfg.concurrency else "rate",
        "started_at": started_at,
        "config": {k: v for k, v in asdict(cfg).items() if k != "jwt_secret"},
        "summary": summary,
        "failures": failures,
        "passed": not failures,
    }


def render(result: dict[str, Any], console: Console, title: str | None = None) -> None:
    s, lat, cfg = result["summary"], result["summary"]["latency_ms"], result["config"]
    load = f"concurrency {cfg['concurrency']}" if result["mode"] == "concurrency" else f"{cfg['rate']:g} req/s"
    console.print(f"[bold]{title or result['target']}[/] — {load}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in [
        ("requests", f"{s['requests']:,}"), ("successes", f"{s['successes']:,}"),
        ("success rate", f"{s['success_rate']:.3%}"), ("throughput", f"{s['throughput_rps']:,.1f} req/s"),
        ("p50", f"{lat['p50']:.2f} ms"), ("p95", f"{lat['p95']:.2f} ms"),
        ("p99", f"{lat['p99']:.2f} ms"), ("max", f"{lat['max']:.2f} ms"),
    ]:
        table.add_row(name, value)
    if result["mode"] == "rate":  # latency counts from the timetable; this much was the client's own delay
        lag = s["send_lag_ms"]
        table.add_row("[dim]send lag p99 / max[/]", f"[dim]{lag['p99']:.2f} / {lag['max']:.2f} ms[/]")
    for kind, n in s["errors_by_kind"].items():
        table.add_row(f"[red]error {kind}[/]", f"{n:,}")
    console.print(table)
    if result["failures"]:
        console.print("[bold red]FAIL[/] " + "; ".join(result["failures"]))
    else:
        console.print("[bold green]PASS[/]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.load.loadtest", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="base URL (loopback only)")
    p.add_argument("--workload", choices=WORKLOADS, default="route",
                   help="route: POST /route; pay: route-and-pay POST /process, centralized (default %(default)s)")
    p.add_argument("--path", help="POST path (default: the workload's)")
    p.add_argument("--config-path", default=CONFIG_PATH, help="admin config path used for seeding")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, help="closed loop: this many workers (default 32)")
    mode.add_argument("--rate", type=float, help="open loop: requests per second on a fixed timetable")
    p.add_argument("--max-inflight", type=int, default=256,
                   help="open loop: outstanding requests beyond this are dropped as client_overload")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds (after warmup)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    p.add_argument("--barbers", type=int, default=50)
    p.add_argument("--barber-id-start", type=int, default=900001)
    p.add_argument("--seed", action=argparse.BooleanOptionalAction, default=True,
                   help="PUT the barbers' configs first (admin token)")
    p.add_argument("--jwt-secret", default=os.environ.get("JWT_SECRET", ""), help="default: $JWT_SECRET")
    p.add_argument("--random-seed", type=int, default=1)
    p.add_argument("--appointment-id-start", type=int, default=0, help="default: from the clock")
    p.add_argument("--p95-ms", type=float, help="fail when p95 is over this many ms")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON ('-' for stdout)")
    p.add_argument("--allow-remote", action="store_true", help="permit a non-loopback target")
    args = p.parse_args(argv)
    if args.rate is None and args.concurrency is None:
        args.concurrency = 32
    for name in ("duration", "timeout", "rate", "concurrency", "barbers", "max_inflight"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    return args


def check_target(url: str, allow_remote: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadError(f"--url must be http(s)://host:port, not {url!r}")
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise LoadError(f"{parts.hostname} is not a loopback address; load is only sent to this machine "
                        "(--allow-remote overrides)")


def write_json(document: Any, target: str) -> None:
    text = json.dumps(document, indent=2)
    if target == "-":
        print(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        with open(target, "w") as fh:
            fh.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=args.json == "-")  # keep stdout clean for `--json -`
    cfg = LoadConfig(
        url=args.url, path=args.path or (PROCESS_PATH if args.workload == "pay" else ROUTE_PATH),
        workload=args.workload, config_path=args.config_path, duration=args.duration,
        warmup=args.warmup, concurrency=args.concurrency, rate=args.rate, max_inflight=args.max_inflight,
        timeout=args.timeout, barbers=args.barbers, barber_id_start=args.barber_id_start, seed=args.seed,
        jwt_secret=args.jwt_secret, random_seed=args.random_seed,
        appointment_id_start=args.appointment_id_start, p95_ms=args.p95_ms,
    )
    try:
        check_target(cfg.url, args.allow_remote)
        result = asyncio.run(run_load(cfg, console))
    except LoadError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    render(result, console)
    if args.json:
        write_json(result, args.json)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
