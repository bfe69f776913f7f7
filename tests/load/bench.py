"""`make load`: measure the ceiling app and `/route` in the same run and check issue 3's targets as ratios
(route/ceiling throughput >= 0.70 and p99 <= 1.5x at concurrency 32; p99 < 10 ms at 500 req/s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from tests.load.ceiling import PATH as CEILING_PATH
from tests.load.loadtest import (
    CONFIG_PATH,
    LoadConfig,
    LoadError,
    check_target,
    render,
    run_load,
    write_json,
)
from tests.load.stats import compare
from tools.runstate import pick_database_url, pick_jwt_secret

ROOT = Path(__file__).resolve().parents[2]
console = Console()
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy


def via_gateway(router_url: str) -> bool:
    """The dev gateway marks what it proxies with `Via: 1.1 hybrid-payments-gateway`."""
    try:
        with _DIRECT.open(router_url.rstrip("/") + CONFIG_PATH, timeout=3) as resp:
            via = resp.headers.get("Via", "")
    except urllib.error.HTTPError as exc:  # 401 without a token: still a proxied answer
        via = exc.headers.get("Via", "")
    except (urllib.error.URLError, OSError):
        return urlsplit(router_url).port == 8000
    return "gateway" in via


def reachable(url: str) -> str | None:
    """None when something answers HTTP at the URL, else why not."""
    try:
        _DIRECT.open(url.rstrip("/") + "/health/live", timeout=3).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ceiling_app(database_url: str, log_path: Path, ready_timeout: float = 30.0) -> Iterator[str]:
    """Run the ceiling app as a subprocess on a free port; yields its base URL and stops it after."""
    port = _free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.load.ceiling", "--port", str(port), "--database-url", database_url],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while reachable(url) is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise LoadError(f"the ceiling app did not start (see {log_path}):\n{tail}")
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the granian worker goes too
                proc.wait()


def render_checks(rows: list[dict[str, Any]], note: str | None) -> None:
    table = Table(title="make load — /route against its ceiling", title_justify="left")
    for column, justify in (("check", "left"), ("measured", "right"), ("target", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for row in rows:
        value = "n/a" if row["value"] is None else f"{row['value']:g}"
        table.add_row(row["check"], value, row["target"],
                      "[bold green]PASS[/]" if row["passed"] else "[bold red]FAIL[/]")
    console.print(table)
    if note:
        console.print(f"[yellow]note:[/] {note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.load.bench", description=__doc__)
    # The router's own port by default: the targets are about /route, and the dev gateway's extra
    # Python hop on the same two cores costs more than the router itself (see README).
    p.add_argument("--router-url", default="http://127.0.0.1:8001",
                   help="the router itself (8001, default) or the gateway (8000); "
                        "`make load LOAD_URL=...` sets it")
    p.add_argument("--database-url", help="for the ceiling app (default: see README)")
    p.add_argument("--jwt-secret", help="default: $JWT_SECRET, else JWT_SECRET in .env")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--barbers", type=int, default=200,
                   help="seeded barbers; enough that no barber hits RATE_LIMIT_PER_MINUTE (600)")
    p.add_argument("--barber-id-start", type=int, default=900001)
    p.add_argument("--json", default=str(ROOT / ".run" / "load-results.json"), metavar="FILE")
    return p.parse_args(argv)


async def _measure(args: argparse.Namespace, ceiling_url: str, secret: str) -> dict[str, dict[str, Any]]:
    route = LoadConfig(url=args.router_url, duration=args.duration, warmup=args.warmup,
                       concurrency=args.concurrency, barbers=args.barbers,
                       barber_id_start=args.barber_id_start, jwt_secret=secret)
    runs = {}
    console.rule("ceiling app")
    runs["ceiling"] = await run_load(replace(route, url=ceiling_url, path=CEILING_PATH, seed=False), console)
    render(runs["ceiling"], console, title="ceiling")
    console.rule(f"/route at concurrency {args.concurrency}")
    runs["route"] = await run_load(route, console)
    render(runs["route"], console, title="/route")
    console.rule(f"/route at {args.rate:g} req/s")
    runs["route_at_rate"] = await run_load(replace(route, concurrency=None, rate=args.rate, seed=False), console)
    render(runs["route_at_rate"], console, title="/route")
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    secret = pick_jwt_secret(args.jwt_secret)
    try:
        check_target(args.router_url, allow_remote=False)
        if (why := reachable(args.router_url)) is not None:
            raise LoadError(f"the router is not reachable at {args.router_url} ({why}): "
                            "start the suite with `make run` first")
        if not secret:
            raise LoadError("no JWT secret: set JWT_SECRET to the one `make run` uses (it prints it)")
        database_url, db_source = pick_database_url(args.database_url)
        console.print(f"[dim]ceiling database from {db_source}[/]")
        with ceiling_app(database_url, ROOT / ".run" / "logs" / "load-ceiling.log") as ceiling_url:
            # The ceiling stays up (idle) during the router runs; it is stopped when they end.
            runs = asyncio.run(_measure(args, ceiling_url, secret))
    except LoadError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    gateway = via_gateway(args.router_url)
    note = None
    if gateway:
        note = (f"{args.router_url} is the gateway, which adds a proxy hop to every /route request; "
                "--router-url http://127.0.0.1:8001 measures the router alone")
    summaries = (runs[name]["summary"] for name in ("ceiling", "route", "route_at_rate"))
    rows = compare(*summaries, rate=args.rate)
    render_checks(rows, note)
    passed = all(row["passed"] for row in rows)
    write_json({
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "router_url": args.router_url, "via_gateway": gateway, "note": note,
        "runs": runs, "checks": rows, "passed": passed,
    }, args.json)
    console.print(f"results: {args.json}\n" + ("[bold green]PASS[/]" if passed else "[bold red]FAIL[/]"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
