"""The committed OpenAPI snapshots (clients/openapi, what the TypeScript client is generated from)
are what the services' `create_app()` serve, and they declare how to call them: the bearer scheme
for every operation but the webhooks, `Idempotency-Key` on the writes that take it."""

from __future__ import annotations

import json

import pytest

from tools import openapi

IDEMPOTENT = {
    "router": {("post", "/api/v1/hybrid-payments/route"), ("post", "/api/v1/hybrid-payments/process"),
               ("post", "/api/v1/hybrid-payments/transactions/{transaction_id}/refund")},
    "external": {("post", "/api/v1/external-payments/connections")},
    "collections": {("post", "/api/v1/platform-collections/run"),
                    ("post", "/api/v1/platform-collections/{collection_id}/retry")},
    "analytics": set(),
}


@pytest.mark.parametrize("service", openapi.SERVICES)
def test_the_snapshot_is_what_the_service_serves(service: str) -> None:
    committed = json.loads((openapi.SNAPSHOTS / f"{service}.json").read_text())
    assert committed == openapi.document(service), f"run `make openapi` and commit clients/openapi/{service}.json"


@pytest.mark.parametrize("service", openapi.SERVICES)
def test_the_document_declares_the_bearer_scheme_and_idempotency_keys(service: str) -> None:
    doc = openapi.document(service)
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert doc["security"] == [{"bearerAuth": []}]
    with_key = set()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if path.startswith("/api/v1/webhooks/"):
                assert operation["security"] == [{}], (method, path)  # the signature is the auth
            else:
                assert "security" not in operation, (method, path)  # the document-wide bearer
            if any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in operation.get("parameters", [])):
                with_key.add((method, path))
    assert with_key == IDEMPOTENT[service]


@pytest.mark.parametrize("service", [*openapi.SERVICES, "console"])
def test_no_route_declares_its_parameters_in_a_deprecated_style(service: str) -> None:
    """Litestar 2 still reads inferred path parameters and `Parameter(query=...)`, with a warning;
    Litestar 3 will not. Every parameter names where it comes from (FromPath, QueryParameter(name=...))."""
    import warnings

    from litestar.utils.deprecation import LitestarDeprecationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        openapi.build(service)  # handlers read their parameters as the app is built
    deprecated = [str(w.message) for w in caught if issubclass(w.category, LitestarDeprecationWarning)
                  or (issubclass(w.category, DeprecationWarning) and "parameter" in str(w.message).lower())]
    assert not deprecated, deprecated
