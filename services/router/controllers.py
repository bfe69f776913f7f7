"""HTTP edge of the router: parse, authorise, hand to the use case, return its struct."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter, SkipValidation
from litestar.types import Scope

from services.router.usecases import RouterUseCases
from services.router.wire import (
    CircuitsOut,
    ConfigOut,
    ConfigPage,
    ConfigUpdate,
    MyOptions,
    ProcessIn,
    ProcessOut,
    RefundIn,
    RefundOut,
    RouteIn,
    RouteOut,
    TransactionOut,
    TransactionPage,
)
from shared.auth import MAX_USER_ID, Principal
from shared.docs import IdempotentOperation
from shared.edge import fast_path, roles
from shared.idempotency import HEADER_ASGI, ClaimTaken, run_deferred_first, run_idempotent
from shared.observability import header_value
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, time_filter
from shared.requests import Id, decode_body, optional_body

Router = SkipValidation[RouterUseCases]
Caller = Request[Principal, str, object]
barber_only = roles("barber")
admin_only = roles("admin")
any_caller = roles("barber", "admin", "service")
TransactionStatus = Literal["pending", "completed", "failed", "canceled", "refunded", "partially_refunded"]


# The hot routes' plain cases, served by the edge layer off Litestar's request machinery
# (`shared.edge`): the same decoding, use case and answer as the handlers below, which serve every
# case these decline (None): a body that does not decode, and for /route an Idempotency-Key, for
# /process a key someone holds already (nothing is written before that is known).
_encoder = msgspec.json.Encoder()
_BODY_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)  # Litestar's answer names them


async def route_fast(scope: Scope, body: bytes) -> bytes | None:
    if header_value(scope, HEADER_ASGI, limit=None) is not None:
        return None
    try:
        data = decode_body(body, RouteIn)
    except _BODY_ERRORS:
        return None
    router: RouterUseCases = scope["app"].state.router
    return _encoder.encode(await router.routing.route_payment(scope["user"], data, None))


async def process_fast(scope: Scope, body: bytes) -> bytes | None:
    try:
        data = decode_body(body, ProcessIn)
    except _BODY_ERRORS:
        return None
    router: RouterUseCases = scope["app"].state.router
    try:
        paid = await run_deferred_first(router.idempotency, scope, data,
                                        lambda claim: router.payments.process_payment(scope["user"], data, claim))
    except ClaimTaken:  # declined only here, so no answer of the action's can read as a decline
        return None
    return _encoder.encode(paid)


class HybridPaymentsController(Controller):
    path = "/api/v1/hybrid-payments"
    tags = ["hybrid-payments"]

    @get("/my-options", opt=barber_only)
    async def my_options(self, request: Caller, router: Router) -> MyOptions:
        return await router.configs.my_options(request.user.user_id)

    @get("/config", opt=barber_only)
    async def own_config(self, request: Caller, router: Router) -> ConfigOut:
        return await router.configs.get_config(request.user.user_id)

    @put("/config", opt=barber_only)
    async def update_own_config(self, request: Caller, data: JSONBody[ConfigUpdate], router: Router) -> ConfigOut:
        return await router.configs.update_config(request.user, request.user.user_id, data, None)

    @get("/configs", opt=admin_only)
    async def list_configs(
        self,
        router: Router,
        payment_mode: FromQuery[Literal["centralized", "decentralized", "hybrid"] | None] = None,
        processor: FromQuery[Literal["stripe", "square", "paypal"] | None] = None,
        fallback_enabled: FromQuery[bool | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> ConfigPage:
        """Barbers' configs, newest first, filtered by mode, preferred processor and fallback; with
        the kill switch's state. Each change is in `/operations/audit?subject=barber:<id>`."""
        return await router.configs.list_configs(payment_mode=payment_mode, processor=processor,
                                                 fallback_enabled=fallback_enabled, cursor=cursor, limit=limit)

    @get("/circuits", opt=admin_only)
    async def circuits(self, router: Router) -> CircuitsOut:
        """The circuit breakers of the router process that answered (each replica keeps its own)."""
        return router.configs.circuit_states()

    @get("/config/{barber_id:int}", opt=admin_only)
    async def barber_config(self, barber_id: Id, router: Router) -> ConfigOut:
        return await router.configs.get_config(barber_id)

    @put("/config/{barber_id:int}", opt=admin_only)
    async def update_barber_config(
        self, request: Caller, barber_id: Id, data: JSONBody[ConfigUpdate], router: Router
    ) -> ConfigOut:
        return await router.configs.update_config(request.user, barber_id, data, None)

    @post("/route", opt={**any_caller, **fast_path(route_fast)}, status_code=200,
          operation_class=IdempotentOperation)
    async def route(self, request: Caller, data: JSONBody[RouteIn], router: Router) -> RouteOut:
        return await run_idempotent(
            router.idempotency, request, data, lambda claim: router.routing.route_payment(request.user, data, claim)
        )

    @get("/routes/{route_id:uuid}", opt=any_caller)
    async def get_route(self, request: Caller, route_id: FromPath[uuid.UUID], router: Router) -> RouteOut:
        return await router.routing.get_route(request.user, route_id)

    @post("/process", opt={**any_caller, **fast_path(process_fast)}, status_code=200,
          operation_class=IdempotentOperation)
    async def process(self, request: Caller, data: JSONBody[ProcessIn], router: Router) -> ProcessOut:
        return await run_idempotent(
            router.idempotency, request, data, lambda claim: router.payments.process_payment(request.user, data, claim),
            deferred=True,  # route-and-pay claims the key in its first statement (PaymentService._hold)
        )

    @get("/transactions/{transaction_id:uuid}", opt=any_caller)
    async def get_transaction(self, request: Caller, transaction_id: FromPath[uuid.UUID],
                              router: Router) -> TransactionOut:
        return await router.transactions.get_transaction(request.user, transaction_id)

    @get("/transactions", opt=admin_only)
    async def list_transactions(
        self,
        router: Router,
        barber_id: Annotated[int | None, QueryParameter(ge=1, le=MAX_USER_ID)] = None,
        status: FromQuery[TransactionStatus | None] = None,
        payment_type: FromQuery[Literal["centralized", "external"] | None] = None,
        since: Annotated[str | None, QueryParameter(name="from")] = None,
        until: Annotated[str | None, QueryParameter(name="to")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> TransactionPage:
        """Platform (centralized) payments, newest first; `from`/`to` (ISO 8601 with a zone, or a
        date) bound `created_at`, `to` exclusive."""
        return await router.transactions.list_transactions(
            barber_id=barber_id, status=status, payment_type=payment_type, since=time_filter("from", since),
            until=time_filter("to", until), cursor=cursor, limit=limit,
        )

    @post("/transactions/{transaction_id:uuid}/refund", opt=any_caller, status_code=200,
          operation_class=IdempotentOperation)
    async def refund(self, request: Caller, transaction_id: FromPath[uuid.UUID],
                     router: Router) -> Response[RefundOut]:
        """Full refund without a body (or `{}`), partial with `{"amount": ...}`. 200 when the
        processor refunded it, 202 while the processor reports it pending."""
        body = await optional_body(request, RefundIn)
        return await run_idempotent(
            router.idempotency, request, body,
            lambda claim: router.refunds.refund_payment(request.user, transaction_id, body, claim),
        )

