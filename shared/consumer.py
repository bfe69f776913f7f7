"""Durable JetStream pull consumers that apply each event exactly once.

Per message: decode (undecodable -> terminated at once), then in one transaction record the
`event_id` in the service's `processed_events` and apply the handler; commit; then ack.
A handler failure naks with a growing delay; after `max_deliver` attempts the message is
terminated and logged, never redelivered forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from shared.events import Event, decode_event
from shared.messaging import NatsLink
from shared.observability import EVENTS_CONSUMED
from shared.outbox import UnitOfWork

log = structlog.get_logger("consumer")

Handler = Callable[[UnitOfWork, Event], Awaitable[None]]


class EventConsumer:
    def __init__(
        self,
        *,
        name: str,
        event_types: list[str],
        handler: Handler,
        link: NatsLink,
        unit_of_work: Callable[[], UnitOfWork],
        max_deliver: int = 5,
        batch: int = 50,
        ack_wait: float = 30.0,
    ) -> None:
        self.name = name
        self.event_types = event_types
        self._handler = handler
        self._link = link
        self._uow = unit_of_work
        self._max_deliver = max_deliver
        self._batch = batch
        self._ack_wait = ack_wait
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    @property
    def durable(self) -> str:
        # Durable names are per stream, and the stream is per run in tests: no collisions.
        return self.name.replace(".", "_")

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"consumer-{self.name}")

    async def stop(self) -> None:
        """Finish the message in hand, then stop; cancel only if that takes too long.

        (Cancelling a task parked in nats-py's `fetch` can hang, so the loop is asked first.)
        """
        if self._task is None:
            return
        self._stopping.set()
        done, _ = await asyncio.wait({self._task}, timeout=3.0)
        if not done:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2.0)
        self._task = None

    async def ensure(self) -> None:
        js = await self._link.wait_ready()
        prefix = self._link.subject_prefix
        config = ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            # One more than ours, so our own accounting terminates before the server gives up.
            max_deliver=self._max_deliver + 1,
            **self._filter(prefix),
        )
        try:
            await js.consumer_info(self._link.stream, self.durable)
            await js.add_consumer(self._link.stream, config)  # same name: updates in place
        except NotFoundError:
            await js.add_consumer(self._link.stream, config)

    def _filter(self, prefix: str) -> dict[str, object]:
        subjects = [prefix + t for t in self.event_types]
        if len(subjects) == 1:  # `filter_subject` works on every server version
            return {"filter_subject": subjects[0]}
        # Several subjects need nats-server 2.10+; older servers would silently ignore the list.
        version = getattr(self._link.nc, "connected_server_version", None)
        if version is not None and (version.major, version.minor) < (2, 10):
            raise RuntimeError(f"consumer {self.name} needs nats-server >= 2.10 for several subjects")
        return {"filter_subjects": subjects}

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.ensure()
                js = await self._link.wait_ready()
                sub = await js.pull_subscribe_bind(self.durable, self._link.stream)
                try:
                    while not self._stopping.is_set():
                        try:
                            messages = await sub.fetch(self._batch, timeout=0.5)
                        except (TimeoutError, NatsTimeoutError):
                            continue
                        for msg in messages:
                            await self.handle(msg)
                finally:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("consumer_loop_error", consumer=self.name, error=str(exc) or type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def handle(self, msg) -> str:
        """Apply one message; returns the outcome (for metrics and tests)."""
        try:
            event = decode_event(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("poison_message_terminated", consumer=self.name, subject=msg.subject, error=str(exc))
            await msg.term()
            return self._count("poison")
        try:
            async with self._uow() as uow:
                if not await uow.claim_event(self.name, event):
                    outcome = "duplicate"
                else:
                    await self._handler(uow, event)
                    outcome = "applied"
                await uow.commit()
        except Exception as exc:
            delivered = msg.metadata.num_delivered if msg.metadata else 1
            if delivered >= self._max_deliver:
                log.error(
                    "event_terminated_after_retries",
                    consumer=self.name,
                    event_id=str(event.event_id),
                    event_type=event.event_type,
                    attempts=delivered,
                    error=str(exc) or type(exc).__name__,
                )
                await msg.term()
                return self._count("terminated")
            log.warning("event_failed_will_retry", consumer=self.name, event_id=str(event.event_id),
                        attempt=delivered, error=str(exc) or type(exc).__name__)
            await msg.nak(delay=min(0.5 * 2**delivered, 30.0))
            return self._count("retry")
        await msg.ack_sync()
        return self._count(outcome)

    def _count(self, outcome: str) -> str:
        EVENTS_CONSUMED.labels(self.name, outcome).inc()
        return outcome
