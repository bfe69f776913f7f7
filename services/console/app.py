"""Composition root of the console: templates, its static files (vendored htmx and Chart.js), the
services' API client, sign-in, CSRF on every form, and the pages (`controllers.py`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from litestar import Litestar, MediaType, Request, Response, get
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_303_SEE_OTHER
from litestar.template.config import TemplateConfig

from services.console import settings as settings_module
from services.console.api import ApiError, ServiceApi
from services.console.controllers import ConsoleController, SignInController
from services.console.session import PATH, SignInRequired, WrongRole, login_url, session_cookie, verify
from shared.auth import TokenVerifier
from shared.observability import configure_logging

HERE = Path(__file__).resolve().parent
# Pages load scripts, styles and data from the console itself only (every asset is vendored).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@get("/health/live", media_type=MediaType.JSON, include_in_schema=False, sync_to_thread=False)
def health_live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", media_type=MediaType.JSON, include_in_schema=False, sync_to_thread=False)
def health_ready() -> dict[str, str]:
    return {"status": "ready"}  # it holds no state; each page says which service did not answer


def create_app(settings: settings_module.ConsoleSettings | None = None) -> Litestar:
    settings = settings or settings_module.load()
    configure_logging(settings.log_level, json=settings.log_json)
    api = ServiceApi(settings)
    verifier = TokenVerifier(secret=settings.jwt_secret, public_key=settings.jwt_public_key)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await api.start()
        try:
            yield
        finally:
            await api.close()

    async def token_in_query(request: Request) -> Response | None:
        """`?token=` from the main platform: checked, kept in the cookie, and dropped from the URL
        (so it does not stay in the history or in logs)."""
        token = request.query_params.get("token")
        if token is None or not request.url.path.startswith(PATH):
            return None
        rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        here = request.url.path + (f"?{rest}" if rest else "")
        try:
            verify(verifier, token)
        except ValueError as exc:
            return Redirect(login_url(here, str(exc)), status_code=HTTP_303_SEE_OTHER)
        response = Redirect(here, status_code=HTTP_303_SEE_OTHER)
        response.set_cookie(session_cookie(token, secure=settings.console_cookie_secure))
        return response

    def sign_in(request: Request, exc: SignInRequired) -> Response:
        target = login_url(request.url.path if request.method == "GET" else None, exc.reason or None)
        if request.headers.get("HX-Request"):
            return Response(b"", status_code=401, headers={"HX-Redirect": target})
        return Redirect(target, status_code=HTTP_303_SEE_OTHER)

    def error_page(request: Request, status: int, message: str) -> Response:
        return Template(template_name="error.html", status_code=status,
                        context={"viewer": None, "status": status, "message": message})

    def wrong_role(request: Request, exc: WrongRole) -> Response:
        return error_page(request, 403, str(exc))

    def api_error(request: Request, exc: ApiError) -> Response:
        if exc.status == 401:
            return sign_in(request, SignInRequired(f"the service refused the token: {exc.detail}"))
        return error_page(request, exc.status, exc.detail)

    def http_error(request: Request, exc: HTTPException) -> Response:
        if isinstance(exc, ValidationException):
            detail = "; ".join(f"{e.get('key', '')}: {e.get('message', '')}" for e in (exc.extra or [])
                               if isinstance(e, dict)) or exc.detail
            return error_page(request, 400, f"bad request: {detail}")
        if isinstance(exc, NotFoundException):
            return error_page(request, 404, "no such page")
        if exc.status_code == 403 and "csrf" in str(exc.detail).lower():
            return error_page(request, 403, "the form expired or came from another site: reload the page and try again")
        return error_page(request, exc.status_code, str(exc.detail))

    app = Litestar(
        route_handlers=[
            health_live, health_ready, SignInController, ConsoleController,
            create_static_files_router(path=f"{PATH}/static", directories=[HERE / "static"],
                                       cache_control=CacheControlHeader(max_age=3600, public=True),
                                       include_in_schema=False),
        ],
        template_config=TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine),
        csrf_config=CSRFConfig(secret=settings.csrf_secret, cookie_path=PATH, cookie_httponly=True,
                               cookie_samesite="strict", cookie_secure=settings.console_cookie_secure,
                               cookie_name="hp_console_csrf"),
        before_request=token_in_query,
        after_request=_security_headers,
        exception_handlers={SignInRequired: sign_in, WrongRole: wrong_role, ApiError: api_error,
                            HTTPException: http_error},  # type: ignore[dict-item]
        lifespan=[lifespan],
        openapi_config=None,
        debug=False,
    )
    app.state.api = api
    app.state.verifier = verifier
    app.state.settings = settings
    return app


async def _security_headers(response: Any) -> Any:
    for name, value in SECURITY_HEADERS.items():
        if name == "Cache-Control" and "cache-control" in {k.lower() for k in response.headers}:
            continue  # the static files keep theirs
        response.headers.setdefault(name, value)
    return response
