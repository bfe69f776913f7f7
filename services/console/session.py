"""Who is looking at the console: the user's own JWT, kept in an HttpOnly, SameSite=Strict cookie.

Sign-in is pasting a token (the one `make run` prints) or arriving with `?token=` from the main
platform; the token is checked with the same key the services use, so a page is never offered on a
forged cookie, and it is sent as-is to the services, which remain the authority on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from litestar import Request
from litestar.datastructures import Cookie

from shared.auth import Principal, TokenVerifier
from shared.errors import ProblemError

COOKIE = "hp_console"
PATH = "/console"
MAX_TOKEN = 4096


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    token: str

    @property
    def is_admin(self) -> bool:
        return self.principal.role == "admin"

    @property
    def barber_id(self) -> int | None:
        return self.principal.user_id if self.principal.role == "barber" else None


class SignInRequired(Exception):
    """No valid sign-in cookie: the page sends the browser to the sign-in page."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class WrongRole(Exception):
    """Signed in, but the page is for the other role (403)."""


def verify(verifier: TokenVerifier, token: str) -> Principal:
    """The token's principal, or ValueError naming what is wrong with it."""
    token = token.strip()
    if not token or len(token) > MAX_TOKEN:
        raise ValueError("paste a token (a JWT: three dot-separated parts)")
    try:
        principal = verifier.verify(token)
    except ProblemError as exc:
        raise ValueError(f"token refused: {exc.detail}") from None
    if principal.role not in ("admin", "barber"):
        raise ValueError("the console is for operators (admin) and barbers; this token's role is "
                         f"{principal.role}")
    return principal


def viewer_of(request: Request, verifier: TokenVerifier) -> Viewer:
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInRequired()
    try:
        return Viewer(verify(verifier, token), token.strip())
    except ValueError as exc:
        raise SignInRequired(str(exc)) from None


def session_cookie(token: str, *, secure: bool) -> Cookie:
    return Cookie(key=COOKIE, value=token.strip(), path=PATH, httponly=True, samesite="strict", secure=secure)


def cleared_cookie(*, secure: bool) -> Cookie:
    return Cookie(key=COOKIE, value="", path=PATH, httponly=True, samesite="strict", secure=secure, max_age=0)


def login_url(next_path: str | None = None, error: str | None = None) -> str:
    query = {k: v for k, v in (("next", next_path), ("error", error)) if v}
    return f"{PATH}/login" + (f"?{urlencode(query)}" if query else "")


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if value and value.startswith(PATH) and not value.startswith("//") and "\\" not in value:
        return value
    return PATH + "/"
