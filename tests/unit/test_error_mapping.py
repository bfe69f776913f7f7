"""How unexpected exceptions become answers: a database that cannot serve now is a 503 the client
may retry (found with two replicas of each service over a Postgres out of connection slots, which
answered 500), a data exception the caller's 422, anything else a 500."""

from __future__ import annotations

import json

import asyncpg
import pytest
import sqlalchemy.exc
from litestar.testing import RequestFactory

from shared.errors import _handle_unexpected


def answer(exc: Exception) -> tuple[int, dict, dict]:
    response = _handle_unexpected(RequestFactory().get("/x"), exc)
    return response.status_code, json.loads(response.content), {k.lower(): v for k, v in response.headers.items()}


def wrapped(orig: Exception) -> Exception:
    """As SQLAlchemy raises it over asyncpg."""
    return sqlalchemy.exc.DBAPIError("select 1", None, orig)


@pytest.mark.parametrize("exc", [
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    wrapped(asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already")),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ConnectionRefusedError(111, "Connection refused"),
    wrapped(ConnectionResetError(104, "reset")),
    ConnectionResetError(),  # no message at all
], ids=lambda exc: type(exc).__name__)
def test_a_database_that_cannot_serve_now_is_a_503_to_retry(exc):
    status, body, headers = answer(exc)
    assert (status, body["code"]) == (503, "database_unavailable")
    assert headers["retry-after"] == "1"


def test_a_data_exception_is_the_callers_422():
    status, body, _ = answer(asyncpg.exceptions.NumericValueOutOfRangeError("numeric field overflow"))
    assert (status, body["code"]) == (422, "invalid_value")


@pytest.mark.parametrize("exc", [RuntimeError("bug"), asyncpg.exceptions.UndefinedColumnError("no such column"),
                                 KeyError("x")])
def test_anything_else_is_a_500(exc):
    status, body, _ = answer(exc)
    assert (status, body["code"]) == (500, "internal_error")
