"""JWT authentication (HS256 or RS256) and the caller as a `Principal` (`shared.edge` checks both
and the route's roles on every request).

Tokens carry `sub` (user id; a barber's id for barbers), `role` and `exp`. Verified tokens are
cached until they expire, so the hot path does not re-run the signature check per request.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

import jwt
import msgspec

from shared.errors import ProblemError

Role = Literal["barber", "admin", "service"]
ROLES: frozenset[str] = frozenset({"barber", "admin", "service"})
_CACHE_LIMIT = 50_000


# User ids are positive 32-bit integers (the id columns are `integer`); a `sub` outside that range
# would overflow a query, so such a token is refused at the door rather than deep in a handler.
MAX_USER_ID = 2**31 - 1
_USER_ID = re.compile(r"[1-9][0-9]{0,9}")


class Principal(msgspec.Struct, frozen=True):
    subject: str
    role: Role

    @property
    def user_id(self) -> int:
        return int(self.subject)

    @property
    def is_privileged(self) -> bool:
        """Admins and services act for any barber and are not rate limited."""
        return self.role in ("admin", "service")

    @property
    def barber_id(self) -> int | None:
        return int(self.subject) if self.role == "barber" else None


def user_id_claim(sub: object) -> int | None:
    """The `sub` claim as a user id: a positive 32-bit integer, as a JSON number or ASCII digits."""
    if isinstance(sub, bool):
        return None
    if isinstance(sub, int):
        value = sub
    elif isinstance(sub, str) and _USER_ID.fullmatch(sub):
        value = int(sub)
    else:
        return None
    return value if 1 <= value <= MAX_USER_ID else None


class TokenVerifier:
    def __init__(self, *, secret: str | None = None, public_key: str | None = None, leeway: int = 5):
        if public_key:
            self._key: Any = public_key
            self._algorithms = ["RS256"]
        elif secret:
            self._key = secret
            self._algorithms = ["HS256"]
        else:
            raise ValueError("a JWT secret or public key is required")
        self._leeway = leeway
        self._cache: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                # `sub` is checked below: PyJWT insists on a string, the contract allows an integer.
                options={"require": ["exp"], "verify_sub": False},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("token has expired") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"invalid token: {exc}") from None
        role = claims.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise unauthorized("token has no valid role claim (barber, admin or service)")
        user_id = user_id_claim(claims.get("sub"))
        if user_id is None:
            raise unauthorized(f"token subject must be a positive integer user id up to {MAX_USER_ID}")
        principal = Principal(subject=str(user_id), role=role)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = (principal, float(claims["exp"]))
        return principal


def issue_token(
    secret: str, subject: str | int, role: Role, *, ttl_seconds: int = 3600, private_key: str | None = None
) -> str:
    """Mint a token (for `make run`, tests and service-to-service calls)."""
    claims = {"sub": str(subject), "role": role, "exp": int(time.time()) + ttl_seconds, "iat": int(time.time())}
    if private_key:
        return jwt.encode(claims, private_key, algorithm="RS256")
    return jwt.encode(claims, secret, algorithm="HS256")


def unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def acting_barber_id(principal: Principal, requested: int | None, *, field: str = "barber_id") -> int:
    """The barber a request acts for: a barber acts only for itself; admins and services name one."""
    if principal.role == "barber":
        own = principal.user_id
        if requested is not None and requested != own:
            raise ProblemError(403, "forbidden", f"{field} must be your own barber id")
        return own
    if requested is None:
        raise ProblemError(422, "validation_error", f"{field}: required for {principal.role} callers", field=field)
    return requested
