"""`make openapi`: export the OpenAPI document of each service from its own `create_app()` into
`clients/openapi/<service>.json`, the committed snapshots the TypeScript client's types are
generated from (clients/typescript). `--check` exits 1 when a snapshot differs from what the code
serves (tests/unit/test_openapi_snapshots.py runs it).

Building an app connects to nothing (the lifespan does), so this needs no database or NATS; the
settings it builds with are placeholders that never reach a socket.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from litestar.serialization import encode_json, get_serializer

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOTS = ROOT / "clients" / "openapi"
SERVICES = ("router", "external", "collections", "analytics")
# Placeholders: create_app validates its settings but opens nothing while building the app.
_ENV = {
    "DATABASE_URL": "postgresql+asyncpg://openapi@127.0.0.1:1/openapi",
    "NATS_URL": "nats://127.0.0.1:1",
    "JWT_SECRET": "openapi-export-placeholder-secret-000000",
    "CONNECTION_ENCRYPTION_KEYS": "MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA=",
}


def build(service: str) -> Any:
    """The service's Litestar app as `create_app()` builds it, with placeholder settings."""
    import os

    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update({k: v for k, v in _ENV.items() if not os.environ.get(k)})
    try:
        app = importlib.import_module(f"services.{service}.app").create_app()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
    return app


def document(service: str) -> dict[str, Any]:
    app = build(service)
    # Encoded as the served /schema/openapi.json is (the app's own type encoders), then re-read.
    return json.loads(encode_json(app.openapi_schema.to_schema(), serializer=get_serializer(app.type_encoders)))


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare the snapshots, write nothing")
    args = parser.parse_args(argv)
    stale = []
    SNAPSHOTS.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        path = SNAPSHOTS / f"{service}.json"
        text = render(document(service))
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text)
            print(f"{path.relative_to(ROOT)}")
    for path in stale:
        print(f"{path} differs from what the service serves: run `make openapi`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
