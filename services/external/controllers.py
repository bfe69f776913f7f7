"""HTTP edge of the external service: parse, authorise, hand to the use case, return its struct."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import Headers
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter, SkipValidation
from litestar.types import Scope

from services.external.usecases import ExternalUseCases
from services.external.wire import (
    AttributeIn,
    ConnectionIn,
    ConnectionOut,
    ConnectionPage,
    ConnectionUpdate,
    ReconcileIn,
    ReconcileReport,
    ReconciliationRunPage,
    TransactionPage,
    UnattributedPage,
    WebhookAck,
    WebhookEventPage,
)
from shared.auth import MAX_USER_ID, Principal
from shared.docs import IdempotentOperation, PUBLIC
from shared.edge import fast_path, roles
from shared.idempotency import run_idempotent
from shared.internal_api import ChargeRequest, ExternalTransactionOut, RefundOutcome, RefundRequest
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, time_filter
from shared.requests import MAX_ID, NO_CONTROL_CHARACTERS, BigId, Id, optional_body

External = SkipValidation[ExternalUseCases]
Caller = Request[Principal, str, object]
people = roles("barber", "admin")
admin_only = roles("admin")
service_only = roles("service")
Processor = Literal["stripe", "square", "paypal"]
TransactionStatus = Literal["pending", "completed", "failed", "canceled", "refunded", "partially_refunded"]
BarberFilter = Annotated[int | None, QueryParameter(ge=1, le=MAX_USER_ID)]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, QueryParameter(max_length=200)]

_PROCESSORS = frozenset(Processor.__args__)
_encoder = msgspec.json.Encoder()


async def webhook_fast(scope: Scope, body: bytes) -> bytes | None:
    """`POST /api/v1/webhooks/{processor}/{connection_id}` served by the edge layer off Litestar's
    request machinery (`shared.edge`): the same use case and answer as `WebhooksController.receive`,
    which serves what this declines (None): a processor or connection id its path parameters refuse
    (Litestar's 4xx names them) and a body past the edge's limit. A webhook is one small body and one
    struct back: about 4 % less of the worker's CPU per notice, measured (services/external/README.md)."""
    params = scope.get("path_params") or {}
    processor, connection_id = params.get("processor"), params.get("connection_id")
    if processor not in _PROCESSORS or type(connection_id) is not int or not 1 <= connection_id <= MAX_ID:
        return None
    return _encoder.encode(await _receive(scope["app"].state.external, processor, connection_id, body,
                                          Headers.from_scope(scope)))


async def _receive(external: ExternalUseCases, processor: str, connection_id: int, body: bytes,
                   headers: Headers) -> WebhookAck:
    """One notice, whichever way it came in (the fast path or the route)."""
    return await external.webhooks.receive(processor, connection_id, body, headers,
                                           url=external.connections.webhook_url(processor, connection_id))


class ExternalPaymentsController(Controller):
    path = "/api/v1/external-payments"
    tags = ["external-payments"]

    @post("/connections", opt=people, status_code=201, operation_class=IdempotentOperation)
    async def create_connection(self, request: Caller, data: JSONBody[ConnectionIn], external: External
                                ) -> ConnectionOut:
        """Connect a barber's own processor account. Answers 201 with the connection `active` when the
        processor accepted the credentials, `error` (see `status_reason`) when it refused them."""
        return await run_idempotent(external.idempotency, request, data,
                                    lambda claim: external.connections.create(request.user, data, claim),
                                    status_code=201)

    @get("/connections", opt=people)
    async def list_connections(self, request: Caller, external: External, barber_id: BarberFilter = None,
                               limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> ConnectionPage:
        return await external.connections.list(request.user, barber_id=barber_id, cursor=cursor, limit=limit)

    @get("/connections/{connection_id:int}", opt=people)
    async def get_connection(self, request: Caller, connection_id: Id, external: External) -> ConnectionOut:
        return await external.connections.get(request.user, connection_id)

    @patch("/connections/{connection_id:int}", opt=people)
    async def update_connection(self, request: Caller, connection_id: Id,
                                data: JSONBody[ConnectionUpdate], external: External) -> ConnectionOut:
        """Change a connection; new `credentials` are checked with the processor again."""
        return await external.connections.update(request.user, connection_id, data)

    @delete("/connections/{connection_id:int}", opt=people, status_code=200)
    async def disconnect(self, request: Caller, connection_id: Id, external: External) -> ConnectionOut:
        """Disconnect: the connection is kept (its transactions refer to it) with status `disconnected`."""
        return await external.connections.disconnect(request.user, connection_id)

    @get("/transactions", opt=people)
    async def list_transactions(
        self, request: Caller, external: External, barber_id: BarberFilter = None,
        status: FromQuery[TransactionStatus | None] = None, processor: FromQuery[Processor | None] = None,
        external_transaction_id: Annotated[str | None, QueryParameter(max_length=255,
                                                                      pattern=NO_CONTROL_CHARACTERS)] = None,
        since: Annotated[str | None, QueryParameter(name="from")] = None,
        until: Annotated[str | None, QueryParameter(name="to")] = None,
        limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None,
    ) -> TransactionPage:
        """External transactions, newest first (a barber sees its own); `from`/`to` bound `created_at`."""
        return await external.transactions.list(
            request.user, barber_id=barber_id, status=status, processor=processor,
            external_transaction_id=external_transaction_id, since=time_filter("from", since),
            until=time_filter("to", until), cursor=cursor, limit=limit)

    @get("/transactions/{transaction_id:uuid}", opt=people)
    async def get_transaction(self, request: Caller, transaction_id: FromPath[uuid.UUID],
                              external: External) -> ExternalTransactionOut:
        return await external.transactions.get(request.user, transaction_id)

    @post("/reconcile", opt=admin_only, status_code=200)
    async def reconcile(self, request: Caller, external: External) -> ReconcileReport:
        """Compare each active connection's processor-side payments in a window with our records."""
        body = await optional_body(request, ReconcileIn)
        return await external.reconciliation.run(body, actor=request.user)

    @get("/reconciliation-runs", opt=admin_only)
    async def reconciliation_runs(self, external: External,
                                  connection_id: Annotated[int | None, QueryParameter(ge=1, le=2**31 - 1)] = None,
                                  limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> ReconciliationRunPage:
        """Every reconciliation run (scheduled or `POST /reconcile`), newest first, with its window, counts
        and differences; `connection_id` keeps the runs that covered that connection."""
        return await external.reconciliation.history(connection_id=connection_id, cursor=cursor, limit=limit)

    @get("/webhook-events", opt=admin_only)
    async def webhook_events(self, external: External,
                             connection_id: Annotated[int | None, QueryParameter(ge=1, le=2**31 - 1)] = None,
                             outcome: FromQuery[Literal["applied", "ignored", "not_found", "unattributed"] | None] = None,
                             limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> WebhookEventPage:
        """Processor notices received (signature verified), newest first, with what came of each."""
        return await external.webhooks.recent(connection_id=connection_id, outcome=outcome, cursor=cursor,
                                              limit=limit)

    @get("/unattributed", opt=admin_only)
    async def list_unattributed(self, external: External, waiting: FromQuery[bool] = True, limit: Limit = DEFAULT_LIMIT,
                                cursor: Cursor = None) -> UnattributedPage:
        """Payments nobody started, on a processor account several barbers connected (newest first;
        `waiting=false` includes the ones already attributed)."""
        return await external.attribution.list(waiting_only=waiting, cursor=cursor, limit=limit)

    @post("/unattributed/{unattributed_id:int}/attribute", opt=admin_only, status_code=200)
    async def attribute(self, request: Caller, unattributed_id: BigId, data: JSONBody[AttributeIn],
                        external: External) -> ExternalTransactionOut:
        """Record such a payment as one connection's (as the processor says it is now)."""
        return await external.attribution.attribute(unattributed_id, data.connection_id, request.user)


class WebhooksController(Controller):
    path = "/api/v1/webhooks"
    tags = ["webhooks"]

    # Processors send a few kilobytes; anything much larger is not a webhook (413).
    @post("/{processor:str}/{connection_id:int}", status_code=200, request_max_body_size=256 * 1024,
          security=PUBLIC, opt=fast_path(webhook_fast))
    async def receive(self, request: Request, processor: FromPath[Processor], connection_id: Id,
                      external: External) -> WebhookAck:
        """A processor's signed notification about this connection (no token: the signature is the auth)."""
        return await _receive(external, processor, connection_id, await request.body(), request.headers)


class InternalController(Controller):
    """Service-to-service calls (a `service` token): the router's external charges and refunds."""

    path = "/internal/v1"
    tags = ["internal"]

    @post("/charges", opt=service_only, status_code=200)
    async def charge(self, request: Caller, data: JSONBody[ChargeRequest], external: External
                     ) -> ExternalTransactionOut:
        return await external.charges.charge(data)

    @post("/refunds", opt=service_only, status_code=200)
    async def refund(self, data: JSONBody[RefundRequest], external: External) -> Response[RefundOutcome]:
        return await external.refunds.refund(data)

    @get("/transactions/{transaction_id:uuid}", opt=service_only)
    async def transaction(self, request: Caller, transaction_id: FromPath[uuid.UUID],
                          external: External) -> ExternalTransactionOut:
        return await external.transactions.get(request.user, transaction_id)
