"""Composition root helpers: the runtime that wires a service's adapters, and the Litestar app
every service is built on (errors, auth, rate limits, health, metrics, OpenAPI).

`create_app(settings)` in each service passes its metadata, routes and consumers here;
nothing connects at import time — the Litestar lifespan opens and closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from litestar import Litestar, MediaType, Response, get
from litestar.di import Provide
from litestar.params import SkipValidation

from shared.auth import TokenVerifier
from shared.config import BaseSettings
from shared.consumer import BatchHandler, EventConsumer, Handler
from shared.db import HotPath, PlatformTables, create_engine, session_factory
from shared.docs import openapi_config
from shared.edge import edge_middleware
from shared.errors import ProblemError, exception_handlers
from shared.idempotency import IdempotencyStore
from shared.messaging import NatsLink
from shared.migrations import check_at_head
from shared.observability import (
    CONSUMER_LAG,
    DEAD_LETTERS_WAITING,
    OUTBOX_BACKLOG,
    configure_logging,
    metrics_payload,
)
from shared.operations import operations_controller, pipeline_status
from shared.outbox import OutboxRelay, UnitOfWork
from shared.ratelimit import SharedLimiter, rate_limit_sweep_sql
from shared.requests import TYPE_DECODERS, ExactJSONRequest, PlainDecimalSchema
from shared.scheduler import Job, SingletonJob

log = structlog.get_logger("service")

# Paths that never need a token: probes, metrics, the OpenAPI document, processor webhooks.
SHUTDOWN_STEP_TIMEOUT = 5.0
PUBLIC_PATHS = ["^/health/", "^/metrics$", "^/schema", "^/api/v1/webhooks/"]


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable consumer a service runs: its name, the event types it reads, its handler."""

    name: str
    event_types: list[str]
    handler: Handler
    # Deterministic failures before the event is parked in dead_letters (transient ones retry forever).
    max_attempts: int = 5
    # Optional: applies a whole fetched batch in one transaction (see `shared.consumer`); `handler`
    # stays the one-event path a failed batch falls back to.
    batch_handler: BatchHandler | None = None
    # Messages fetched at once. A batch handler's cost is a few statements per batch, so a large batch
    # is what lets it catch up a backlog (a legacy import's history) quickly; one-event handlers keep 50.
    batch: int = 50
    # Seconds a batch consumer waits after a fetch that was not full, so that under a steady
    # trickle it applies batches, not single events (added to the event lag; see tests/load/README).
    linger: float = 0.0


def consumer_of(service_name: str, spec: ConsumerSpec, link: NatsLink, unit_of_work: Any) -> EventConsumer:
    """The consumer a service runs for `spec`, named `<service>-<spec name>` (its durable name on the
    stream); `tools.validate` builds them the same way to know which consumers must exist."""
    return EventConsumer(name=f"{service_name}-{spec.name}", event_types=spec.event_types, handler=spec.handler,
                         batch_handler=spec.batch_handler, link=link, unit_of_work=unit_of_work,
                         max_attempts=spec.max_attempts, batch=spec.batch, linger=spec.linger)


@dataclass(frozen=True)
class JobSpec:
    """A periodic job a service runs (see `shared.scheduler`): once per interval across replicas,
    or, with `once=False`, in every replica (refreshers of gauges that only read the database, so
    every replica exports the same values)."""

    name: str
    interval: float
    job: Job
    once: bool = True


@dataclass
class ServiceRuntime:
    settings: BaseSettings
    metadata: sa.MetaData
    consumer_specs: Sequence[ConsumerSpec] = ()
    job_specs: Sequence[JobSpec] = ()
    start_relay: bool = True
    start_jobs: bool = True
    tables: PlatformTables = field(init=False)

    def __post_init__(self) -> None:
        self.tables = PlatformTables(self.metadata)
        self.engine = None
        self.sessions = None
        self.relay: OutboxRelay | None = None
        self.consumers: list[EventConsumer] = []
        self.jobs: dict[str, SingletonJob] = {}
        self.idempotency: IdempotencyStore | None = None
        # Set when shutdown begins: readiness fails from then on, so a balancer stops sending here
        # while in-flight work finishes (see "Running more than one of each" in the README).
        self.draining = False
        self.link = NatsLink(
            self.settings.nats_url,
            stream=self.settings.event_stream,
            subject_prefix=self.settings.event_subject_prefix,
            name=self.settings.service_name,
            stream_replicas=self.settings.event_stream_replicas,
        )

    async def start(self) -> None:
        self.engine = create_engine(self.settings)
        await check_at_head(self.settings.service_name, self.engine)
        self.sessions = session_factory(self.engine)
        self.hot_path = HotPath(self.settings)
        await self.hot_path.start()
        self.idempotency = IdempotencyStore(
            self.sessions, self.tables, self.hot_path,
            stale_claim=timedelta(seconds=self.settings.idempotency_claim_timeout))
        self.relay = OutboxRelay(
            self.sessions, self.tables, self.link, poll_interval=self.settings.outbox_poll_interval,
            dsn=self.hot_path.dsn,
        )
        await self.link.start()
        if self.start_relay:
            self.relay.start()
        for spec in self.consumer_specs:
            consumer = consumer_of(self.settings.service_name, spec, self.link, self.uow)
            consumer.start()
            self.consumers.append(consumer)
        platform_jobs = [JobSpec("pipeline-metrics", 15.0, self.refresh_pipeline_metrics, once=False),
                         JobSpec("rate-limit-sweep", 60.0, self.sweep_rate_limits)]
        for job_spec in [*self.job_specs, *platform_jobs]:
            job = SingletonJob(f"{self.settings.service_name}-{job_spec.name}", job_spec.interval, job_spec.job,
                               self.engine, schema=self.metadata.schema, once=job_spec.once)
            self.jobs[job_spec.name] = job
            if self.start_jobs:
                job.start()

    async def refresh_pipeline_metrics(self, now: Any = None) -> None:
        """The event pipeline as Prometheus sees it (`shared.operations.pipeline_status`, which the
        operators' `/operations/status` answers too): events committed but not yet published (outbox
        backlog), events waiting for each of this service's consumers (consumer lag; a consumer NATS
        did not answer for keeps its last value), parked events neither replayed nor discarded."""
        if self.engine is None:
            raise RuntimeError("the runtime is not started")
        status = await pipeline_status(self)
        OUTBOX_BACKLOG.labels(status.service).set(status.outbox_backlog)
        DEAD_LETTERS_WAITING.labels(status.service).set(status.dead_letters_waiting)
        for lag in status.consumers:
            if lag.reachable:
                CONSUMER_LAG.labels(lag.consumer).set(lag.pending + lag.unacked)

    async def sweep_rate_limits(self, now: Any = None) -> None:
        """Forget the rate-limit cells of callers whose budget is full again (`shared.ratelimit`)."""
        await self.hot_path.fetch_sql(rate_limit_sweep_sql(self.metadata.schema))

    async def stop(self) -> None:
        """Stop in dependency order; a step that hangs is logged and left behind, so shutdown
        always finishes (an orchestrator's SIGKILL would otherwise do it less politely)."""
        self.draining = True
        steps = [(f"job {name}", job.stop()) for name, job in self.jobs.items()]
        if self.consumers:  # together: each may be waiting out a quiet pull (shared.consumer)
            steps.append(("consumers", _stop_all(self.consumers)))
        if self.relay is not None:
            steps.append(("outbox relay", self.relay.stop()))
        steps.append(("nats", self.link.close()))
        if self.engine is not None:
            steps += [("hot-path pool", self.hot_path.close()), ("database engine", self.engine.dispose())]
        for name, step in steps:
            try:
                await asyncio.wait_for(step, SHUTDOWN_STEP_TIMEOUT)
            except TimeoutError:
                log.warning("shutdown_step_timed_out", step=name, seconds=SHUTDOWN_STEP_TIMEOUT)

    def uow(self) -> UnitOfWork:
        return UnitOfWork(
            self.sessions, self.tables, subject_prefix=self.settings.event_subject_prefix, relay=self.relay
        )

    async def readiness(self) -> dict[str, bool]:
        database = False
        with contextlib.suppress(Exception):
            async with self.engine.connect() as conn:  # type: ignore[union-attr]
                await conn.execute(sa.text("select 1"))
                database = True
        return {"database": database, "nats": await self.link.ping(), "accepting": not self.draining}


# How handlers ask for their service's runtime (it is wiring, not input: nothing to validate).
Runtime = SkipValidation[ServiceRuntime]


@get("/health/live", media_type=MediaType.JSON, include_in_schema=False, sync_to_thread=False)
def health_live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", media_type=MediaType.JSON, include_in_schema=False)
async def health_ready(runtime: Runtime) -> dict[str, Any]:
    checks = await runtime.readiness()
    if not all(checks.values()):
        failing = ", ".join(k for k, ok in checks.items() if not ok)
        raise ProblemError(503, "not_ready", f"not reachable: {failing}", checks=checks)
    return {"status": "ready", "checks": checks}


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def metrics() -> Response[bytes]:
    body, content_type = metrics_payload()
    return Response(content=body, media_type=content_type)


def build_app(
    *,
    settings: BaseSettings,
    runtime: ServiceRuntime,
    route_handlers: Sequence[Any],
    api_prefix: str,
    title: str,
    description: str = "",
    rate_limit_key=None,
    dependencies: dict[str, Any] | None = None,
    lifespans: Sequence[Any] = (),
) -> Litestar:
    """The Litestar app of one service; `lifespans` run inside the runtime's (after it started).
    `api_prefix` is where its operator endpoints go (`<api_prefix>/operations`, `shared.operations`)."""
    configure_logging(settings.log_level, json=settings.log_json)
    verifier = TokenVerifier(secret=settings.jwt_secret, public_key=settings.jwt_public_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.start()
        # Everything built at start-up lives as long as the process: keep it out of the
        # collector's scans, and collect less often (a request allocates many short-lived
        # objects; frequent full scans showed up as tail latency under load).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        log.info("service_started", service=settings.service_name)
        try:
            yield
        finally:
            await runtime.stop()
            log.info("service_stopped", service=settings.service_name)

    app = Litestar(
        route_handlers=[health_live, health_ready, metrics, *route_handlers, operations_controller(api_prefix)],
        dependencies={
            "runtime": Provide(lambda: runtime, sync_to_thread=False),
            **{name: Provide(_constant(value), sync_to_thread=False) for name, value in (dependencies or {}).items()},
        },
        middleware=[
            edge_middleware(settings.service_name, verifier,
                            SharedLimiter(settings.rate_limit_per_minute, runtime, runtime.metadata.schema),
                            PUBLIC_PATHS, key_func=rate_limit_key),
        ],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        request_class=ExactJSONRequest,
        plugins=[PlainDecimalSchema()],
        type_decoders=TYPE_DECODERS,
        lifespan=[lifespan, *lifespans],
        type_encoders={Decimal: str},
        openapi_config=openapi_config(title=title, description=description),
        debug=False,
    )
    app.state.runtime = runtime
    app.state.verifier = verifier
    return app


def _constant(value: Any):
    return lambda: value


async def _stop_all(consumers: Sequence[EventConsumer]) -> None:
    await asyncio.gather(*(consumer.stop() for consumer in consumers))


def serve(factory: str, settings: BaseSettings) -> None:
    """Run a service app under granian with `WEB_CONCURRENCY` worker processes on one port. What
    must happen once does, whatever the count: jobs take an advisory lock per run
    (`shared.scheduler`), one relay leads (`shared.outbox`), consumers share durable consumers."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        factory,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        factory=True,
        log_access=False,
        workers=settings.web_concurrency,
        # uvloop: the asyncio loop's Python-level socket writes were a fifth of the router's CPU
        # (py-spy under route-and-pay; tests/load/README.md).
        loop=Loops.uvloop,
    ).serve()
