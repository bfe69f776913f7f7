"""`Idempotency-Key` handling for writes that move or promise money.

A key is claimed in its own short transaction (so a concurrent duplicate sees it in flight
and gets 409), or, for an action run with `deferred=True`, in that action's own first statement
(the router's route-and-pay claims the key, records the route and opens the attempt in one).
The handler's own unit of work stores the response in the same transaction as its effect, so "done"
and "answer remembered" commit together. 4xx answers are remembered too, except those that ask
to retry later (with Retry-After); a 5xx (or a crash) releases the key so the retry runs again —
safe, because processor calls below carry idempotency keys derived from ours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa
from litestar import Request, Response
from litestar.types import Scope
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.db import HotPath, PlatformTables
from shared.errors import PROBLEM_MEDIA_TYPE, ProblemError
from shared.observability import header_value
from shared.outbox import UnitOfWork

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
HEADER_ASGI = HEADER.lower().encode()  # as ASGI scopes carry it
KEY_TTL = timedelta(hours=24)
# An in-flight claim older than this is treated as abandoned (its process died) and taken over
# (IDEMPOTENCY_CLAIM_TIMEOUT).
STALE_CLAIM = timedelta(seconds=60)

_encoder = msgspec.json.Encoder(decimal_format="string")
# How a remembered answer is encoded (also by a hot path that writes its answer itself).
ANSWER = _encoder


class Claim(msgspec.Struct):
    scope: str
    key: str
    fingerprint: str
    completed: bool = False
    # False while the key is not written yet (`run_idempotent(deferred=True)`): the action claims it
    # in its own first statement, or calls `IdempotencyStore.take` before it does anything else.
    held: bool = True

    def record(self, uow: UnitOfWork, status: int, body: Any, media_type: str = "application/json") -> None:
        """Remember `body` as this key's answer, in `uow`'s transaction."""
        table = uow.tables.idempotency_keys
        uow.on_commit_write(
            sa.update(table)
            .where(table.c.scope == self.scope, table.c.key == self.key)
            .values(
                state="completed",
                response_status=status,
                response_body=body if isinstance(body, bytes) else _encoder.encode(body),
                response_media_type=media_type,
            )
        )
        self.completed = True


class ClaimTaken(Exception):
    """A deferred claim found its key taken: `run_idempotent` claims it the usual way and answers
    (a replay, a 409 while in flight, a 422 for another body)."""


class Replay(msgspec.Struct):
    status: int
    body: bytes
    media_type: str

    def response(self) -> Response[bytes]:
        return Response(
            content=self.body, status_code=self.status, media_type=self.media_type, headers={REPLAY_HEADER: "true"}
        )


def fingerprint(method: str, path: str, body: Any) -> str:
    payload = body if isinstance(body, bytes) else _encoder.encode(body)
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + payload).hexdigest()


class IdempotencyStore:
    def __init__(self, sessions: async_sessionmaker, tables: PlatformTables, hot: HotPath | None = None,
                 *, stale_claim: timedelta = STALE_CLAIM) -> None:
        self._sessions = sessions
        self._stale_claim = stale_claim
        self._table = tables.idempotency_keys
        self._hot = hot
        # A new key (the common case) is claimed by this one autocommit statement on the hot-path
        # pool; a key seen before takes the locked read below.
        self._claim_new = (
            f"INSERT INTO {self._table.schema}.idempotency_keys (scope, key, fingerprint, state, created_at, "
            "locked_at) VALUES ($1, $2, $3, 'in_progress', $4, $4) ON CONFLICT DO NOTHING RETURNING key")

    async def claim(self, scope: str, key: str, fp: str, *, now: datetime | None = None) -> Claim | Replay:
        now = now or datetime.now(UTC)
        if self._hot is not None and await self._claimed_new(scope, key, fp, now):
            return Claim(scope, key, fp)
        t = self._table
        async with self._sessions() as session, session.begin():
            inserted = await session.execute(self._insert_new(scope, key, fp, now))
            if inserted.first() is not None:
                return Claim(scope, key, fp)
            row = (
                await session.execute(
                    sa.select(t).where(t.c.scope == scope, t.c.key == key).with_for_update()
                )
            ).one()
            if row.created_at < now - KEY_TTL:  # expired: the key is free again
                await session.execute(
                    sa.update(t)
                    .where(t.c.scope == scope, t.c.key == key)
                    .values(fingerprint=fp, state="in_progress", created_at=now, locked_at=now,
                            response_status=None, response_body=None, response_media_type=None)
                )
                return Claim(scope, key, fp)
            if row.fingerprint != fp:
                raise ProblemError(
                    422, "idempotency_key_reused",
                    f"{HEADER} {key!r} was already used with a different request body",
                )
            if row.state == "completed":
                return Replay(row.response_status, row.response_body, row.response_media_type)
            if row.locked_at > now - self._stale_claim:
                raise ProblemError(
                    409, "idempotency_in_progress",
                    f"a request with {HEADER} {key!r} is still in progress; retry later",
                    headers={"Retry-After": "1"},
                )
            await session.execute(
                sa.update(t).where(t.c.scope == scope, t.c.key == key).values(locked_at=now)
            )
            return Claim(scope, key, fp)

    async def take(self, claim: Claim) -> None:
        """Hold a deferred claim now, before an action does anything else; `ClaimTaken` when the
        key is there already."""
        if claim.held:
            return
        if not await self._claimed_new(claim.scope, claim.key, claim.fingerprint, datetime.now(UTC)):
            raise ClaimTaken
        claim.held = True

    def _insert_new(self, scope: str, key: str, fp: str, now: datetime) -> Any:
        return (pg_insert(self._table)
                .values(scope=scope, key=key, fingerprint=fp, state="in_progress", created_at=now, locked_at=now)
                .on_conflict_do_nothing().returning(self._table.c.key))

    async def _claimed_new(self, scope: str, key: str, fp: str, now: datetime) -> bool:
        """Claim a key nobody holds: True, or False when it is there. One autocommit statement on
        the hot path (the common case), else a short transaction."""
        if self._hot is not None:
            return await self._hot.fetchrow_sql(self._claim_new, scope, key, fp, now) is not None
        async with self._sessions() as session, session.begin():
            return (await session.execute(self._insert_new(scope, key, fp, now))).first() is not None

    async def save(self, claim: Claim, status: int, body: Any, media_type: str) -> None:
        """Remember an answer outside a business transaction (errors, read-only outcomes)."""
        t = self._table
        encoded = body if isinstance(body, bytes) else _encoder.encode(body)
        async with self._sessions() as session, session.begin():
            if not claim.held:  # refused before it claimed the key: the answer is the claim
                now = datetime.now(UTC)
                await session.execute(pg_insert(t).values(
                    scope=claim.scope, key=claim.key, fingerprint=claim.fingerprint, state="completed",
                    created_at=now, locked_at=now, response_status=status, response_body=encoded,
                    response_media_type=media_type).on_conflict_do_nothing())
                return
            await session.execute(
                sa.update(t)
                .where(t.c.scope == claim.scope, t.c.key == claim.key, t.c.state == "in_progress")
                .values(state="completed", response_status=status, response_body=encoded,
                        response_media_type=media_type)
            )

    async def release(self, claim: Claim) -> None:
        if not claim.held:
            return
        t = self._table
        async with self._sessions() as session, session.begin():
            await session.execute(
                sa.delete(t).where(t.c.scope == claim.scope, t.c.key == claim.key, t.c.state == "in_progress")
            )

    async def purge_expired(self, *, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            result = await session.execute(sa.delete(self._table).where(self._table.c.created_at < now - KEY_TTL))
            return result.rowcount or 0


def idempotency_key(request: Request) -> str | None:
    return _checked(request.headers.get(HEADER))


def _checked(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ProblemError(422, "validation_error", f"{HEADER}: must be 1 to 255 printable characters", field=HEADER)
    return key


# Set in the ASGI scope when a fast path's deferred claim found the key taken: the Litestar route
# that then serves the request claims the key straight away instead of running the action's first
# statement a second time only to find the key taken again.
_TAKEN_SCOPE_KEY = "hybrid_payments.idempotency_key_taken"


def _unwritten_claim(scope: Scope, key: str, body: Any) -> Claim:
    """The claim of `key` for this request: the caller's scope (its token's subject, else its
    address) and the fingerprint of method, path and body, computed alike by the Litestar routes
    and the fast paths (`run_deferred_first`)."""
    user = scope.get("user")
    subject = getattr(user, "subject", None)
    if subject is not None:
        caller = f"{getattr(user, 'role', None)}:{subject}"
    else:
        client = scope.get("client")
        caller = f"addr:{client[0] if client else 'unknown'}"
    path = scope.get("root_path", "") + scope["path"]  # as Litestar's request.url.path
    return Claim(caller, key, fingerprint(scope["method"], path, body), held=False)


async def run_idempotent(
    store: IdempotencyStore,
    request: Request,
    body: Any,
    action: Callable[[Claim | None], Awaitable[Any]],
    *,
    status_code: int = 200,
    deferred: bool = False,
) -> Any:
    """Run `action` at most once per (caller, Idempotency-Key).

    `action` receives the claim (None without a key) and should call `claim.record(uow, ...)`
    inside its unit of work so its effect and its remembered answer commit together. With
    `deferred`, the claim reaches the action unwritten (`held` False), for an action that writes
    it in its own first statement (one round trip fewer) or else calls `store.take(claim)` first;
    either raises `ClaimTaken` when the key is there, and the key is then claimed here as usual.
    """
    key = idempotency_key(request)
    if key is None:
        return await action(None)
    claim = _unwritten_claim(request.scope, key, body)
    if deferred and not request.scope.get(_TAKEN_SCOPE_KEY):  # a fast path found it taken already
        try:
            return await _run_claimed(store, claim, action, status_code)
        except ClaimTaken:
            pass
    outcome = await store.claim(claim.scope, claim.key, claim.fingerprint)
    if isinstance(outcome, Replay):
        return outcome.response()
    return await _run_claimed(store, outcome, action, status_code)


async def run_deferred_first(
    store: IdempotencyStore,
    scope: Scope,
    body: Any,
    action: Callable[[Claim | None], Awaitable[Any]],
    *,
    status_code: int = 200,
) -> Any:
    """`run_idempotent(deferred=True)` from the raw ASGI scope, for a route's fast path
    (`shared.edge`), up to the key being found taken: then `ClaimTaken` propagates, with nothing
    written, and the fast path declines so that the route's Litestar handler runs `run_idempotent`
    for the request (a replay, a 409, a 422)."""
    key = _checked(header_value(scope, HEADER_ASGI, limit=None))
    if key is None:
        return await action(None)
    try:
        return await _run_claimed(store, _unwritten_claim(scope, key, body), action, status_code)
    except ClaimTaken:
        scope[_TAKEN_SCOPE_KEY] = True  # type: ignore[literal-required]  # the route claims it at once
        raise


async def _run_claimed(store: IdempotencyStore, claim: Claim, action: Callable[[Claim | None], Awaitable[Any]],
                       status_code: int) -> Any:
    try:
        result = await action(claim)
    except ClaimTaken:
        if claim.held:  # only an unwritten claim may be taken by someone else
            await store.release(claim)
            raise RuntimeError("an action raised ClaimTaken for a claim it held") from None
        raise
    except ProblemError as problem:
        # A 4xx is the request's answer, remembered; a 5xx, or a 4xx that asks to come back later
        # (Retry-After: the route is being paid by another attempt), is not: the retry runs again.
        if problem.status < 500 and "Retry-After" not in problem.headers:
            await store.save(claim, problem.status, problem.to_dict(), PROBLEM_MEDIA_TYPE)
        else:
            await store.release(claim)
        raise
    except BaseException:
        await store.release(claim)
        raise
    if not claim.completed:
        if isinstance(result, Response):  # an action that chose its own status code
            await store.save(claim, result.status_code, result.content, "application/json")
        else:
            await store.save(claim, status_code, result, "application/json")
    return result
