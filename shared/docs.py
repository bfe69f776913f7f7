"""The OpenAPI document and browsable docs pages every service serves under `/schema`.

- `/schema/openapi.json`: the OpenAPI document (the contract's path; keep it).
- `/schema/` (and `/schema/scalar`): the API reference page (Scalar), which loads the document.
- `/schema/swagger`: Swagger UI, with the document inlined (and "try it out").

The dev gateway serves the same pages at `/docs/<service>/...` (its `/docs/router/` is the router's
`/schema/`), so a page must not find its document by an absolute path: `/schema/openapi.json` in a
page under `/docs/router/` would ask the gateway, not the router. Pages therefore name it by a URL
relative to themselves, which resolves right both directly and through the gateway.
"""

from __future__ import annotations

import posixpath

from litestar import Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, ScalarRenderPlugin, SwaggerRenderPlugin

DOCS_PATH = "/schema"
OPENAPI_JSON = "openapi.json"


def relative_url(page_path: str, target_path: str) -> str:
    """`target_path` as a URL relative to the page at `page_path` (both absolute paths), as a
    browser resolves it: against the page's directory, the part up to the last `/`."""
    directory = page_path[: page_path.rfind("/") + 1] or "/"
    return posixpath.relpath(target_path, directory) + ("/" if target_path.endswith("/") else "")


class RelativeScalarRenderPlugin(ScalarRenderPlugin):
    """Scalar, loading the document by a relative URL (see the module docstring)."""

    @staticmethod
    def get_openapi_json_route(request: Request) -> str:
        absolute = ScalarRenderPlugin.get_openapi_json_route(request)  # /schema/openapi.json
        return relative_url(page_path(request), absolute)


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


def openapi_config(*, title: str, description: str = "", version: str = "1.0.0") -> OpenAPIConfig:
    return OpenAPIConfig(
        title=title,
        version=version,
        description=description,
        path=DOCS_PATH,
        render_plugins=[
            # The first one (path "/") is the page at /schema itself.
            RelativeScalarRenderPlugin(path=["/", "/scalar"]),
            SwaggerRenderPlugin(path="/swagger"),  # inlines the document: no URL to get wrong
            JsonRenderPlugin(path=f"/{OPENAPI_JSON}"),
        ],
    )
