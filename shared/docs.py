"""The OpenAPI document and browsable docs page every service serves under `/schema`, with nothing
loaded from another origin (a locked-down server or CI has no internet).

- `/schema/openapi.json`: the OpenAPI document (the contract's path; keep it). It declares the
  bearer scheme for every operation but the public ones, and `Idempotency-Key` where it applies.
- `/schema/` (and `/schema/swagger`): Swagger UI, served from `shared/static/swagger-ui/`
  (vendored by `make vendor`, see vendor.json) at `/schema/assets/`.

The dev gateway serves the same pages at `/docs/<service>/...` (its `/docs/router/` is the router's
`/schema/`), so a page must not name its document or its assets by an absolute path:
`/schema/openapi.json` in a page under `/docs/router/` would ask the gateway, not the router. Pages
therefore name them by URLs relative to themselves, which resolve right both directly and through
the gateway.
"""

from __future__ import annotations

import html
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin
from litestar.openapi.spec import Components, Operation, Parameter, Schema, SecurityScheme
from litestar.router import Router
from litestar.static_files import create_static_files_router

DOCS_PATH = "/schema"
OPENAPI_JSON = "openapi.json"
ASSETS = "assets"
SWAGGER_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"
BEARER = "bearerAuth"
# Operations open to anyone: the services pass this as a handler's `security` (webhooks, probes).
PUBLIC: list[dict[str, list[str]]] = [{}]


def relative_url(page_path: str, target_path: str) -> str:
    """`target_path` as a URL relative to the page at `page_path` (both absolute paths), as a
    browser resolves it: against the page's directory, the part up to the last `/`."""
    directory = page_path[: page_path.rfind("/") + 1] or "/"
    return posixpath.relpath(target_path, directory) + ("/" if target_path.endswith("/") else "")


def page_path(request: Request) -> str:
    """The path the client asked for. Litestar's routing drops a trailing slash from the scope's
    `path`, but `/schema/` and `/schema` are different bases for a relative URL; the server's
    `raw_path` (percent-encoded, as sent) keeps it."""
    raw = request.scope.get("raw_path")
    if raw:
        path = raw.decode("latin-1").split("?", 1)[0]  # some servers leave the query on it
        if path.startswith("/"):
            return path
    return request.url.path


class LocalSwaggerRenderPlugin(OpenAPIRenderPlugin):
    """Swagger UI from the vendored files, the document and assets named by relative URLs."""

    def __init__(self, *, path: str | list[str]) -> None:
        # A data: favicon, so the browser asks nobody for one.
        super().__init__(path=path, favicon='<link rel="icon" href="data:,">')

    def receive_router(self, router: Router) -> None:
        router.register(create_static_files_router(
            path=f"/{ASSETS}", directories=[SWAGGER_DIR], include_in_schema=False,
            cache_control=CacheControlHeader(max_age=86400, public=True),
        ))

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        here = page_path(request)
        base = f"{DOCS_PATH}/{ASSETS}/"
        css, js = (html.escape(relative_url(here, base + name)) for name in ("swagger-ui.css", "swagger-ui-bundle.js"))
        options = json.dumps({
            "url": relative_url(here, f"{DOCS_PATH}/{OPENAPI_JSON}"),
            "dom_id": "#swagger-ui",
            "deepLinking": True,
            "persistAuthorization": True,
            "validatorUrl": None,  # the default asks validator.swagger.io about the document
        })
        title = html.escape(str(openapi_schema.get("info", {}).get("title", "API")))
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  {self.favicon}
  {self.style}
  <link rel="stylesheet" href="{css}">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{js}"></script>
  <script>window.ui = SwaggerUIBundle({options});</script>
</body>
</html>
""".encode()


@dataclass
class IdempotentOperation(Operation):
    """An operation that takes an `Idempotency-Key` (pass as a handler's `operation_class`)."""

    def __post_init__(self) -> None:
        self.parameters = [*(self.parameters or []), Parameter(
            name="Idempotency-Key", param_in="header", required=False,
            schema=Schema(type="string", min_length=1, max_length=255),  # type: ignore[arg-type]
            description="Makes the call safe to retry: a repeat with the same key and body gets the first "
                        "answer and does nothing again; the same key with another body is refused (422).",
        )]


def openapi_config(*, title: str, description: str = "", version: str = "1.0.0") -> OpenAPIConfig:
    return OpenAPIConfig(
        title=title,
        version=version,
        description=description,
        path=DOCS_PATH,
        components=Components(security_schemes={
            BEARER: SecurityScheme(type="http", scheme="bearer", bearer_format="JWT",
                                   description="A JWT with `sub` (user id), `role` (barber, admin, service), `exp`."),
        }),
        security=[{BEARER: []}],
        render_plugins=[
            # The first one (path "/") is the page at /schema itself.
            LocalSwaggerRenderPlugin(path=["/", "/swagger"]),
            JsonRenderPlugin(path=f"/{OPENAPI_JSON}"),
        ],
    )
