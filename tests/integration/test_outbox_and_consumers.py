"""The outbox and consumer guarantees, against a real Postgres and a real JetStream server:
published once after commit, never on rollback, re-published after a crash and de-duplicated,
applied once per event, poison messages terminated.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import msgspec
import pytest
import sqlalchemy as sa
from nats.js.errors import NotFoundError

from shared.consumer import EventConsumer
from shared.events import Event, encode_event, new_event
from tests.integration.platform_support import make_relay, make_uow, stream_messages, unpublished, widgets
from tests.support import eventually


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
    original_publish = link.js.publish

    async def spy(*args, **kwargs):
        ack = await original_publish(*args, **kwargs)
        acks.append(ack)
        return ack

    monkeypatch.setattr(link.js, "publish", spy)
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

    original = link.js.publish
    monkeypatch.setattr(link.js, "publish", refuse)
    with pytest.raises(RuntimeError, match="publish failed"):
        await relay.publish_pending()
    assert all([await unpublished(sessions, e.event_id) for e in events])
    monkeypatch.setattr(link.js, "publish", original)
    assert await relay.publish_pending() == 3
    assert await stream_messages(link) == 3


class Applied:
    """A consumer handler that records what it applied, in the consumer's own transaction."""

    def __init__(self, fail_times: int = 0) -> None:
        self.calls = 0
        self.applied: list[uuid.UUID] = []
        self.fail_times = fail_times

    async def __call__(self, uow, event: Event) -> None:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise RuntimeError("handler failure")
        await uow.session.execute(sa.insert(widgets).values(name=f"applied-{event.event_id}", amount=1))
        self.applied.append(event.event_id)


def consumer_for(link, sessions, handler, name: str, max_deliver: int = 5) -> EventConsumer:
    return EventConsumer(
        name=name,
        event_types=["transaction.recorded"],
        handler=handler,
        link=link,
        unit_of_work=lambda: make_uow(sessions, link),
        max_deliver=max_deliver,
    )


async def consumer_idle(link, durable: str) -> bool:
    try:
        info = await link.js.consumer_info(link.stream, durable)
    except NotFoundError:  # not created yet
        return False
    return info.delivered.stream_seq > 0 and info.num_pending == 0 and info.num_ack_pending == 0


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
        async with sessions() as session:
            count = await session.scalar(
                sa.select(sa.func.count()).where(widgets.c.name == f"applied-{event.event_id}")
            )
        assert count == 1
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


async def test_poison_messages_are_terminated_not_redelivered_forever(sessions, link):
    subject = link.subject_prefix + "transaction.recorded"
    await link.js.publish(subject, b"{not json")
    await link.js.publish(subject, b'{"event_id": "not-a-uuid"}')
    always_failing = Applied(fail_times=10_000)
    failing_event = new_event("transaction.recorded", {"n": 3})
    await link.js.publish(subject, encode_event(failing_event))
    consumer = consumer_for(link, sessions, always_failing, "poison", max_deliver=3)
    outcomes: list[str] = []
    original = consumer.handle

    async def record(msg):
        outcome = await original(msg)
        outcomes.append(outcome)
        return outcome

    consumer.handle = record  # type: ignore[method-assign]
    consumer.start()
    try:
        await eventually(lambda: outcomes.count("terminated") == 1, timeout=20)
        await eventually(lambda: consumer_idle(link, consumer.durable))
        await asyncio.sleep(1.0)  # nothing comes back after termination
        assert outcomes.count("poison") == 2
        assert outcomes.count("retry") == 2 and outcomes.count("terminated") == 1
        assert always_failing.calls == 3
    finally:
        await consumer.stop()


async def _not(awaitable) -> bool:
    return not await awaitable
