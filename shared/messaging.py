"""The NATS connection of one service, kept alive in the background.

A service starts (and answers `/health/live`) even when NATS is down; the link keeps trying,
`/health/ready` reports 503 meanwhile, and the outbox holds events until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared.config import mask_url
from shared.events import ensure_stream

log = structlog.get_logger("messaging")


class NatsLink:
    def __init__(self, url: str, *, stream: str, subject_prefix: str, name: str, stream_replicas: int = 1) -> None:
        self.url = url
        self.stream_replicas = stream_replicas
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.name = name
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        # Called after the client reconnected: core NATS messages sent meanwhile were lost to this
        # process (cache invalidation hints, for one), so listeners drop what those would have.
        self.reconnect_listeners: list[Callable[[], None]] = []

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected and self._ready.is_set()

    async def start(self, *, wait: float = 2.0) -> None:
        """Connect in the background; wait up to `wait` seconds for the first connection."""
        self._task = asyncio.create_task(self._connect_forever(), name=f"nats-link-{self.name}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait)

    async def wait_ready(self) -> JetStreamContext:
        await self._ready.wait()
        if self.js is None:
            raise RuntimeError("the NATS link is closed")
        return self.js

    async def _connect_forever(self) -> None:
        delay = 0.2
        while True:
            nc: NATS | None = None
            try:
                nc = await nats.connect(
                    self.url,
                    name=self.name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=self._on_error,
                    reconnected_cb=self._on_reconnected,
                )
                js = nc.jetstream(timeout=5)
                await ensure_stream(js, self.stream, self.subject_prefix, self.stream_replicas)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("nats_connect_failed", url=mask_url(self.url), error=str(exc) or type(exc).__name__)
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await nc.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.nc, self.js = nc, js
            self._ready.set()
            log.info("nats_connected", url=mask_url(self.url), stream=self.stream)
            return

    async def _on_reconnected(self) -> None:
        log.info("nats_reconnected", url=mask_url(self.url))
        for listener in self.reconnect_listeners:
            listener()

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats_error", error=str(exc) or type(exc).__name__)

    async def ping(self, timeout: float = 1.0) -> bool:
        if not self.connected:
            return False
        try:
            await self.nc.flush(timeout=timeout)  # type: ignore[union-attr]
            return True
        except Exception:
            return False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.nc is not None:
            # close, not drain: every publish already waited for its ack and the consumers are
            # stopped before this, so there is nothing in flight to drain (and drain could stall).
            with contextlib.suppress(Exception):
                await self.nc.close()
        self._ready.clear()
        self.nc = self.js = None
