"""`make run` as a real process (all ready, the gateway routes, SIGTERM leaves nothing behind),
and the dev gateway's proxying rules against an in-process echo upstream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import jwt
from aiohttp import web
from yarl import URL

from tools.gateway import PREFIXES, create_gateway_app

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PORTS = ("ROUTER_PORT", "EXTERNAL_PORT", "COLLECTIONS_PORT", "ANALYTICS_PORT")
OTHER_PORTS = ("GATEWAY_PORT", "STRIPE_SIM_PORT", "SQUARE_SIM_PORT", "PAYPAL_SIM_PORT")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def processes_with(marker: str) -> list[int]:
    """Pids whose environment carries `marker`: every descendant of the run inherits it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "environ").read_bytes():
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
    return found


def test_make_run_serves_routes_and_stops_cleanly(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    ports = dict(zip(SERVICE_PORTS + OTHER_PORTS, map(str, free_ports(8))))
    env = {**os.environ, **service_env, **ports, "RUN_DIR": str(run_dir), "RUN_FOLLOW_LOGS": "0"}
    # Exercise the generated secret and tokens, and the simulators, whatever the caller's env says.
    for var in (
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "STRIPE_API_BASE",
        "SQUARE_API_BASE",
        "PAYPAL_API_BASE",
    ):
        env.pop(var, None)
    output = tmp_path / "run.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    state_file = run_dir / "run.json"
    state: dict = {}
    try:
        deadline = time.monotonic() + 60
        while not state_file.exists():
            assert proc.poll() is None, f"make run exited {proc.returncode}:\n{output.read_text()}"
            assert time.monotonic() < deadline, f"make run not ready in 60 s:\n{output.read_text()}"
            time.sleep(0.2)
        state = json.loads(state_file.read_text())
        printed = output.read_text()

        for var in SERVICE_PORTS:
            status, _, body = get(f"http://127.0.0.1:{ports[var]}/health/ready")
            assert status == 200, (var, body)
        gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        status, _, body = get(gateway + "/health/ready")
        assert (status, json.loads(body)) == (
            200,
            dict.fromkeys(["router", "external", "collections", "analytics"], 200),
        )

        # Each prefix reaches its service: the answer is the service's own problem (granian's).
        for prefix in PREFIXES:
            status, headers, body = get(f"{gateway}{prefix}/no-such-thing?probe=1")
            assert status in (401, 404), (prefix, status, body)
            assert headers.get("server") == "granian", (prefix, headers)
            assert headers["content-type"].startswith("application/problem+json")
            assert "hybrid-payments-gateway" in headers.get("via", "")
        status, headers, body = get(gateway + "/api/v1/unknown")
        assert (status, json.loads(body)["code"]) == (404, "not_found")
        assert headers.get("server") != "granian"

        # The printed secret verifies the printed admin token; services were sent to the simulator.
        secret = next(
            line.split("=", 1)[1].split()[0]
            for line in printed.splitlines()
            if line.startswith("JWT_SECRET=")
        )
        assert jwt.decode(state["admin_token"], secret, algorithms=["HS256"])["role"] == "admin"
        assert state["admin_token"] in printed
        assert state["urls"]["stripe-sim"] == f"http://127.0.0.1:{ports['STRIPE_SIM_PORT']}"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, output.read_text()
        assert processes_with(str(run_dir)) == [], "processes of the run survived"
        pids = [*state["children"].values(), *state["embedded"].values()]
        assert not [p for p in pids if p and Path(f"/proc/{p}").exists()]
        used = [int(p) for p in ports.values()]
        for kind, url in (("postgres", state["database_url"]), ("nats", state["nats_url"])):
            if state["embedded"][kind]:
                used.append(urllib.parse.urlsplit(url).port)
        assert [p for p in used if not port_free(p)] == []
        assert not state_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in state.get("children", {}).values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


# --- the gateway on its own -----------------------------------------------------------------------
async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _echo(request: web.Request) -> web.Response:
    if request.path.endswith("/slow"):
        await asyncio.sleep(1)
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "body": (await request.read()).hex(),
            "headers": {k.lower(): v for k, v in request.headers.items()},
        },
        headers={"Server": "echo", "Connection": "keep-alive"},
    )


async def _echo_ready(_: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


@contextlib.asynccontextmanager
async def _gateway(**kwargs):
    upstream = web.Application()
    upstream.router.add_get("/health/ready", _echo_ready)
    upstream.router.add_route("*", "/{tail:.*}", _echo)
    up_runner, up_url = await _serve(upstream)
    down_url = f"http://127.0.0.1:{free_ports(1)[0]}"
    routes = {"router": up_url, "external": up_url, "collections": up_url, "analytics": down_url}
    gw_runner, gw_url = await _serve(create_gateway_app(routes, **kwargs))
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            yield client, gw_url
    finally:
        await gw_runner.cleanup()
        await up_runner.cleanup()


async def test_gateway_passes_method_path_headers_and_raw_body_through() -> None:
    raw = b'{"id":"evt_1",  "amount" : 50.00,\n "note":"caf\xc3\xa9"}'
    path = "/api/v1/webhooks/stripe/7?x=a%20b&y=%2F"
    async with (
        _gateway() as (client, url),
        client.post(
            URL(url + path, encoded=True),  # sent as written, not normalised
            data=raw,
            headers={
                "Stripe-Signature": "t=1,v1=abc",
                "Content-Type": "application/json",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "drop me",
                "X-Forwarded-For": "203.0.113.9",
            },
        ) as resp,
    ):
        seen = await resp.json()
        assert resp.status == 200 and resp.headers["Server"] == "echo"
    assert seen["method"] == "POST"
    assert seen["raw_path"] == path
    assert bytes.fromhex(seen["body"]) == raw
    headers = seen["headers"]
    assert headers["stripe-signature"] == "t=1,v1=abc"
    assert "x-hop" not in headers
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http" and headers["x-request-id"]


async def test_gateway_keeps_a_callers_request_id() -> None:
    async with (
        _gateway() as (client, url),
        client.get(url + "/api/v1/hybrid-payments/x", headers={"X-Request-ID": "abc123"}) as resp,
    ):
        assert (await resp.json())["headers"]["x-request-id"] == "abc123"


async def test_gateway_answers_problems_for_unknown_paths_down_and_slow_upstreams() -> None:
    async with _gateway(timeout=0.3) as (client, url):
        for path, status, code in [
            ("/api/v1/nowhere", 404, "not_found"),
            ("/api/v1/hybrid-payments-x", 404, "not_found"),  # a prefix matches whole segments only
            ("/api/v1/unified-payment-analytics/dashboard", 502, "upstream_unavailable"),
            ("/api/v1/platform-collections/slow", 504, "upstream_timeout"),
        ]:
            async with client.get(url + path) as resp:
                body = await resp.json(content_type=None)
                assert (resp.status, body["code"], body["status"]) == (status, code, status), path
                assert resp.content_type == "application/problem+json"


async def test_gateway_readiness_names_each_service() -> None:
    async with _gateway() as (client, url), client.get(url + "/health/ready") as resp:
        assert resp.status == 503
        assert await resp.json() == {
            "router": 200,
            "external": 200,
            "collections": 200,
            "analytics": 0,
        }
