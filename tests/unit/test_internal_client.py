"""The internal API client against a real local HTTP server: how the callee's answers (or their
absence) become problems for the caller."""

from __future__ import annotations

import pytest
from aiohttp import web

from shared.errors import ProblemError
from shared.internal_api import InternalClient
from tests.support import free_port, hang_up, serving


@pytest.fixture
async def upstream():
    """A server answering `/status/{n}` with status n (a problem body for errors)."""

    async def answer(request: web.Request) -> web.Response:
        status = int(request.match_info["n"])
        if status >= 400:
            return web.json_response({"type": "about:blank", "title": "x", "status": status, "code": "nope",
                                      "detail": "refused by the callee", "transaction_id": "t-1"}, status=status)
        return web.json_response({"ok": True, "auth": request.headers.get("Authorization", "")[:7]})

    async with serving("POST", "/status/{n}", answer) as url:
        yield url


async def test_an_answer_is_decoded_and_the_call_carries_a_service_token(upstream):
    client = InternalClient(upstream, jwt_secret="s" * 32)
    try:
        assert await client.call("POST", "/status/200", {"a": 1}) == {"ok": True, "auth": "Bearer "}
    finally:
        await client.close()


async def problem_of(base_url: str, path: str) -> ProblemError:
    client = InternalClient(base_url, jwt_secret="s" * 32)
    try:
        with pytest.raises(ProblemError) as raised:
            await client.call("POST", path, {})
    finally:
        await client.close()
    return raised.value


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_service_token_is_a_502_for_the_caller_not_its_401(upstream, status):
    """The caller's credentials were fine; ours were not. Passing the callee's 401/403 through
    would tell the caller to log in again."""
    problem = await problem_of(upstream, f"/status/{status}")
    assert (problem.status, problem.code) == (502, "upstream_misconfigured")


@pytest.mark.parametrize("status", [402, 409, 422, 503])
async def test_other_problems_keep_the_callees_status_code_and_fields(upstream, status):
    problem = await problem_of(upstream, f"/status/{status}")
    assert (problem.status, problem.code, problem.extra["transaction_id"]) == (status, "nope", "t-1")


async def test_nobody_listening_is_unreachable():
    problem = await problem_of(f"http://127.0.0.1:{free_port()}", "/status/200")
    assert (problem.status, problem.code, problem.extra["unreachable"]) == (503, "upstream_unavailable", True)


async def test_a_replica_that_hangs_up_passes_the_call_to_the_next(upstream):
    """A replica closing the connection without an answer (shutting down as the call went out): the
    call is repeatable (keyed or a read), so the next replica answers it; with no other replica left
    it is a 502 that does not claim nothing happened."""
    async with serving("POST", "/status/{n}", hang_up) as hanging:
        client = InternalClient(f"{hanging},{upstream}", jwt_secret="s" * 32)
        try:
            for _ in range(4):  # each replica has the first turn twice
                assert (await client.call("POST", "/status/200", {"a": 1}))["ok"] is True
        finally:
            await client.close()
        problem = await problem_of(hanging, "/status/200")
        assert (problem.status, problem.code, problem.extra["unreachable"]) == (502, "upstream_unavailable", False)
