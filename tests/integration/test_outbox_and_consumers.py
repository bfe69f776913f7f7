"""The outbox and consumer guarantees, against a real Postgres and a real JetStream server:
published once after commit, never on rollback, re-published after a crash and de-duplicated,
applied once per event; transient failures (a real Postgres going away) retried without limit,
deterministic ones parked in dead_letters and replayable, nothing dropped.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import msgspec
import pytest
import sqlalchemy as sa
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import create_async_engine

from shared.consumer import EventConsumer, is_transient
from shared.db import session_factory
from shared.events import Event, encode_event, new_event
from shared.observability import EVENTS_DEAD_LETTERED
from shared.outbox import OutboxRelay
from tests.integration.platform_support import (
    SCHEMA,
    make_relay,
    make_uow,
    metadata,
    stream_messages,
    tables,
    unpublished,
    widgets,
)
from tests.support import eventually
from tools import dead_letters
from tools.devinfra import start_infra


async def add_widget_with_event(uow, name: str) -> Event:
    await uow.session.execute(sa.insert(widgets).values(name=name, amount=Decimal("10.00")))
    return uow.emit("transaction.recorded", {"widget": name, "amount": "10.00"})


async def test_event_is_published_once_after_commit(sessions, link):
    relay = make_relay(sessions, link)
    relay.start()
    try:
        async with make_uow(sessions, link, relay) as uow:
            event = await add_widget_with_event(uow, "committed")
            await uow.commit()
        await eventually(lambda: stream_messages(link), timeout=5)
        await eventually(lambda: _not(unpublished(sessions, event.event_id)))
        await asyncio.sleep(0.5)  # several relay polls later, still exactly one
        assert await stream_messages(link) == 1
        msg = await link.js.get_last_msg(link.stream, link.subject_prefix + "transaction.recorded")
        assert msg.headers["Nats-Msg-Id"] == str(event.event_id)
        assert msgspec.json.decode(msg.data)["payload"] == {"widget": "committed", "amount": "10.00"}
    finally:
        await relay.stop()


async def test_one_relay_leads_and_a_commit_in_any_process_wakes_it(sessions, link, database_url):
    """Two relays (two workers, or two replicas): one leads; a commit made where no relay runs
    wakes it through NOTIFY (its poll is a minute away); when it stops, the other takes over."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    relays = [OutboxRelay(sessions, tables, link, poll_interval=60, dsn=dsn, standby_interval=0.2)
              for _ in range(2)]
    for relay in relays:
        relay.start()
    try:
        await eventually(lambda: any(r.leading for r in relays))
        await asyncio.sleep(0.6)  # several stand-by turns later
        assert [r.leading for r in relays].count(True) == 1
        async with make_uow(sessions, link) as uow:  # no relay in this "process" to tell
            await add_widget_with_event(uow, "elsewhere")
            await uow.commit()
        await eventually(lambda: _count_is(link, 1), timeout=5)
        leader = next(r for r in relays if r.leading)
        other = next(r for r in relays if r is not leader)
        await leader.stop()
        await eventually(lambda: other.leading, timeout=5)
        async with make_uow(sessions, link) as uow:
            await add_widget_with_event(uow, "after the hand-over")
            await uow.commit()
        await eventually(lambda: _count_is(link, 2), timeout=5)
    finally:
        for relay in relays:
            await relay.stop()


async def _count_is(link, n: int) -> bool:
    return await stream_messages(link) == n


async def test_rolled_back_change_publishes_nothing(sessions, link):
    relay = make_relay(sessions, link)
    relay.start()
    try:
        with pytest.raises(sa.exc.IntegrityError):
            async with make_uow(sessions, link, relay) as uow:
                await uow.session.execute(sa.insert(widgets).values(name="ok", amount=Decimal("1.00")))
                uow.emit("transaction.recorded", {"widget": "ok"})
                # The CHECK constraint refuses this row, so the commit (with its outbox row) fails.
                await uow.session.execute(sa.insert(widgets).values(name="bad", amount=Decimal("-1")))
                await uow.commit()
        async with make_uow(sessions, link) as uow:  # a unit left without commit rolls back too
            await add_widget_with_event(uow, "abandoned")
        await asyncio.sleep(0.5)
        assert await stream_messages(link) == 0
        async with sessions() as session:
            names = set((await session.scalars(sa.select(widgets.c.name))).all())
        assert not names & {"ok", "bad", "abandoned"}
    finally:
        await relay.stop()


async def test_relay_down_at_commit_publishes_on_restart(sessions, link):
    async with make_uow(sessions, link) as uow:  # no relay running: the process "died" after commit
        event = await add_widget_with_event(uow, "while-down")
        await uow.commit()
    assert await unpublished(sessions, event.event_id)
    relay = make_relay(sessions, link)
    assert await relay.publish_pending() >= 1
    assert not await unpublished(sessions, event.event_id)
    assert await stream_messages(link) == 1


async def test_crash_between_publish_and_mark_is_deduplicated_by_jetstream(sessions, link, monkeypatch):
    async with make_uow(sessions, link) as uow:
        event = await add_widget_with_event(uow, "crash")
        await uow.commit()
    crashing = make_relay(sessions, link)

    async def die(*_args, **_kwargs):
        raise RuntimeError("killed after publish, before marking")

    monkeypatch.setattr(crashing, "_mark_published", die)
    with pytest.raises(RuntimeError):
        await crashing.publish_pending()
    assert await stream_messages(link) == 1  # it went out...
    assert await unpublished(sessions, event.event_id)  # ...but the outbox does not know

    acks = []
    restarted = make_relay(sessions, link)
    original_publish = link.js.publish_async

    async def spy(*args, **kwargs):
        future = await original_publish(*args, **kwargs)
        future.add_done_callback(lambda done: acks.append(done.result()))
        return future

    monkeypatch.setattr(link.js, "publish_async", spy)
    await restarted.publish_pending()
    assert [ack.duplicate for ack in acks] == [True]
    assert await stream_messages(link) == 1
    assert not await unpublished(sessions, event.event_id)


async def test_nats_down_keeps_events_until_it_is_back(sessions, link, monkeypatch):
    async with make_uow(sessions, link) as uow:
        events = [await add_widget_with_event(uow, f"outage-{i}") for i in range(3)]
        await uow.commit()
    relay = make_relay(sessions, link)

    async def refuse(*_args, **_kwargs):
        raise ConnectionError("nats unavailable")

    original = link.js.publish_async
    monkeypatch.setattr(link.js, "publish_async", refuse)
    with pytest.raises(RuntimeError, match="publish failed"):
        await relay.publish_pending()
    assert all([await unpublished(sessions, e.event_id) for e in events])
    monkeypatch.setattr(link.js, "publish_async", original)
    assert await relay.publish_pending() == 3
    assert await stream_messages(link) == 3


async def test_an_unacknowledged_publish_stays_in_the_outbox_while_the_rest_go(sessions, link, monkeypatch):
    """The batch is pipelined: one message whose ack never comes stays unpublished (and goes out
    on the next round), the others are marked published."""
    from shared.outbox import OutboxRelay
    from tests.integration.platform_support import tables

    async with make_uow(sessions, link) as uow:
        events = [await add_widget_with_event(uow, f"lost-ack-{i}") for i in range(3)]
        await uow.commit()
    relay = OutboxRelay(sessions, tables, link, poll_interval=0.1, ack_timeout=0.5)
    original = link.js.publish_async
    calls = []

    async def lose_the_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # sent, say, but its ack is lost
            return asyncio.get_running_loop().create_future()
        return await original(*args, **kwargs)

    monkeypatch.setattr(link.js, "publish_async", lose_the_second)
    with pytest.raises(RuntimeError, match="publish failed"):
        await relay.publish_pending()
    assert [await unpublished(sessions, e.event_id) for e in events] == [False, True, False]
    monkeypatch.setattr(link.js, "publish_async", original)
    assert await relay.publish_pending() == 1
    assert not any([await unpublished(sessions, e.event_id) for e in events])


class Applied:
    """A consumer handler that records what it applied, in the consumer's own transaction.
    It raises `error` for its first `fail_times` calls."""

    def __init__(self, fail_times: int = 0, error: type[Exception] = RuntimeError) -> None:
        self.calls = 0
        self.applied: list[uuid.UUID] = []
        self.fail_times = fail_times
        self.error = error

    async def __call__(self, uow, event: Event) -> None:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise self.error("handler failure")
        await uow.session.execute(sa.insert(widgets).values(name=f"applied-{event.event_id}", amount=1))
        self.applied.append(event.event_id)


def consumer_for(link, sessions, handler, name: str, max_attempts: int = 5) -> EventConsumer:
    return EventConsumer(
        name=name,
        event_types=["transaction.recorded"],
        handler=handler,
        link=link,
        unit_of_work=lambda: make_uow(sessions, link),
        max_attempts=max_attempts,
        backoff_base=0.05,
        backoff_cap=0.2,
    )


def recording(consumer: EventConsumer) -> list[str]:
    """Outcomes of every message the consumer handles, in order."""
    outcomes: list[str] = []
    original = consumer.handle

    async def record(msg):
        outcome = await original(msg)
        outcomes.append(outcome)
        return outcome

    consumer.handle = record  # type: ignore[method-assign]
    return outcomes


async def consumer_idle(link, durable: str) -> bool:
    try:
        info = await link.js.consumer_info(link.stream, durable)
    except NotFoundError:  # not created yet
        return False
    return info.delivered.stream_seq > 0 and info.num_pending == 0 and info.num_ack_pending == 0


async def applied_count(sessions, event_id) -> int:
    async with sessions() as session:
        return await session.scalar(sa.select(sa.func.count()).where(widgets.c.name == f"applied-{event_id}"))


async def parked(sessions, consumer: str) -> list[dict]:
    dl = tables.dead_letters
    async with sessions() as session:
        rows = await session.execute(sa.select(dl).where(dl.c.consumer == consumer).order_by(dl.c.id))
        return [dict(r) for r in rows.mappings()]


async def test_same_event_twice_is_applied_once(sessions, link):
    event = new_event("transaction.recorded", {"n": 1})
    subject = link.subject_prefix + "transaction.recorded"
    # Two distinct messages carrying one event (as after a producer-side retry outside the window).
    await link.js.publish(subject, encode_event(event), headers={"Nats-Msg-Id": "a-" + str(event.event_id)})
    await link.js.publish(subject, encode_event(event), headers={"Nats-Msg-Id": "b-" + str(event.event_id)})
    handler = Applied()
    consumer = consumer_for(link, sessions, handler, "dedupe")
    consumer.start()
    try:
        await eventually(lambda: consumer_idle(link, consumer.durable))
        assert handler.applied == [event.event_id]
        assert await applied_count(sessions, event.event_id) == 1
    finally:
        await consumer.stop()


async def test_a_consumer_deleted_while_it_runs_is_recreated_and_nothing_is_lost(sessions, link):
    """An operator (or a stream restore) deletes the durable consumer under a running service: the
    fetch loop only sees quiet, so it must look, notice, and create it again, and events published
    meanwhile are still applied, once each."""
    handler = Applied()
    consumer = consumer_for(link, sessions, handler, "recreated")
    consumer._check_every = 0.5
    first, second = new_event("transaction.recorded", {"n": 21}), new_event("transaction.recorded", {"n": 22})
    subject = link.subject_prefix + "transaction.recorded"
    consumer.start()
    try:
        await link.js.publish(subject, encode_event(first))
        await eventually(lambda: handler.applied == [first.event_id], timeout=10)
        await link.js.delete_consumer(link.stream, consumer.durable)
        await link.js.publish(subject, encode_event(second))
        await eventually(lambda: second.event_id in handler.applied, timeout=15)
        assert await applied_count(sessions, first.event_id) == 1  # redelivered from the start: claimed once
        assert await applied_count(sessions, second.event_id) == 1
    finally:
        await consumer.stop()


async def test_failed_handler_is_retried_then_applied(sessions, link):
    event = new_event("transaction.recorded", {"n": 2})
    await link.js.publish(link.subject_prefix + "transaction.recorded", encode_event(event))
    handler = Applied(fail_times=2)
    consumer = consumer_for(link, sessions, handler, "retry")
    consumer.start()
    try:
        await eventually(lambda: handler.applied, timeout=15)
        await eventually(lambda: consumer_idle(link, consumer.durable))
        assert handler.calls == 3 and handler.applied == [event.event_id]
    finally:
        await consumer.stop()


def test_transient_and_deterministic_failures_are_told_apart():
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    assert is_transient(sa.exc.OperationalError("select 1", {}, OSError("connection refused")))
    wrapped = RuntimeError("while applying")
    wrapped.__cause__ = ConnectionResetError()
    assert is_transient(wrapped)
    assert not is_transient(ValueError("amount: not a number"))
    assert not is_transient(KeyError("barber_id"))
    assert not is_transient(sa.exc.IntegrityError("insert", {}, Exception("duplicate key")))


async def test_transient_failures_retry_past_the_attempt_limit(sessions, link):
    """A network or database error is never a reason to give up on a money event."""
    event = new_event("transaction.recorded", {"n": 4})
    await link.js.publish(link.subject_prefix + "transaction.recorded", encode_event(event))
    handler = Applied(fail_times=8, error=ConnectionResetError)
    consumer = consumer_for(link, sessions, handler, "transient", max_attempts=2)
    outcomes = recording(consumer)
    consumer.start()
    try:
        # The outcome is recorded once `handle` returns (after the ack), a moment after the handler ran.
        await eventually(lambda: "applied" in outcomes, timeout=20)
        assert outcomes == ["retry"] * 8 + ["applied"]
        assert await parked(sessions, consumer.name) == []
    finally:
        await consumer.stop()


async def test_deterministic_failures_and_poison_are_parked_then_replayed(sessions, link, database_url, infra):
    subject = link.subject_prefix + "transaction.recorded"
    await link.js.publish(subject, b"{not json")
    await link.js.publish(subject, b'{"event_id": "not-a-uuid"}')
    failing_event = new_event("transaction.recorded", {"n": 3})
    await link.js.publish(subject, encode_event(failing_event))
    broken = Applied(fail_times=10_000)
    consumer = consumer_for(link, sessions, broken, "poison", max_attempts=3)
    outcomes = recording(consumer)
    before = EVENTS_DEAD_LETTERED.labels(consumer.name)._value.get()
    consumer.start()
    try:
        await eventually(lambda: outcomes.count("parked") == 3, timeout=20)
        await eventually(lambda: consumer_idle(link, consumer.durable))
        await asyncio.sleep(0.5)  # nothing comes back once parked
        assert outcomes.count("retry") == 2 and broken.calls == 3
        rows = await parked(sessions, consumer.name)
        assert [r["body"] for r in rows[:2]] == [b"{not json", b'{"event_id": "not-a-uuid"}']
        assert [r["event_id"] for r in rows] == [None, None, failing_event.event_id]
        assert rows[2]["attempts"] == 3 and "handler failure" in rows[2]["error"]
        assert EVENTS_DEAD_LETTERED.labels(consumer.name)._value.get() - before == 3
    finally:
        await consumer.stop()

    # The bug is fixed; the operator replays the parked event and it is applied exactly once.
    fixed = Applied()
    consumer = consumer_for(link, sessions, fixed, "poison", max_attempts=3)
    consumer.start()
    try:
        replayed = await dead_letters.replay(database_url, infra.nats_url, link.stream, SCHEMA, [rows[2]["id"]])
        assert replayed == [rows[2]["id"]]
        await eventually(lambda: fixed.applied, timeout=10)
        assert await dead_letters.replay(database_url, infra.nats_url, link.stream, SCHEMA, [rows[2]["id"]])
        await asyncio.sleep(0.5)
        await eventually(lambda: consumer_idle(link, consumer.durable))
        assert fixed.applied == [failing_event.event_id]  # the second replay was a duplicate
        assert await applied_count(sessions, failing_event.event_id) == 1
        assert [r["id"] for r in await dead_letters.list_parked(database_url, SCHEMA)
                if r["consumer"] == consumer.name] == [rows[0]["id"], rows[1]["id"]]
    finally:
        await consumer.stop()


@pytest.fixture
async def own_postgres(tmp_path):
    """An embedded Postgres this test may stop and start: a real database outage."""
    infra = start_infra(tmp_path, force_embedded=True)
    engine = create_async_engine(infra.postgres_url, pool_pre_ping=True)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f"CREATE SCHEMA {SCHEMA}"))
        await conn.run_sync(metadata.create_all)
    try:
        yield infra, session_factory(engine)
    finally:
        await engine.dispose()
        infra.stop()


@pytest.mark.embedded
async def test_an_event_survives_a_postgres_outage_longer_than_the_retry_limit(own_postgres, link):
    infra, sessions = own_postgres
    handler = Applied()
    consumer = consumer_for(link, sessions, handler, "outage", max_attempts=2)
    outcomes = recording(consumer)
    infra.stop_postgres()
    event = new_event("transaction.recorded", {"n": 5})
    await link.js.publish(link.subject_prefix + "transaction.recorded", encode_event(event))
    consumer.start()
    try:
        # Far more failed deliveries than max_attempts while the database is down...
        await eventually(lambda: outcomes.count("retry") >= 6, timeout=30)
        assert handler.applied == [] and "parked" not in outcomes
        infra.start_postgres()
        # ...and once it is back, the event is applied: nothing was dropped or parked.
        await eventually(lambda: handler.applied, timeout=30)
        assert handler.applied == [event.event_id]
        assert await applied_count(sessions, event.event_id) == 1
        assert await parked(sessions, consumer.name) == []
    finally:
        await consumer.stop()


async def _not(awaitable) -> bool:
    return not await awaitable
