"""The one ASGI layer every request crosses on its way to a handler: request id, the caller, the
rate limit, the route's roles, and one latency observation.

In order, for each HTTP request:
1. request id: the caller's `x-request-id` (up to 128 characters) or a fresh one, bound to every log
   line of the request and echoed in the response;
2. the caller: `Authorization: Bearer <JWT>` verified by `shared.auth.TokenVerifier` (401 without a
   valid one), except on public paths (`public_paths`, regexes on the path) and routes declaring
   `opt={"exclude_from_auth": True}`;
3. the rate limit (`shared.ratelimit.SharedLimiter`, 429 with `Retry-After`): per token subject,
   else per client address, or the bucket `key_func(scope)` names (webhooks count per connection);
   admins and services are not limited;
4. the route's roles: a route declares who may call it with `opt=roles("barber", ...)` (403 for any
   other role); an authenticated route that declares none answers 403 to everyone (deny by default);
5. the route's fast path, when it names one (`opt=fast_path(answer)`) and the body is at most
   `FAST_BODY_LIMIT` bytes: `answer(scope, body)` returns the 200 response's JSON bytes, raises
   `ProblemError` for a refusal, or returns None for anything it does not take (a body that does
   not decode, say) before it wrote anything; then, as for every other request, Litestar serves
   the route as documented, the body read so far replayed to it. Other exceptions answer as
   Litestar's handlers would (`shared.errors.unexpected_problem`);
6. `http_request_duration_seconds` by method, route template and status.
Steps 2-5 skip `OPTIONS`, which Litestar answers itself (allowed methods, no data).

One layer rather than a middleware per concern, and roles checked here rather than by Litestar
guards: under load each layer and each guard call (Litestar copies the handler per guard call) was
a measurable share of `/route`'s CPU (tests/load/README.md). A refusal (401, 403, 429) is answered
here, in the contract's error format, with the request id like every other answer.

A fast path is for a route whose common case is the hot path under load (the router's `/route`
and `/process`): reading the body, the signature model, the kwargs, the dependencies and the
response object were about a fifth of the router's CPU per decision, for a route that takes one
body and answers one struct. The route stays a Litestar route (documented, validated, and serving
every case its fast path declines); its tests send each request both ways and compare the answers.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Principal, Role, TokenVerifier, unauthorized
from shared.errors import ProblemError, problem_asgi, unexpected_problem
from shared.observability import REQUEST_ID_HEADER, REQUEST_LATENCY, header_value
from shared.ratelimit import too_many

ROLES_OPT = "roles"
FAST_PATH_OPT = "fast_path"
# The largest body a fast path reads; a longer one goes to Litestar (which has its own limit).
FAST_BODY_LIMIT = 65_536
_REQUEST_ID = REQUEST_ID_HEADER.encode()
_AUTHORIZATION = b"authorization"
_JSON = (b"content-type", b"application/json")

# A route's fast path: (scope, body) -> the 200 answer's JSON bytes, or None to decline.
FastPath = Callable[[Scope, bytes], Awaitable[bytes | None]]


def roles(*allowed: Role) -> dict[str, frozenset[str]]:
    """A route's `opt` admitting only callers with one of these roles."""
    return {ROLES_OPT: frozenset(allowed)}


def fast_path(answer: FastPath) -> dict[str, FastPath]:
    """A route's `opt` naming the function that answers its plain case (see the module's docstring)."""
    return {FAST_PATH_OPT: answer}


class _Route:
    """What the edge needs to know of a route handler, read once."""

    __slots__ = ("public", "roles", "denial", "fast")

    def __init__(self, handler: Any) -> None:
        opt = getattr(handler, "opt", None) or {}
        self.public = bool(opt.get("exclude_from_auth"))
        allowed = opt.get(ROLES_OPT)
        self.roles: frozenset[str] | None = frozenset(allowed) if allowed is not None else None
        self.denial = f"requires role {' or '.join(sorted(self.roles))}" if self.roles else "this route admits no caller"
        self.fast: FastPath | None = opt.get(FAST_PATH_OPT)


def edge_middleware(
    service: str,
    verifier: TokenVerifier,
    limiter: Any,
    public_paths: list[str],
    *,
    key_func: Callable[[Scope], str | None] | None = None,
):
    """The Litestar middleware factory (see the module's docstring)."""
    public_path = re.compile("|".join(f"(?:{pattern})" for pattern in public_paths)) if public_paths else None
    routes: dict[Any, _Route] = {}  # by handler: they live as long as the app
    latency: dict[tuple[str, str, int], Any] = {}

    def observe(method: str, template: str, status: int, seconds: float) -> None:
        child = latency.get((method, template, status))
        if child is None:
            child = latency[(method, template, status)] = REQUEST_LATENCY.labels(service, method, template, str(status))
        child.observe(seconds)

    def route_of(handler: Any) -> _Route:
        route = routes.get(handler)
        if route is None:
            route = routes[handler] = _Route(handler)
        return route

    async def admit(scope: Scope) -> _Route:
        handler = scope.get("route_handler")
        route = route_of(handler)
        principal: Principal | None = None
        if not (route.public or (public_path is not None and public_path.search(scope["path"]))):
            principal = verifier.verify(_bearer(scope))
            scope["user"] = principal
        if principal is None or not principal.is_privileged:
            key = key_func(scope) if key_func else None
            if key is None:
                client = scope.get("client")
                key = f"sub:{principal.subject}" if principal else f"addr:{client[0] if client else 'unknown'}"
            wait = await limiter.take(key)
            if wait > 0:
                raise too_many(limiter.per_minute, wait)
        if principal is not None and (route.roles is None or principal.role not in route.roles):
            raise ProblemError(403, "forbidden", route.denial)
        return route

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            request_id = header_value(scope, _REQUEST_ID) or secrets.token_hex(16)
            tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
            started = time.perf_counter()
            status = 500
            echoed = (_REQUEST_ID, request_id.encode("latin-1"))

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", ()), echoed]
                await send(message)

            try:
                try:
                    if scope["method"] != "OPTIONS":
                        route = await admit(scope)
                        if route.fast is not None:
                            receive = await _fast(route.fast, scope, receive, send_with_id)
                            if receive is None:
                                return
                except ProblemError as refused:
                    headers, body = problem_asgi(refused)
                    await send_with_id({"type": "http.response.start", "status": refused.status, "headers": headers})
                    await send_with_id({"type": "http.response.body", "body": body})
                else:
                    await app(scope, receive, send_with_id)
            finally:
                observe(scope["method"], scope.get("path_template") or "unmatched", status,
                        time.perf_counter() - started)
                structlog.contextvars.reset_contextvars(**tokens)

        return middleware

    return factory


def _bearer(scope: Scope) -> str:
    header = header_value(scope, _AUTHORIZATION, limit=None)
    if not header:
        raise unauthorized("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("Authorization header must be 'Bearer <token>'")
    return token.strip()


async def _fast(answer: FastPath, scope: Scope, receive: Receive, send: Send) -> Receive | None:
    """Serve the request through the route's fast path: None when answered, else the receive to
    hand Litestar (what was read of the body replayed first)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    size, more = 0, True
    while more and size <= FAST_BODY_LIMIT:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # the client went away: Litestar's to handle
            break
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
    if not more and size <= FAST_BODY_LIMIT and messages[-1]["type"] == "http.request":
        try:
            body = await answer(scope, b"".join(chunks))
        except ProblemError:
            raise
        except Exception as exc:
            raise unexpected_problem(scope["path"], exc) from exc
        if body is not None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [_JSON, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return None

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay
