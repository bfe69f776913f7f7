"""RFC 9457 problem details with a stable `code`, and the Litestar handlers that produce them.

Every error a service answers goes through here, so clients see one shape:
`{"type", "title", "status", "code", "detail", ...extra}` as `application/problem+json`.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://docs.hybrid-payments.dev/problems/"

log = structlog.get_logger("errors")

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Validation failed",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


class ProblemError(Exception):
    """An error with a stable machine-readable `code`; raise it anywhere below a handler."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        self.headers = headers or {}
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "code": self.code,
        }
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return body


def validation_error(field: str, message: str) -> ProblemError:
    return ProblemError(422, "validation_error", f"{field}: {message}", field=field)


def not_found(what: str) -> ProblemError:
    return ProblemError(404, "not_found", f"{what} not found")


def forbidden(detail: str = "not allowed for this caller") -> ProblemError:
    return ProblemError(403, "forbidden", detail)


def problem_asgi(problem: ProblemError) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The problem as raw ASGI parts, headers and body, for a layer that answers before Litestar
    does (`shared.edge`); the same body and headers as `problem_response`."""
    body = msgspec.json.encode(problem.to_dict())
    headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
               *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in problem.headers.items())]
    return headers, body


def problem_response(problem: ProblemError) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(problem.to_dict()),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def _from_validation(exc: ValidationException) -> ProblemError:
    """Schema mismatches become a 422 naming each field."""
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", ""))
        if item.get("key") == "data" and message in ("'data'", ""):
            errors.append({"field": "body", "message": "a JSON request body is required"})
            continue
        field = _field_of(message) or str(item.get("key") or item.get("source") or "body")
        errors.append({"field": field, "message": message})
    detail = "; ".join(
        e["message"] if e["message"].startswith(e["field"] + ":") else f"{e['field']}: {e['message']}"
        for e in errors
    ) or str(exc.detail)
    return ProblemError(422, "validation_error", detail, errors=errors)


_NAMED_FIELD = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


def _field_of(message: str) -> str | None:
    if "at `$." in message:
        return message.split("at `$.", 1)[1].rstrip("`")
    if (named := _NAMED_FIELD.search(message)) is not None:  # msgspec names a missing or unknown one so
        return named.group(1)
    # Cross-field checks (a Struct's __post_init__) start their message with "field: ".
    head, sep, _ = message.partition(": ")
    if sep and head.isidentifier():
        return head
    return None


def _handle_problem(_: Request, exc: ProblemError) -> Response[bytes]:
    return problem_response(exc)


def _handle_validation(_: Request, exc: ValidationException) -> Response[bytes]:
    return problem_response(_from_validation(exc))


def _handle_http(_: Request, exc: HTTPException) -> Response[bytes]:
    if type(exc) is ClientException and exc.status_code == 400:
        # Litestar raises a bare ClientException when the body cannot be decoded at all.
        return problem_response(ProblemError(400, "invalid_json", f"malformed JSON body: {exc.detail}",
                                             title="Malformed JSON body"))
    status = exc.status_code
    if isinstance(exc, NotAuthorizedException):
        status = 401
    elif isinstance(exc, PermissionDeniedException):
        status = 403
    elif isinstance(exc, NotFoundException):
        status = 404
    problem = ProblemError(
        status,
        _CODES.get(status, f"http_{status}"),
        exc.detail if exc.detail and exc.detail != _TITLES.get(status) else None,
        headers=dict(exc.headers or {}),
    )
    return problem_response(problem)


def _sqlstate(exc: Exception) -> str | None:
    """The SQLSTATE of a database error (asyncpg's own, or wrapped by SQLAlchemy)."""
    for candidate in (exc, getattr(exc, "orig", None), getattr(getattr(exc, "orig", None), "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


# SQLSTATEs that say the database cannot serve now (connection lost or refused, too many clients,
# shutting down, starting up): not a bug, a 503 the client may retry.
_UNAVAILABLE_STATES = ("08", "53", "57P01", "57P02", "57P03")


def _database_unavailable(exc: BaseException) -> bool:
    state = _sqlstate(exc)  # type: ignore[arg-type]
    if state is not None:
        return state.startswith(_UNAVAILABLE_STATES)
    chain, seen = exc, 0
    while chain is not None and seen < 5:  # a refused or dropped socket, under SQLAlchemy's wrapping
        if isinstance(chain, (ConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError)):
            return True
        chain, seen = chain.__cause__ or getattr(chain, "orig", None), seen + 1
    return False


def _handle_unexpected(request: Request, exc: Exception) -> Response[bytes]:
    return problem_response(unexpected_problem(request.url.path, exc))


def _first_line(exc: BaseException) -> str:
    """An exception's message's first line (its type's name when it has none), cut to 200 characters."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def unexpected_problem(path: str, exc: Exception) -> ProblemError:
    """What an exception that is not a `ProblemError` answers (logged here): a 503 while the
    database cannot serve, a 422 for a value it refused to store, else a 500."""
    if _database_unavailable(exc):
        log.warning("database_unavailable", path=path, error=_first_line(exc))
        return ProblemError(503, "database_unavailable", "the database cannot take this request now; retry shortly",
                            headers={"Retry-After": "1"})
    if (_sqlstate(exc) or "").startswith("22"):
        # A data exception (a number out of a column's range, a NUL in text): input that slipped past
        # validation. It is the caller's to fix, so a 4xx; logged with its trace, as the validation
        # that should have caught it is ours to add.
        log.warning("data_exception", path=path, error=type(exc).__name__, exc_info=exc)
        reason = _first_line(getattr(exc, "orig", exc))
        return ProblemError(422, "invalid_value", f"a value in the request cannot be stored: {reason}")
    log.exception("unhandled_error", path=path, error=type(exc).__name__, exc_info=exc)
    return ProblemError(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "an unexpected error occurred")


exception_handlers = {
    ProblemError: _handle_problem,
    ValidationException: _handle_validation,
    HTTPException: _handle_http,
    Exception: _handle_unexpected,
}

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "ProblemError",
    "exception_handlers",
    "forbidden",
    "not_found",
    "problem_response",
    "unexpected_problem",
    "validation_error",
]
