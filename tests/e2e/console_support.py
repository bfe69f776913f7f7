"""What the console tests share: one `make run` suite (module-scoped), tokens, the console app
in-process pointed at that suite, and a form poster that carries the CSRF token like a browser."""

from __future__ import annotations

import itertools
import re
from contextlib import asynccontextmanager
from typing import Any

from litestar.testing import AsyncTestClient

from services.console.app import create_app
from services.console.settings import ConsoleSettings
from shared.auth import issue_token

ADMIN_ID = 1000
_ids = itertools.count(1)
CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')


def next_barber() -> int:
    return 880_000 + next(_ids)


def token(state: dict, subject: int, role: str) -> str:
    return issue_token(state["jwt_secret"], subject, role, ttl_seconds=3600)


@asynccontextmanager
async def console_client(state: dict, subject: int | None = None, role: str = "admin"):
    """The console app in-process (served by the test client), calling the suite's real services;
    signed in as `subject` (`role`) when given."""
    urls = state["urls"]
    settings = ConsoleSettings(jwt_secret=state["jwt_secret"], log_json=False, log_level="warning",
                               **{f"{s}_url": urls[s] for s in ("router", "external", "collections", "analytics")})
    async with AsyncTestClient(create_app(settings)) as client:
        if subject is not None:
            signed = await client.get(f"/console/?token={token(state, subject, role)}", follow_redirects=False)
            assert signed.status_code == 303, signed.text
        yield client


async def post_form(client: Any, path: str, fields: dict[str, str], *, page: str | None = None):
    """Post a form as the browser would: with the CSRF token from the page that shows it."""
    shown = await client.get(page or path.rsplit("/", 1)[0])
    found = CSRF.search(shown.text)
    assert found, f"no CSRF token on {page or path}: {shown.status_code}"
    return await client.post(path, data={**fields, "_csrf_token": found.group(1)}, follow_redirects=False)
