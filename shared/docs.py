"""The OpenAPI document and browsable docs page every service serves under `/schema`."""

from __future__ import annotations

from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin


def openapi_config(*, title: str, description: str = "", version: str = "1.0.0") -> OpenAPIConfig:
    return OpenAPIConfig(
        title=title, version=version, description=description, path="/schema",
        render_plugins=[JsonRenderPlugin()],
    )
