"""Operator endpoints every service serves under its own API prefix, admin only: the event
pipeline's state, the dead letters (with replay and discard) and the audit log.

Every operator action anywhere in the suite (a config switched or rolled back, a dead letter
replayed or discarded, a collection run forced) writes one `audit_log` row (who, what, subject,
before, after, when) in the same transaction as its effect, through `audit()`; the console shows
them. `make validate` and the Prometheus gauges read the same figures as `/operations/status`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import sqlalchemy as sa
from litestar import Controller, Request, get, post
from litestar.params import JSONBody, QueryParameter, SkipValidation

from shared.auth import Principal
from shared.edge import roles
from shared.errors import ProblemError, not_found
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, after_cursor, page_of
from shared.requests import NO_CONTROL_CHARACTERS, BigId

DeadLetterState = Literal["waiting", "replayed", "discarded"]
# How handlers ask for the service runtime (`shared.service`; wiring, not input) and the caller.
Runtime = SkipValidation[Any]
Admin = Request[Principal, str, object]
ADMIN = roles("admin")


# ---- wire -----------------------------------------------------------------------------------------------


class ConsumerLag(msgspec.Struct, kw_only=True):
    consumer: str
    pending: int  # in the stream, not yet delivered to it
    unacked: int  # delivered, not yet acknowledged
    reachable: bool  # False when NATS did not answer for it (the figures are then 0)


class PipelineStatus(msgspec.Struct, kw_only=True):
    service: str
    ready: dict[str, bool]
    outbox_backlog: int  # events committed, not yet published
    oldest_unpublished_seconds: float | None
    dead_letters_waiting: int
    consumers: list[ConsumerLag]


class DeadLetterOut(msgspec.Struct, kw_only=True):
    id: int
    consumer: str
    event_id: str | None
    event_type: str | None
    subject: str
    error: str
    attempts: int
    state: DeadLetterState
    parked_at: datetime
    replayed_at: datetime | None
    discarded_at: datetime | None
    note: str | None
    body: str  # the parked bytes, as text (events are JSON)


class DeadLetterPage(msgspec.Struct, kw_only=True):
    items: list[DeadLetterOut]
    next_cursor: str | None


class DiscardIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    note: Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=NO_CONTROL_CHARACTERS)]


class AuditOut(msgspec.Struct, kw_only=True):
    id: int
    at: datetime
    actor_role: str
    actor_id: int
    action: str
    subject: str
    before: Any
    after: Any


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditOut]
    next_cursor: str | None


# ---- the audit log ----------------------------------------------------------------------------------------


def audit(uow: Any, principal: Principal, action: str, subject: str, before: Any = None, after: Any = None) -> None:
    """Record an operator action in `uow`'s transaction (written at its commit, with its effect)."""
    uow.on_commit_write(sa.insert(uow.tables.audit_log).values(
        actor_role=principal.role, actor_id=principal.user_id, action=action, subject=subject,
        before=None if before is None else msgspec.to_builtins(before),
        after=None if after is None else msgspec.to_builtins(after),
    ))


async def audit_page(runtime: Any, *, subject: str | None, limit: int, cursor: str | None) -> AuditPage:
    table = runtime.tables.audit_log
    query = sa.select(table).order_by(table.c.at.desc(), table.c.id.desc()).limit(limit + 1)
    if subject is not None:
        query = query.where(table.c.subject == subject)
    if (after := after_cursor(table.c.at, table.c.id, cursor, int)) is not None:
        query = query.where(after)
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    page, next_cursor = page_of(list(rows), limit, lambda r: (r["at"], r["id"]))
    return AuditPage(items=[AuditOut(**dict(r)) for r in page], next_cursor=next_cursor)


# ---- dead letters ---------------------------------------------------------------------------------------------


def _dead_letter_out(row: Any) -> DeadLetterOut:
    state: DeadLetterState = "discarded" if row["discarded_at"] else "replayed" if row["replayed_at"] else "waiting"
    return DeadLetterOut(
        id=row["id"], consumer=row["consumer"], event_id=str(row["event_id"]) if row["event_id"] else None,
        event_type=row["event_type"], subject=row["subject"], error=row["error"], attempts=row["attempts"],
        state=state, parked_at=row["parked_at"], replayed_at=row["replayed_at"], discarded_at=row["discarded_at"],
        note=row["note"], body=bytes(row["body"]).decode("utf-8", "replace"),
    )


async def dead_letter_page(runtime: Any, *, state: DeadLetterState | None, limit: int,
                           cursor: str | None) -> DeadLetterPage:
    table = runtime.tables.dead_letters
    query = sa.select(table).order_by(table.c.parked_at.desc(), table.c.id.desc()).limit(limit + 1)
    if state == "waiting":
        query = query.where(table.c.replayed_at.is_(None), table.c.discarded_at.is_(None))
    elif state == "replayed":
        query = query.where(table.c.replayed_at.is_not(None), table.c.discarded_at.is_(None))
    elif state == "discarded":
        query = query.where(table.c.discarded_at.is_not(None))
    if (after := after_cursor(table.c.parked_at, table.c.id, cursor, int)) is not None:
        query = query.where(after)
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    page, next_cursor = page_of(list(rows), limit, lambda r: (r["parked_at"], r["id"]))
    return DeadLetterPage(items=[_dead_letter_out(r) for r in page], next_cursor=next_cursor)


async def replay_dead_letter(runtime: Any, principal: Principal, letter_id: int) -> DeadLetterOut:
    """Publish the parked bytes again on their subject, under a new `Nats-Msg-Id` (JetStream's
    duplicate window would drop the old one). Every consumer of the subject sees it again and those
    that applied it skip it by its `event_id`, so a replay applies it only where it was missing; a
    replay that published but failed to commit is harmless to repeat for the same reason."""
    table = runtime.tables.dead_letters
    js = runtime.link.js
    if js is None:
        raise ProblemError(503, "service_unavailable", "NATS is not reachable: nothing replayed")
    async with runtime.uow() as uow:
        row = (await uow.session.execute(
            sa.select(table).where(table.c.id == letter_id).with_for_update())).mappings().first()
        if row is None:
            raise not_found(f"dead letter {letter_id}")
        if row["discarded_at"] is not None:
            raise ProblemError(409, "conflict", f"dead letter {letter_id} was discarded; it cannot be replayed")
        now = datetime.now(UTC)
        try:
            await js.publish(row["subject"], bytes(row["body"]), stream=runtime.link.stream, timeout=5,
                             headers={"Nats-Msg-Id": f"replay-{runtime.settings.service_name}-{letter_id}-"
                                                     f"{int(now.timestamp() * 1000)}"})
        except Exception as exc:  # NATS away or slow: nothing changed, say so
            raise ProblemError(503, "service_unavailable", f"NATS did not take the event: {exc}") from None
        before = _dead_letter_out(row)
        await uow.session.execute(sa.update(table).where(table.c.id == letter_id).values(replayed_at=now))
        after = msgspec.structs.replace(before, state="replayed", replayed_at=now)
        audit(uow, principal, "dead_letter.replay", f"dead_letter:{letter_id}", _summary(before), _summary(after))
        await uow.commit()
    return after


async def discard_dead_letter(runtime: Any, principal: Principal, letter_id: int, note: str) -> DeadLetterOut:
    """Mark a parked event as not to be applied, with why (kept with the row and in the audit log)."""
    table = runtime.tables.dead_letters
    async with runtime.uow() as uow:
        row = (await uow.session.execute(
            sa.select(table).where(table.c.id == letter_id).with_for_update())).mappings().first()
        if row is None:
            raise not_found(f"dead letter {letter_id}")
        before = _dead_letter_out(row)
        if before.state != "waiting":
            raise ProblemError(409, "conflict", f"dead letter {letter_id} is already {before.state}")
        now = datetime.now(UTC)
        await uow.session.execute(sa.update(table).where(table.c.id == letter_id)
                                  .values(discarded_at=now, note=note))
        after = msgspec.structs.replace(before, state="discarded", discarded_at=now, note=note)
        audit(uow, principal, "dead_letter.discard", f"dead_letter:{letter_id}", _summary(before), _summary(after))
        await uow.commit()
    return after


def _summary(letter: DeadLetterOut) -> dict[str, Any]:
    return {"state": letter.state, "event_id": letter.event_id, "event_type": letter.event_type,
            "consumer": letter.consumer, "note": letter.note}


# ---- the pipeline ------------------------------------------------------------------------------------------


async def pipeline_status(runtime: Any) -> PipelineStatus:
    """The figures the gauges export and `make validate` checks, read now."""
    outbox, parked = runtime.tables.outbox, runtime.tables.dead_letters
    async with runtime.engine.connect() as conn:
        backlog, oldest = (await conn.execute(
            sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(outbox.c.published_at.is_(None))
        )).one()
        waiting = await conn.scalar(sa.select(sa.func.count()).select_from(parked)
                                    .where(parked.c.replayed_at.is_(None), parked.c.discarded_at.is_(None)))
    consumers = []
    js = runtime.link.js
    for consumer in runtime.consumers:
        try:
            if js is None:
                raise ConnectionError("NATS is not connected")
            info = await asyncio.wait_for(js.consumer_info(runtime.link.stream, consumer.durable), 2.0)
            consumers.append(ConsumerLag(consumer=consumer.name, pending=info.num_pending,
                                         unacked=info.num_ack_pending, reachable=True))
        except Exception:  # not created yet, or NATS away
            consumers.append(ConsumerLag(consumer=consumer.name, pending=0, unacked=0, reachable=False))
    age = None if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())
    return PipelineStatus(service=runtime.settings.service_name, ready=await runtime.readiness(),
                          outbox_backlog=int(backlog), oldest_unpublished_seconds=age,
                          dead_letters_waiting=int(waiting or 0), consumers=consumers)


# ---- HTTP ------------------------------------------------------------------------------------------------------


def operations_controller(api_prefix: str) -> type[Controller]:
    """The operator endpoints under `<api_prefix>/operations` (admin only)."""

    class OperationsController(Controller):
        path = f"{api_prefix}/operations"
        tags = ["operations"]
        # Roles per route (`shared.edge`), as in every service's controllers.

        @get("/status", opt=ADMIN)
        async def status(self, runtime: Runtime) -> PipelineStatus:
            """Readiness, outbox backlog, dead letters waiting and each consumer's lag, read now."""
            return await pipeline_status(runtime)

        @get("/audit", opt=ADMIN)
        async def audit_log(
            self, runtime: Runtime,
            subject: Annotated[str | None, QueryParameter(max_length=200)] = None,
            limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
            cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        ) -> AuditPage:
            """Operator actions in this service, newest first; `subject` e.g. `barber:42`."""
            return await audit_page(runtime, subject=subject, limit=limit, cursor=cursor)

        @get("/dead-letters", opt=ADMIN)
        async def dead_letters(
            self, runtime: Runtime,
            state_filter: Annotated[DeadLetterState | None, QueryParameter(name="state")] = None,
            limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
            cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        ) -> DeadLetterPage:
            """Events this service's consumers parked, newest first; `state` waiting, replayed or discarded."""
            return await dead_letter_page(runtime, state=state_filter, limit=limit, cursor=cursor)

        @post("/dead-letters/{letter_id:int}/replay", opt=ADMIN, status_code=200)
        async def replay(self, request: Admin, runtime: Runtime, letter_id: BigId) -> DeadLetterOut:
            """Publish a parked event again (audited); consumers that applied it skip it."""
            return await replay_dead_letter(runtime, request.user, letter_id)

        @post("/dead-letters/{letter_id:int}/discard", opt=ADMIN, status_code=200)
        async def discard(self, request: Admin, runtime: Runtime, letter_id: BigId,
                          data: JSONBody[DiscardIn]) -> DeadLetterOut:
            """Mark a parked event as not to be applied, with a note saying why (audited)."""
            return await discard_dead_letter(runtime, request.user, letter_id, data.note)

    return OperationsController

