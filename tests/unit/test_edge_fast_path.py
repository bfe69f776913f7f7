"""The edge's fast path (`shared.edge._fast`) over raw ASGI messages: the body it hands the route's
function, and what Litestar receives when it declines (every message read, replayed in order)."""

from __future__ import annotations

import asyncpg
import pytest

from shared.edge import FAST_BODY_LIMIT, _fast
from shared.errors import ProblemError


def scope(*headers: tuple[bytes, bytes]) -> dict:
    return {"type": "http", "method": "POST", "path": "/route", "headers": list(headers)}


class Channel:
    """An ASGI receive over given messages (then a disconnect), and a send that keeps what it got."""

    def __init__(self, *messages: dict) -> None:
        self.messages = [*messages, {"type": "http.disconnect"}]
        self.read = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        self.read += 1
        return self.messages[self.read - 1]

    async def send(self, message: dict) -> None:
        self.sent.append(message)


def chunks(*parts: bytes) -> list[dict]:
    return [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]


class Answer:
    def __init__(self, result: bytes | None = b'{"ok":true}', error: Exception | None = None) -> None:
        self.result, self.error, self.bodies = result, error, []

    async def __call__(self, scope: dict, body: bytes) -> bytes | None:
        self.bodies.append(body)
        if self.error is not None:
            raise self.error
        return self.result


async def drain(receive, count: int) -> list[dict]:
    return [await receive() for _ in range(count)]


async def test_the_body_in_chunks_is_joined_and_answered():
    answer, channel = Answer(), Channel(*chunks(b'{"a"', b":", b"1}"))
    assert await _fast(answer, scope(), channel.receive, channel.send) is None
    assert answer.bodies == [b'{"a":1}']
    assert channel.sent == [
        {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]},
        {"type": "http.response.body", "body": b'{"ok":true}'},
    ]


async def test_a_declined_body_is_replayed_to_litestar_in_order():
    messages = chunks(b'{"a"', b":1}")
    answer, channel = Answer(result=None), Channel(*messages)
    receive = await _fast(answer, scope(), channel.receive, channel.send)
    assert receive is not None and answer.bodies == [b'{"a":1}'] and channel.sent == []
    assert await drain(receive, 3) == [*messages, {"type": "http.disconnect"}]  # then the channel itself


async def test_a_body_past_the_limit_is_not_offered_and_litestar_gets_all_of_it():
    messages = chunks(b"x" * FAST_BODY_LIMIT, b"y", b"z" * 10)
    answer, channel = Answer(), Channel(*messages)
    receive = await _fast(answer, scope(), channel.receive, channel.send)
    assert answer.bodies == [] and channel.read == 2  # it stopped reading once past the limit
    assert await drain(receive, 3) == messages


async def test_a_client_gone_mid_body_is_litestars_to_handle():
    answer = Answer()
    channel = Channel({"type": "http.request", "body": b"{", "more_body": True})
    receive = await _fast(answer, scope(), channel.receive, channel.send)
    assert answer.bodies == []
    assert await drain(receive, 2) == channel.messages


async def test_refusals_pass_through_and_other_errors_answer_as_litestars_handlers_would():
    refusal = ProblemError(422, "no_payment_route", "none")
    with pytest.raises(ProblemError) as raised:
        await _fast(Answer(error=refusal), scope(), Channel(*chunks(b"{}")).receive, Channel().send)
    assert raised.value is refusal
    with pytest.raises(ProblemError) as raised:
        await _fast(Answer(error=RuntimeError("bug")), scope(), Channel(*chunks(b"{}")).receive, Channel().send)
    assert (raised.value.status, raised.value.code) == (500, "internal_error")
    lost = asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
    with pytest.raises(ProblemError) as raised:
        await _fast(Answer(error=lost), scope(), Channel(*chunks(b"{}")).receive, Channel().send)
    assert (raised.value.status, raised.value.headers) == (503, {"Retry-After": "1"})
