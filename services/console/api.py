"""The console's one adapter: the four services' HTTP APIs, called with the signed-in user's token.

A problem document (RFC 9457) from a service becomes an `ApiError` carrying its status, `code`,
`detail` and `field`, so a page shows the service's own message; a service that does not answer
becomes a 502/504 `ApiError` naming it. Nothing here decides who may do what: the services do.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import msgspec

from services.console.settings import ConsoleSettings

# Each service's base path (the contract's prefixes).
PREFIX = {
    "router": "/api/v1/hybrid-payments",
    "external": "/api/v1/external-payments",
    "collections": "/api/v1/platform-collections",
    "analytics": "/api/v1/unified-payment-analytics",
}
SERVICES = tuple(PREFIX)


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field = status, code, detail, field


class ServiceApi:
    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.console_api_timeout, connect=5),
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self, token: str, method: str, service: str, path: str, *,
        params: Mapping[str, Any] | None = None, body: Any = None, idempotency_key: str | None = None,
        raw_path: bool = False,
    ) -> Any:
        """`path` is below the service's base path (`/configs`), or from the root with `raw_path`."""
        if self._session is None:
            raise RuntimeError("the API client is not started")
        url = self.settings.service_url(service) + (path if raw_path else PREFIX[service] + path)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        query = {k: _query_value(v) for k, v in (params or {}).items() if v not in (None, "")}
        data = None if body is None else msgspec.json.encode(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(method, url, params=query, data=data, headers=headers) as resp:
                payload = await resp.read()
                status = resp.status
        except TimeoutError:
            raise ApiError(504, "upstream_timeout", f"the {service} service did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise ApiError(502, "upstream_unavailable",
                           f"the {service} service is unreachable ({type(exc).__name__})") from None
        decoded = _decode(payload)
        if status >= 400:
            problem = decoded if isinstance(decoded, dict) else {}
            raise ApiError(status, str(problem.get("code", "error")),
                           str(problem.get("detail") or problem.get("title") or f"{service} answered {status}"),
                           problem.get("field"))
        return decoded

    async def pages(self, token: str, service: str, path: str, params: Mapping[str, Any],
                    *, page_size: int = 500) -> AsyncIterator[dict]:
        """Every item of a paged list, page after page (for exports)."""
        cursor = None
        while True:
            page = await self.call(token, "GET", service, path,
                                   params={**params, "limit": page_size, "cursor": cursor})
            for item in page["items"]:
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return


def new_idempotency_key() -> str:
    """One per form submission, made when the form is rendered: a resubmitted form (a double
    click, a browser retry) carries the same key, so the service does the action once."""
    return f"console-{uuid.uuid4()}"


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _decode(payload: bytes) -> Any:
    if not payload:
        return None
    try:
        return msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return None
