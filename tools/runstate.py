"""Where operator tools and benchmarks find the suite they talk to: the database URL and the JWT
secret, from a flag, the environment, `.env`, or what `make run` recorded in `.run/run.json`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN_STATE = ROOT / ".run" / "run.json"  # written by `make run`
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def run_state() -> dict[str, Any]:
    """What `make run` recorded (empty when it is not running here)."""
    return _run_state()


def _run_state() -> dict[str, Any]:
    try:
        return json.loads(RUN_STATE.read_text())
    except (OSError, ValueError):
        return {}


SUITE_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/hybrid_payments"  # the services' own default


def pick_database_url(given: str | None, default: str = DEFAULT_DATABASE_URL) -> tuple[str, str]:
    """--database-url, else $DATABASE_URL, else the database `make run` recorded, else `default`."""
    for url, source in ((given, "--database-url"), (os.environ.get("DATABASE_URL"), "DATABASE_URL"),
                        (_run_state().get("database_url"), str(RUN_STATE.relative_to(ROOT)))):
        if url:
            return url, source
    return default, "default"


def pick_jwt_secret(given: str | None) -> str:
    if given or os.environ.get("JWT_SECRET"):
        return given or os.environ["JWT_SECRET"]
    from shared.config import read_dotenv

    from_dotenv = read_dotenv(ROOT / ".env").get("JWT_SECRET", "") if (ROOT / ".env").exists() else ""
    return from_dotenv or _run_state().get("jwt_secret", "")


def pick_event_names(stream: str | None = None, prefix: str | None = None) -> tuple[str, str]:
    """The JetStream stream and subject prefix the services use: the flags, else $EVENT_STREAM /
    $EVENT_SUBJECT_PREFIX, else `.env`, else what `make run` recorded, else PAYMENTS and none."""
    from shared.config import read_dotenv

    dotenv, state = read_dotenv(ROOT / ".env"), _run_state()

    def pick(given: str | None, var: str, key: str, default: str) -> str:
        for value in (given, os.environ.get(var), dotenv.get(var), state.get(key)):
            if value is not None:
                return value
        return default

    return (pick(stream, "EVENT_STREAM", "event_stream", "PAYMENTS"),
            pick(prefix, "EVENT_SUBJECT_PREFIX", "event_subject_prefix", ""))
