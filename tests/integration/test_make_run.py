"""`make run` as a real process (all ready, the gateway routes, SIGTERM leaves nothing behind, a
repeated SIGTERM too), and the dev gateway's proxying rules and its own problem answers against
an in-process echo upstream, over real sockets (raw bytes for what no HTTP client would send)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from yarl import URL

from tests.run_support import (  # noqa: F401 (make_run and friends live there, for the e2e tests too)
    OTHER_PORTS,
    ROOT,
    SERVICE_PORTS,
    MakeRun,
    free_ports,
    get,
    make_run,
    port_free,
    processes_with,
)
from tests.support import hang_up
from tools import run
from tools.gateway import GATEWAY_NAME, PREFIXES, create_gateway_app, serve


def assert_all_stopped(run_: MakeRun) -> None:
    assert processes_with(str(run_.run_dir)) == [], "processes of the run survived"
    state = run_.state
    pids = [*state["children"].values(), *state["embedded"].values()]
    assert not [p for p in pids if p and Path(f"/proc/{p}").exists()]
    used = [int(p) for p in run_.ports.values()]
    for kind, url in (("postgres", state["database_url"]), ("nats", state["nats_url"])):
        if state["embedded"][kind]:
            used.append(urllib.parse.urlsplit(url).port)
    assert [p for p in used if not port_free(p)] == []
    assert not (run_.run_dir / "run.json").exists()
    # Each simulator kept what it was sent for the next start (README "The sandbox remembers").
    assert sorted(p.name for p in (run_.run_dir / "sandbox").iterdir()) == ["paypal.json", "square.json", "stripe.json"]


def test_make_run_serves_routes_and_stops_cleanly(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    with make_run(service_env, tmp_path) as run_:
        ports, state, printed, proc = run_.ports, run_.state, run_.printed(), run_.proc
        for var in SERVICE_PORTS:
            status, _, body = get(f"http://127.0.0.1:{ports[var]}/health/ready")
            assert status == 200, (var, body)
        gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        status, _, body = get(gateway + "/health/ready")
        assert (status, json.loads(body)) == (
            200,
            dict.fromkeys(["router", "external", "collections", "analytics", "console"], 200),
        )

        # Each prefix reaches its service: the answer is the service's own problem (granian's).
        for prefix in [p for p in PREFIXES if p != "/console"]:  # the console answers pages, below
            status, headers, body = get(f"{gateway}{prefix}/no-such-thing?probe=1")
            assert status in (401, 404), (prefix, status, body)
            assert headers.get("server") == "granian", (prefix, headers)
            assert headers["content-type"].startswith("application/problem+json")
            assert "hybrid-payments-gateway" in headers.get("via", "")
        status, headers, body = get(gateway + "/console/login")
        assert status == 200 and headers["content-type"].startswith("text/html"), (status, body[:300])
        assert headers.get("server") == "granian" and "script-src 'self'" in headers["content-security-policy"]
        status, headers, body = get(gateway + "/api/v1/unknown")
        assert (status, json.loads(body)["code"]) == (404, "not_found")
        assert headers.get("server") == GATEWAY_NAME

        # Each service's docs page and document, through the gateway.
        for name in ("router", "external", "collections", "analytics"):
            status, headers, body = get(f"{gateway}/docs/{name}/openapi.json")
            assert status == 200 and json.loads(body)["openapi"].startswith("3."), (name, status)
            status, headers, body = get(f"{gateway}/docs/{name}/")
            assert status == 200 and headers["content-type"].startswith("text/html"), name

        # The printed secret verifies the printed tokens; their subjects are integer ids.
        secret = next(
            line.split("=", 1)[1].split()[0]
            for line in printed.splitlines()
            if line.startswith("JWT_SECRET=")
        )
        admin = jwt.decode(state["admin_token"], secret, algorithms=["HS256"])
        assert (admin["role"], admin["sub"]) == ("admin", "1000")
        barber = jwt.decode(state["barber_token"], secret, algorithms=["HS256"])
        assert (barber["role"], barber["sub"]) == ("barber", "1")
        assert state["admin_token"] in printed
        # ... and the services take it (they refuse a non-numeric subject).
        status, _, body = get(
            f"{gateway}/api/v1/hybrid-payments/config/1",
            {"Authorization": f"Bearer {state['admin_token']}"},
        )
        assert status in (200, 404), (status, body)
        for sim in ("stripe", "square", "paypal"):  # every processor has its sandbox
            assert state["urls"][f"{sim}-sim"] == f"http://127.0.0.1:{ports[sim.upper() + '_SIM_PORT']}"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, run_.printed()
        assert_all_stopped(run_)


def test_make_run_repeated_signals_during_shutdown_end_without_a_traceback(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """Impatient operators press Ctrl-C again; supervisors repeat SIGTERM. Neither may cut the
    cleanup short or end in a traceback."""
    with make_run(service_env, tmp_path) as run_:
        proc = run_.proc

        def send(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

        send(signal.SIGTERM)
        send(signal.SIGTERM)  # in quick succession: while the first one is being handled
        # Keep repeating until the first one has visibly started the shutdown, so some land
        # between the Shutdown being raised and the cleanup, where a repeat used to raise again.
        deadline = time.monotonic() + 15
        while "stopping" not in run_.printed() and proc.poll() is None:
            assert time.monotonic() < deadline, run_.printed()
            send(signal.SIGTERM)
            time.sleep(0.02)
        send(signal.SIGTERM)  # during the cleanup
        send(signal.SIGINT)  # and a Ctrl-C
        assert proc.wait(timeout=30) == 0, run_.printed()
        printed = run_.printed()
        assert "Traceback" not in printed, printed
        assert "stopped" in printed.splitlines()[-1], printed
        assert_all_stopped(run_)


@pytest.fixture
def fresh_signal_state(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("_deferring", 0), ("_pending", None), ("_delivered", False), ("_repeats", 0)):
        monkeypatch.setattr(run, name, value)


@pytest.mark.usefixtures("fresh_signal_state")
def test_only_the_first_signal_raises_shutdown() -> None:
    with pytest.raises(run.Shutdown, match="SIGTERM"):
        run._on_signal(signal.SIGTERM, None)
    # Shutting down now: a repeat (e.g. during the `except Shutdown` clause, before the cleanup
    # holds signals) is noted, not raised.
    run._on_signal(signal.SIGTERM, None)
    run._on_signal(signal.SIGINT, None)
    with run.deferred():  # nor does a deferred block deliver it a second time
        pass
    assert run._repeats == 2


@pytest.mark.usefixtures("fresh_signal_state")
def test_a_signal_inside_a_deferred_block_raises_once_when_it_ends() -> None:
    with pytest.raises(run.Shutdown, match="SIGINT"):
        with run.deferred():
            run._on_signal(signal.SIGINT, None)
            run._on_signal(signal.SIGTERM, None)  # a repeat while deferred: noted
    run._on_signal(signal.SIGTERM, None)
    with run.deferred():
        pass


@pytest.mark.usefixtures("fresh_signal_state")
def test_held_signals_never_raise() -> None:
    run.hold_signals()  # the cleanup: even a first signal only takes note
    run._on_signal(signal.SIGTERM, None)
    with run.deferred():
        pass
    assert run._pending == signal.SIGTERM


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


async def _boom(_: web.Request) -> web.Response:
    raise RuntimeError("secret internals")


@contextlib.asynccontextmanager
async def _gateway(**kwargs):
    """The gateway served as `make run` serves it (tools.gateway.serve), in front of the echo."""
    upstream = web.Application()
    upstream.router.add_get("/health/ready", _echo_ready)
    upstream.router.add_route("*", "/{tail:.*}", _echo)
    up_runner, up_url = await _serve(upstream)
    down_url = f"http://127.0.0.1:{free_ports(1)[0]}"
    routes = {"router": up_url, "external": up_url, "collections": up_url, "analytics": down_url}
    app = create_gateway_app(routes, **kwargs)
    app.router.add_get("/boom", _boom)  # a handler bug, to see what the client gets
    try:
        async with (
            serve(app, "127.0.0.1", 0, shutdown_timeout=0.1) as (host, port),
            aiohttp.ClientSession(auto_decompress=False) as client,
        ):
            yield client, f"http://{host}:{port}"
    finally:
        await up_runner.cleanup()


async def _raw(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client would send these) and read one answer."""
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        await writer.drain()
        # Not to EOF: after refusing a declared body the gateway may linger for it a while.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"{name} twice in {head!r}"
            headers[name.lower()] = value.strip()
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    finally:
        writer.close()
    return int(status_line.split()[1]), headers, body


def assert_gateway_problem(
    status: int, headers: Mapping[str, str], body: bytes, expected: int, code: str
) -> dict:
    """An RFC 9457 problem from the gateway itself, naming no server version."""
    assert headers["content-type"].startswith("application/problem+json"), (headers, body)
    problem = json.loads(body)
    assert set(problem) == {"type", "title", "status", "code", "detail"}, problem
    assert (status, problem["status"], problem["code"]) == (expected, expected, code), problem
    assert problem["type"].endswith("/" + code) and problem["title"] and problem["detail"]
    assert headers.get("server") == GATEWAY_NAME, headers
    return problem


def assert_no_server_version(headers: Mapping[str, str]) -> None:
    server = headers.get("Server", headers.get("server", ""))
    assert "aiohttp" not in server and "Python" not in server and not re.search(r"\d", server), server


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
        for method, path, status, code in [
            ("GET", "/api/v1/nowhere", 404, "not_found"),
            ("GET", "/api/v1/hybrid-payments-x", 404, "not_found"),  # whole segments only
            ("GET", "/api/v1/unified-payment-analytics/dashboard", 502, "upstream_unavailable"),
            ("GET", "/api/v1/platform-collections/slow", 504, "upstream_timeout"),
            ("PUT", "/health/live", 405, "method_not_allowed"),
            ("POST", "/docs", 405, "method_not_allowed"),
            ("GET", "/boom", 500, "internal_error"),
        ]:
            async with client.request(method, url + path) as resp:
                problem = assert_gateway_problem(
                    resp.status, resp.headers, await resp.read(), status, code
                )
                if status == 405:
                    assert resp.headers["Allow"] == "GET,HEAD"
                if status == 500:
                    assert "secret" not in problem["detail"]


async def test_gateway_sends_a_repeatable_request_on_when_a_replica_hangs_up() -> None:
    """Two replicas, the first hanging up on every request. Reads and writes carrying an
    Idempotency-Key reach the second on the first try; a write without one is answered 502 when the
    first replica had its turn (it may have been acted on: only its caller can decide)."""
    hanging = web.Application()
    hanging.router.add_route("*", "/{tail:.*}", hang_up)
    echo = web.Application()
    echo.router.add_route("*", "/{tail:.*}", _echo)
    (hang_runner, hang_url), (echo_runner, echo_url) = await _serve(hanging), await _serve(echo)
    app = create_gateway_app({"router": [hang_url, echo_url], "external": echo_url, "collections": echo_url,
                              "analytics": echo_url})
    path = "/api/v1/hybrid-payments/process"
    try:
        async with (
            serve(app, "127.0.0.1", 0, shutdown_timeout=0.1) as (host, port),
            aiohttp.ClientSession() as client,
        ):
            url = f"http://{host}:{port}{path}"
            for n in range(4):  # both replicas get the first turn twice
                async with client.post(url, data=b"{}", headers={"Idempotency-Key": f"k-{n}"}) as resp:
                    assert resp.status == 200 and (await resp.json())["method"] == "POST"
                async with client.get(url) as resp:
                    assert resp.status == 200
            plain = []
            for _ in range(4):
                async with client.post(url, data=b"{}") as resp:
                    plain.append(resp.status)
                    if resp.status != 200:
                        assert_gateway_problem(resp.status, resp.headers, await resp.read(), 502,
                                               "upstream_unavailable")
            assert sorted(plain) == [200, 200, 502, 502], plain
    finally:
        await hang_runner.cleanup()
        await echo_runner.cleanup()


async def test_gateway_refuses_over_limit_bodies_with_a_problem() -> None:
    async with _gateway(max_body=1024) as (client, url):
        path = "/api/v1/hybrid-payments/route"
        # Declared too big: refused before any of it is read (the body never even comes).
        status, headers, body = await _raw(
            url,
            f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 1025\r\n\r\n".encode(),
        )
        assert_gateway_problem(status, headers, body, 413, "payload_too_large")
        # Chunked: found out while reading.
        chunks = b"".join(b"200\r\n" + b"x" * 0x200 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
        status, headers, body = await _raw(
            url,
            f"POST {path} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + chunks,
        )
        assert_gateway_problem(status, headers, body, 413, "payload_too_large")
        # At the limit it passes.
        async with client.post(url + path, data=b"x" * 1024) as resp:
            assert resp.status == 200 and len(bytes.fromhex((await resp.json())["body"])) == 1024


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api/v1/hybrid-payments/x HTTP/1.1\r\nHost: gw\r\nContent-Length: abc\r\n\r\n",
        b"GET /api/v1/hybrid-payments/x HTTP/1.1\r\nHost gw\r\n\r\n",
        b"BAD\x01METHOD / HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: gw\r\n\r\n",
        b"POST /api/v1/hybrid-payments/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nabc",
        b"POST /api/v1/hybrid-payments/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # TLS on the plain port
    ],
    ids=[
        "bad-content-length",
        "header-without-colon",
        "bad-method",
        "bad-version",
        "content-length-and-chunked",
        "bad-chunk-size",
        "request-line-too-long",
        "header-too-long",
        "tls-hello",
    ],
)
async def test_gateway_answers_requests_it_cannot_parse_with_a_problem(request_bytes: bytes) -> None:
    async with _gateway() as (_, url):
        status, headers, body = await _raw(url, request_bytes)
    problem = assert_gateway_problem(status, headers, body, 400, "bad_request")
    assert problem["detail"].startswith("malformed request")
    assert "aaaa" not in problem["detail"]  # the offending bytes are not echoed back


async def test_gateway_names_no_server_version_but_relays_the_services_own() -> None:
    async with _gateway() as (client, url):
        for path in ("/health/live", "/health/ready", "/docs", "/schema"):
            async with client.get(url + path, allow_redirects=False) as resp:
                assert resp.headers["Server"] == GATEWAY_NAME, path
        async with client.get(url + "/api/v1/hybrid-payments/x") as resp:
            assert resp.headers.getall("Server") == ["echo"]  # the service's own, unchanged

    # A service that names no server: the gateway does not fill one in (least of all its version).
    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(bare, "127.0.0.1", 0)
    base = "http://127.0.0.1:%d" % upstream.sockets[0].getsockname()[1]
    try:
        async with (
            serve(create_gateway_app({"router": base}), "127.0.0.1", 0) as (host, port),
            aiohttp.ClientSession() as client,
            client.get(f"http://{host}:{port}/api/v1/hybrid-payments/x") as resp,
        ):
            assert (resp.status, await resp.text()) == (200, "ok")
            assert "Server" not in resp.headers, resp.headers
    finally:
        upstream.close()


async def test_gateway_readiness_names_each_service() -> None:
    async with _gateway() as (client, url), client.get(url + "/health/ready") as resp:
        assert resp.status == 503
        assert await resp.json() == {
            "router": 200,
            "external": 200,
            "collections": 200,
            "analytics": 0,
        }
