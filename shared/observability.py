"""Logs, metrics and request ids: structlog JSON lines carrying a request id, and Prometheus
counters and histograms served at `/metrics`.
"""

from __future__ import annotations

import logging
import sys

import structlog
from litestar.types import Scope
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

REQUEST_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by route template",
    ["service", "method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_PUBLISHED = Counter("outbox_published_total", "Outbox events published to JetStream")
OUTBOX_PUBLISH_ERRORS = Counter("outbox_publish_errors_total", "Outbox publish attempts that failed")
EVENTS_CONSUMED = Counter("events_consumed_total", "Events applied by consumers", ["consumer", "outcome"])
EVENTS_DEAD_LETTERED = Counter(
    "events_dead_lettered_total", "Events parked in dead_letters after failing deterministically", ["consumer"]
)
PROCESSOR_LATENCY = Histogram(
    "processor_request_duration_seconds",
    "Calls to Stripe, Square and PayPal by operation and how they ended (ok, or the error kind)",
    ["processor", "operation", "outcome"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30),
)
EXTERNAL_CHARGES = Counter("external_charges_total", "Charges through barbers' own processors by outcome",
                           ["processor", "outcome"])
WEBHOOKS_RECEIVED = Counter("webhooks_received_total", "Processor webhooks by outcome", ["processor", "outcome"])
# From the external service's tables (one replica's job computes them; every replica reads the same rows).
DOUBLE_CHARGES = Gauge("external_double_charges", "Payments flagged as a double charge and not refunded yet",
                       ["processor"])
UNATTRIBUTED_PAYMENTS = Gauge("external_unattributed_payments",
                              "Payments of accounts several barbers connected, waiting for an operator",
                              ["processor"])
RECONCILIATION_FINDINGS = Counter("reconciliation_findings_total", "Reconciled processor payments by verdict",
                                  ["processor", "verdict"])
ACCRUALS_APPLIED = Counter("commission_accruals_total", "Commission accrual rows written, by kind", ["kind"])
COLLECTION_ATTEMPTS = Counter("collection_attempts_total", "Attempts to collect commission, by outcome", ["outcome"])
COLLECTIONS = Gauge("platform_collections", "Collections by status and currency", ["status", "currency"])
COLLECTIONS_AMOUNT = Gauge("platform_collections_amount", "Amount of collections by status and currency",
                           ["status", "currency"])
# Analytics (from its rollups, over ANALYTICS_METRICS_WINDOW_DAYS; "all" labels sum the others).
PAYMENT_SUCCESS_RATE = Gauge("payment_success_rate", "Completed / (completed + failed) payments",
                             ["payment_type", "processor"])
PAYMENT_VOLUME = Gauge("payment_volume", "Gross volume of completed payments", ["payment_type", "processor",
                                                                                 "currency"])
COMMISSION_COLLECTION_RATE = Gauge("commission_collection_rate",
                                   "Commission collected / commission owed on barbers' own processors, all time",
                                   ["currency"])
PENDING_COLLECTIONS = Gauge("pending_collections", "Collections not collected yet, by status",
                            ["status", "currency"])
PENDING_COLLECTIONS_AMOUNT = Gauge("pending_collections_amount", "Amount of collections not collected yet",
                                   ["status", "currency"])
EVENT_LAG = Histogram("analytics_event_lag_seconds", "From an event's creation to analytics applying it",
                      ["event_type"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60))
OUTBOX_BACKLOG = Gauge("outbox_backlog", "Events committed but not yet published to JetStream", ["service"])
CONSUMER_LAG = Gauge("consumer_lag", "Events in the stream not yet applied by a consumer", ["consumer"])
DEAD_LETTERS_WAITING = Gauge("dead_letters_waiting", "Parked events not replayed yet", ["service"])
JOB_RUNS = Counter("scheduled_job_runs_total", "Scheduled job runs by outcome", ["job_name", "outcome"])

REQUEST_ID_HEADER = "x-request-id"


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Structured logs to stdout; `request_id` and other context vars ride along each line."""
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=level.upper(), force=True)
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    # The Stripe SDK logs every request and response at INFO: two lines per payment, a tenth of
    # the router's CPU under load (py-spy, tests/load/README.md). Our own lines say what happened.
    # httpx (the Square SDK's transport) logs every request at INFO the same way: one line per
    # Square call, on the webhook path and in reconciliation's listing pages.
    for chatty in ("stripe", "httpx"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


def metrics_payload() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


def header_value(scope: Scope, name: bytes, *, limit: int | None = 128) -> str | None:
    """A request header (lower-case `name`) from the ASGI scope, cut to `limit` characters."""
    for key, value in scope["headers"]:
        if key == name:
            text = value.decode("latin-1")
            return text[:limit] if limit else text
    return None
