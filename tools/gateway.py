"""Development gateway: an aiohttp reverse proxy that routes the contract's path prefixes to the
four services (`make run` starts it; production uses deploy/nginx/hybrid-payments.conf instead).

`/console` goes to the console (services/console). Besides the API prefixes it serves each service's API docs: `GET /docs` is an index,
`/docs/<service>/...` is that service's `/schema/...` (its docs page, and `openapi.json`).

Every error the gateway produces itself is an RFC 9457 problem (`application/problem+json`), also
for requests aiohttp refuses before any handler runs (a malformed request line or header, a bad
Content-Length). Its own answers carry a versionless `Server` header; relayed answers keep the
service's own (or none).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from shared.balancing import Replicas
from shared.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE

# Path prefix -> service; the same table as deploy/nginx/hybrid-payments.conf.
PREFIXES: dict[str, str] = {
    "/api/v1/hybrid-payments": "router",
    "/api/v1/external-payments": "external",
    "/api/v1/webhooks": "external",
    "/api/v1/platform-collections": "collections",
    "/api/v1/unified-payment-analytics": "analytics",
    "/console": "console",
}
DEFAULT_PORTS = {"router": 8001, "external": 8002, "collections": 8003, "analytics": 8004, "console": 8005}
# Upstreams that serve no API docs (the console is pages, not an API).
NO_DOCS = frozenset({"console"})
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
# What the gateway calls itself: in `Via`, and as `Server` on its own answers. No version: a
# version number tells a scanner which known bugs to try and tells a client nothing useful.
GATEWAY_NAME = "hybrid-payments-gateway"
DOCS_PATH = "/docs"
SCHEMA_PATH = "/schema"  # where every service serves its docs (shared/docs.py)
READ_ONLY = ("GET", "HEAD")
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'

SESSION = web.AppKey("session", aiohttp.ClientSession)
# On a relayed response: the service's own Server header ("" when it sent none).
UPSTREAM_SERVER = web.ResponseKey("upstream_server", str)

_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    500: "Internal server error",
    502: "Bad gateway",
    504: "Gateway timeout",
}
_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    500: "internal_error",
    502: "upstream_unavailable",
    504: "upstream_timeout",
}

def problem(
    status: int,
    code: str | None = None,
    title: str | None = None,
    detail: str = "",
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An RFC 9457 problem answered by the gateway itself."""
    code = code or _CODES.get(status, "bad_request" if status < 500 else "internal_error")
    body = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
    }
    response = web.json_response(
        body, status=status, content_type=PROBLEM_MEDIA_TYPE, headers=headers
    )
    # Set here, not only in the prepare hook: answers to unparsable requests never reach the app's
    # signals, and aiohttp would otherwise add `Server: Python/3.x aiohttp/3.x`.
    response.headers["Server"] = GATEWAY_NAME
    return response


def repeatable(request: web.Request) -> bool:
    """Whether sending the request twice is as good as once: a read, or a write with an
    Idempotency-Key (the services answer its repeat with the first answer, or 409 while the first
    is still running)."""
    return request.method in READ_ONLY or bool(request.headers.get("Idempotency-Key"))


def _forwardable(headers: Mapping[str, str]) -> CIMultiDict[str]:
    # Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1).
    named = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    return CIMultiDict(
        (k, v)
        for k, v in headers.items()
        if k.lower() not in HOP_BY_HOP and k.lower() not in named and k.lower() != "content-length"
    )


def parse_error_detail(message: str | None) -> str:
    """aiohttp's parser messages echo the offending bytes and draw a caret under them; keep only
    the words ("Invalid character in Content-Length", "Bad status line: Invalid HTTP version")."""
    text = re.split(r"\s*(?:b'|b\"|bytearray\()", message or "", maxsplit=1)[0]
    words = [line.strip().rstrip(":").strip() for line in text.splitlines()]
    summary = ": ".join(w for w in words if w)[:200]
    return f"malformed request: {summary}" if summary else "malformed request"


class ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with its error answers as problems.

    aiohttp answers a request it cannot parse (and a handler's unexpected exception) from
    `RequestHandler.handle_error`, with a text/plain body, before and outside the application:
    no middleware or signal sees those answers. Overriding that method is the only way to change
    them; `serve()` installs this class.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp does: part of a response is out, so no error answer fits; it closes.
            raise ConnectionError("response already started; cannot answer with an error")
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            detail = "the gateway failed to handle the request"
            if status == 504:
                detail = "the request took too long"
        else:
            # The client's mistake, not ours: one line, no traceback.
            detail = parse_error_detail(message)
            self.logger.info("refused a request from %s: %s", request.remote, detail)
        response = problem(status, detail=detail)
        response.force_close()  # after a parse error the rest of the stream is meaningless
        return response


@contextlib.asynccontextmanager
async def serve(
    app: web.Application,
    host: str | None,
    port: int,
    *,
    access_log: logging.Logger | None = None,
    shutdown_timeout: float = 2.0,
) -> AsyncIterator[tuple[str, int]]:
    """Serve `app` on host:port with `ProblemRequestHandler` connections; yields the bound
    address. aiohttp's sites always build the stock handler, so the listener is made here (with
    the runner's public `server` as the connections' manager: shutdown still closes them)."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    loop = asyncio.get_running_loop()
    handler_args: dict[str, Any] = {"access_log": access_log}
    if access_log is not None:
        handler_args["access_log_format"] = ACCESS_LOG_FORMAT

    def connection() -> ProblemRequestHandler:
        return ProblemRequestHandler(runner.server, loop=loop, **handler_args)

    try:
        listener = await loop.create_server(connection, host, port, reuse_address=True)
    except BaseException:
        await runner.cleanup()
        raise
    try:
        yield listener.sockets[0].getsockname()[:2]
    finally:
        listener.close()  # no new connections; the runner closes the open ones
        await runner.cleanup()


def _read_only(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    # Registered for every method (else the catch-all proxy would take the others as a 404).
    async def only_get(request: web.Request) -> web.StreamResponse:
        if request.method not in READ_ONLY:
            raise web.HTTPMethodNotAllowed(request.method, READ_ONLY)
        return await handler(request)

    return only_get


def _problems(max_body: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def problems(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """aiohttp's HTTP errors (405, 413 from reading an over-limit body, ...) as problems."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            detail = {
                405: f"{request.method} is not allowed on {request.path}",
                413: f"the request body is over the gateway's limit of {max_body} bytes",
            }.get(exc.status, exc.reason)
            response = problem(exc.status, detail=detail, headers=headers)
            if exc.status == 413:
                response.force_close()  # do not read on through the rest of an over-limit body
            return response

    return problems


async def _server_header(_: web.Request, response: web.StreamResponse) -> None:
    # Runs after aiohttp filled in its default `Server: Python/3.x aiohttp/3.x`.
    upstream = response.get(UPSTREAM_SERVER)
    if upstream is None:  # the gateway's own answer
        response.headers["Server"] = GATEWAY_NAME
    elif not upstream:  # relayed, and the service named no server: neither do we
        response.headers.popall("Server", None)


def _docs_index(services: list[str]) -> str:
    rows = "\n".join(
        f'    <li><b>{html.escape(name)}</b>: '
        f'<a href="{DOCS_PATH}/{quote(name)}/">API reference</a> · '
        f'<a href="{DOCS_PATH}/{quote(name)}/swagger">Swagger UI</a> · '
        f'<a href="{DOCS_PATH}/{quote(name)}/openapi.json">OpenAPI JSON</a></li>'
        for name in services
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        "<title>Hybrid Payments API docs</title></head>\n<body>\n"
        "  <h1>Hybrid Payments API docs</h1>\n  <ul>\n"
        f"{rows}\n  </ul>\n  <p>Each service documents its own API; the gateway routes the "
        "paths to it.</p>\n</body></html>\n"
    )


def create_gateway_app(
    routes: Mapping[str, str | Sequence[str]],
    *,
    prefixes: Mapping[str, str] = PREFIXES,
    timeout: float = 60.0,
    connect_timeout: float = 5.0,
    max_body: int = MAX_BODY,
) -> web.Application:
    """`routes` maps a service name to its base URL (`{"router": "http://127.0.0.1:8001", ...}`), or
    to the base URLs of its replicas, which take requests in turn (round robin; a replica that
    refuses the connection is skipped, which is safe for any method: nothing was sent; one that
    hangs up without an answer is skipped for reads and for writes with an Idempotency-Key);
    `prefixes` maps a path prefix to a service name. Longest prefix wins."""
    replicas = {name: Replicas(bases) for name, bases in routes.items()}
    table = sorted(
        ((p.rstrip("/"), replicas[s]) for p, s in prefixes.items() if s in replicas),
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

    def upstream_for(path: str) -> Replicas | None:
        for prefix, service in table:
            if path == prefix or path.startswith(prefix + "/"):
                return service
        return None

    async def forward(request: web.Request, service: Replicas, target: str) -> web.StreamResponse:
        """Relay the request to the next replica of `service` + `target` (an encoded path and query)."""
        if request.content_length is not None and request.content_length > max_body:
            # Refused before reading; a chunked body over the limit fails in read() instead.
            raise web.HTTPRequestEntityTooLarge(max_body, request.content_length)
        headers = _forwardable(request.headers)
        peer = request.remote or ""
        prior = headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        headers.setdefault("X-Forwarded-Host", request.host)
        headers.setdefault("X-Request-ID", uuid.uuid4().hex)
        body = await request.read()  # raw bytes: webhook signatures are computed over them
        bases = service.order()
        for attempt, base in enumerate(bases, 1):
            url = URL(base + target, encoded=True)
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
                    response[UPSTREAM_SERVER] = upstream.headers.get("Server", "")
            except aiohttp.ClientConnectorError as exc:
                # No connection, so nothing was sent: the next replica may take it, whatever the method.
                if attempt < len(bases):
                    continue
                return problem(502, detail=f"{service} unreachable: {type(exc).__name__}")
            except TimeoutError:  # before ClientError: ServerTimeoutError is both
                return problem(504, detail=f"{base} did not answer in time")
            except aiohttp.ClientError as exc:
                # Closed without an answer: most often a kept-alive connection that a replica
                # shutting down closed as the request went out on it. A request that may be sent
                # twice (a read, or a write carrying its Idempotency-Key) goes to the next replica;
                # any other one may have been acted on, and only its caller can decide.
                if isinstance(exc, aiohttp.ServerDisconnectedError) and attempt < len(bases) and repeatable(request):
                    continue
                return problem(502, detail=f"{base} unreachable: {type(exc).__name__}")
            response.headers.add("Via", f"1.1 {GATEWAY_NAME}")
            return response
        raise AssertionError("unreachable: a service has at least one replica")

    async def proxy(request: web.Request) -> web.StreamResponse:
        service = upstream_for(request.path)
        if service is None:
            return problem(404, detail=f"no service serves {request.path}")
        # raw_path keeps the client's exact encoding of path and query.
        return await forward(request, service, request.raw_path)

    documented = {name: service for name, service in replicas.items() if name not in NO_DOCS}

    async def docs_index(request: web.Request) -> web.Response:
        services = list(documented)
        accept = request.headers.get("Accept", "")
        if "json" in accept and "html" not in accept:  # a script asking where the documents are
            return web.json_response(
                {
                    name: {
                        "docs": f"{DOCS_PATH}/{name}/",
                        "openapi": f"{DOCS_PATH}/{name}/openapi.json",
                    }
                    for name in services
                }
            )
        return web.Response(text=_docs_index(services), content_type="text/html")

    def unknown_service(name: str) -> web.Response:
        known = ", ".join(documented)
        return problem(404, detail=f"no service named {name!r} (known: {known}); see {DOCS_PATH}")

    async def docs_slash(request: web.Request) -> web.StreamResponse:
        # The docs page loads its spec by a relative URL, which resolves right only under the
        # trailing slash: /docs/router/ + openapi.json.
        name = request.match_info["service"]
        if name not in documented:
            return unknown_service(name)
        location = f"{DOCS_PATH}/{quote(name)}/"
        if request.rel_url.raw_query_string:
            location += "?" + request.rel_url.raw_query_string
        return web.Response(status=308, headers={"Location": location})

    async def docs_page(request: web.Request) -> web.StreamResponse:
        name, tail = request.match_info["service"], request.match_info["tail"]
        if name not in documented:
            return unknown_service(name)
        if ".." in tail.split("/"):  # stay inside the service's /schema
            return problem(404, detail=f"no such document: {request.path}")
        # /docs/<service>/<tail> is the service's /schema/<tail>: the same depth below a prefix,
        # so relative links inside the pages stay right through the gateway.
        target = f"{SCHEMA_PATH}/{quote(tail, safe='/')}"
        if request.rel_url.raw_query_string:
            target += "?" + request.rel_url.raw_query_string
        return await forward(request, replicas[name], target)

    async def schema(_: web.Request) -> web.StreamResponse:
        # Four services, four documents: the gateway has no /schema of its own; the index
        # links each one (and answers JSON to `Accept: application/json`).
        return web.Response(status=307, headers={"Location": DOCS_PATH})

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

        # Ready when every service has a ready replica; each replica's answer is listed.
        probed = {name: await asyncio.gather(*(probe(b) for b in service.bases))
                  for name, service in replicas.items()}
        checks = {name: statuses[0] if len(statuses) == 1 else statuses for name, statuses in probed.items()}
        ready = all(200 in statuses for statuses in probed.values())
        return web.json_response(checks, status=200 if ready else 503)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=max_body, middlewares=[_problems(max_body)])
    app.cleanup_ctx.append(client_session)
    app.on_response_prepare.append(_server_header)
    for path, handler in [
        ("/health/live", live),
        ("/health/ready", ready),
        (DOCS_PATH, docs_index),
        (DOCS_PATH + "/", docs_index),
        (DOCS_PATH + "/{service}", docs_slash),
        (DOCS_PATH + "/{service}/{tail:.*}", docs_page),
        (SCHEMA_PATH, schema),
        (SCHEMA_PATH + "/{tail:.*}", schema),
    ]:
        app.router.add_route("*", path, _read_only(handler))
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def default_routes(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    return {
        name: f"http://127.0.0.1:{env.get(f'{name.upper()}_PORT', port)}"
        for name, port in DEFAULT_PORTS.items()
    }


async def _run(
    app: web.Application, host: str, port: int, access_log: logging.Logger | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(app, host, port, access_log=access_log):
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.gateway", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8000")))
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a service's base URL (default http://127.0.0.1:<NAME>_PORT); repeat the option, or "
        "separate URLs by commas, for replicas taken in turn",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="upstream timeout in seconds")
    parser.add_argument("--access-log", action="store_true", help="one line per request on stdout")
    args = parser.parse_args(argv)
    routes: dict[str, list[str]] = {name: [url] for name, url in default_routes().items()}
    given: dict[str, list[str]] = {}
    for item in args.upstream:
        name, _, url = item.partition("=")
        if name not in routes or not url:
            parser.error(f"--upstream: expected one of {', '.join(routes)}=URL[,URL...], got {item!r}")
        given.setdefault(name, []).extend(u for u in url.split(",") if u)
    routes.update(given)
    print(
        f"gateway listening on http://{args.host}:{args.port} -> "
        + ", ".join(f"{n} {' '.join(u)}" for n, u in routes.items())
        + f"; API docs on http://{args.host}:{args.port}{DOCS_PATH}",
        flush=True,
    )
    if args.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    access_log = logging.getLogger("aiohttp.access") if args.access_log else None
    app = create_gateway_app(routes, timeout=args.timeout)
    asyncio.run(_run(app, args.host, args.port, access_log))


if __name__ == "__main__":
    main()
