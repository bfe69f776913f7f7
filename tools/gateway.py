"""Development gateway: an aiohttp reverse proxy that routes the contract's path prefixes to the
four services (`make run` starts it; production uses deploy/nginx/hybrid-payments.conf instead).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from shared.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE

# Path prefix -> service; the same table as deploy/nginx/hybrid-payments.conf.
PREFIXES: dict[str, str] = {
    "/api/v1/hybrid-payments": "router",
    "/api/v1/external-payments": "external",
    "/api/v1/webhooks": "external",
    "/api/v1/platform-collections": "collections",
    "/api/v1/unified-payment-analytics": "analytics",
}
DEFAULT_PORTS = {"router": 8001, "external": 8002, "collections": 8003, "analytics": 8004}
# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
MAX_BODY = 10 * 1024 * 1024  # keep equal to client_max_body_size in the nginx config

SESSION = web.AppKey("session", aiohttp.ClientSession)


def problem(status: int, code: str, title: str, detail: str) -> web.Response:
    body = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
    }
    return web.json_response(body, status=status, content_type=PROBLEM_MEDIA_TYPE)


def _forwardable(headers: Mapping[str, str]) -> CIMultiDict[str]:
    # Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1).
    named = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    return CIMultiDict(
        (k, v)
        for k, v in headers.items()
        if k.lower() not in HOP_BY_HOP and k.lower() not in named and k.lower() != "content-length"
    )


def create_gateway_app(
    routes: dict[str, str],
    *,
    prefixes: Mapping[str, str] = PREFIXES,
    timeout: float = 60.0,
    connect_timeout: float = 5.0,
) -> web.Application:
    """`routes` maps a service name to its base URL (`{"router": "http://127.0.0.1:8001", ...}`);
    `prefixes` maps a path prefix to a service name. Longest prefix wins."""
    table = sorted(
        ((p.rstrip("/"), routes[s]) for p, s in prefixes.items() if s in routes),
        key=lambda item: -len(item[0]),
    )
    client_timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=128, keepalive_timeout=30)
        # auto_decompress=False: bodies pass through byte for byte, with their Content-Encoding.
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=client_timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as session:
            app[SESSION] = session
            yield

    def upstream_for(path: str) -> str | None:
        for prefix, base in table:
            if path == prefix or path.startswith(prefix + "/"):
                return base
        return None

    async def proxy(request: web.Request) -> web.StreamResponse:
        base = upstream_for(request.path)
        if base is None:
            return problem(404, "not_found", "Not found", f"no service serves {request.path}")
        headers = _forwardable(request.headers)
        peer = request.remote or ""
        prior = headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        headers.setdefault("X-Forwarded-Host", request.host)
        headers.setdefault("X-Request-ID", uuid.uuid4().hex)
        body = await request.read()  # raw bytes: webhook signatures are computed over them
        # raw_path keeps the client's exact encoding of path and query.
        url = URL(base.rstrip("/") + request.raw_path, encoded=True)
        try:
            async with request.app[SESSION].request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                payload = await upstream.read()
                response = web.Response(
                    status=upstream.status,
                    reason=upstream.reason,
                    body=payload,
                    headers=_forwardable(upstream.headers),
                )
        except TimeoutError:  # before ClientError: ServerTimeoutError is both
            return problem(
                504, "upstream_timeout", "Gateway timeout", f"{base} did not answer in time"
            )
        except aiohttp.ClientError as exc:
            return problem(
                502,
                "upstream_unavailable",
                "Bad gateway",
                f"{base} unreachable: {type(exc).__name__}",
            )
        response.headers.add("Via", "1.1 hybrid-payments-gateway")
        return response

    async def ready(request: web.Request) -> web.Response:
        session = request.app[SESSION]

        async def probe(base: str) -> int:
            try:
                async with session.get(
                    base.rstrip("/") + "/health/ready", timeout=aiohttp.ClientTimeout(total=3)
                ) as resp:
                    return resp.status
            except (aiohttp.ClientError, TimeoutError):
                return 0  # unreachable

        statuses = await asyncio.gather(*(probe(base) for base in routes.values()))
        checks = dict(zip(routes, statuses))
        return web.json_response(checks, status=200 if all(s == 200 for s in statuses) else 503)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=MAX_BODY)
    app.cleanup_ctx.append(client_session)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def default_routes(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    return {
        name: f"http://127.0.0.1:{env.get(f'{name.upper()}_PORT', port)}"
        for name, port in DEFAULT_PORTS.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.gateway", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8000")))
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="override a service's base URL (default http://127.0.0.1:<NAME>_PORT)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="upstream timeout in seconds")
    parser.add_argument("--access-log", action="store_true", help="one line per request on stdout")
    args = parser.parse_args(argv)
    routes = default_routes()
    for item in args.upstream:
        name, _, url = item.partition("=")
        if name not in routes or not url:
            parser.error(f"--upstream: expected one of {', '.join(routes)}=URL, got {item!r}")
        routes[name] = url
    print(
        f"gateway listening on http://{args.host}:{args.port} -> "
        + ", ".join(f"{n} {u}" for n, u in routes.items()),
        flush=True,
    )
    if args.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    web.run_app(
        create_gateway_app(routes, timeout=args.timeout),
        host=args.host,
        port=args.port,
        print=None,
        access_log=logging.getLogger("aiohttp.access") if args.access_log else None,
        access_log_format='%a "%r" %s %b %Tfs',
        shutdown_timeout=2.0,
    )


if __name__ == "__main__":
    main()
