"""HTTP edge of the collections service: parse, authorise, hand to the use case, return its struct."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from litestar import Controller, Request, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter, SkipValidation

from services.collections.usecases import CollectionsUseCases
from services.collections.wire import (
    BalanceOut,
    CollectionOut,
    CollectionPage,
    PaymentMethodIn,
    PaymentMethodOut,
    RunIn,
    RunOut,
)
from shared.auth import MAX_USER_ID, Principal
from shared.docs import IdempotentOperation
from shared.edge import roles
from shared.idempotency import run_idempotent
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, time_filter
from shared.requests import Id, optional_body

Collections = SkipValidation[CollectionsUseCases]
Caller = Request[Principal, str, object]
barber_only = roles("barber")
admin_only = roles("admin")
Status = Literal["pending", "collected", "failed", "overdue"]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, QueryParameter(max_length=200)]
Currency = Annotated[str, QueryParameter(min_length=3, max_length=3)]


class PlatformCollectionsController(Controller):
    path = "/api/v1/platform-collections"
    tags = ["platform-collections"]

    @get("/my-collections", opt=barber_only)
    async def my_collections(self, request: Caller, collections: Collections, status: FromQuery[Status | None] = None,
                             limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> CollectionPage:
        return await collections.lookups.list(barber_id=request.user.user_id, status=status, currency=None, since=None,
                                      until=None, cursor=cursor, limit=limit)

    @get("/my-balance", opt=barber_only)
    async def my_balance(self, request: Caller, collections: Collections, currency: Currency = "USD") -> BalanceOut:
        """The barber's commission in one currency (`?currency=`, default USD)."""
        return await collections.lookups.balance(request.user.user_id, currency)

    @get("/payment-method", opt=barber_only)
    async def my_payment_method(self, request: Caller, collections: Collections) -> PaymentMethodOut:
        return await collections.lookups.payment_method(request.user.user_id)

    @put("/payment-method", opt=barber_only)
    async def set_my_payment_method(self, request: Caller, data: JSONBody[PaymentMethodIn],
                                    collections: Collections) -> PaymentMethodOut:
        """The saved Stripe payment method the platform charges commission to (off-session)."""
        return await collections.lookups.set_payment_method(request.user.user_id, data)

    @put("/payment-method/{barber_id:int}", opt=admin_only)
    async def set_payment_method(self, request: Caller, barber_id: Id, data: JSONBody[PaymentMethodIn],
                                 collections: Collections) -> PaymentMethodOut:
        return await collections.lookups.set_payment_method(barber_id, data)

    @get("/", opt=admin_only)
    async def list_collections(
        self, collections: Collections, barber_id: Annotated[int | None, QueryParameter(ge=1, le=MAX_USER_ID)] = None,
        status: FromQuery[Status | None] = None,
        currency: Annotated[str | None, QueryParameter(min_length=3, max_length=3)] = None,
        since: Annotated[str | None, QueryParameter(name="from")] = None,
        until: Annotated[str | None, QueryParameter(name="to")] = None,
        limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None,
    ) -> CollectionPage:
        return await collections.lookups.list(barber_id=barber_id, status=status,
                                              currency=currency and currency.upper(),
                                      since=time_filter("from", since), until=time_filter("to", until),
                                      cursor=cursor, limit=limit)

    @get("/balance/{barber_id:int}", opt=admin_only)
    async def barber_balance(self, barber_id: Id, collections: Collections,
                             currency: Currency = "USD") -> BalanceOut:
        return await collections.lookups.balance(barber_id, currency)

    @post("/run", opt=admin_only, status_code=200, operation_class=IdempotentOperation)
    async def run(self, request: Caller, collections: Collections) -> RunOut:
        """Aggregate now: `{"barber_id"?: int, "force"?: bool}` (see the service README). Takes an
        `Idempotency-Key`: a retry is answered what the first run made."""
        body = await optional_body(request, RunIn)
        return await run_idempotent(collections.idempotency, request, body, lambda claim: collections.aggregation.run(
            barber_id=body.barber_id, force=body.force, claim=claim, actor=request.user))

    @post("/{collection_id:uuid}/retry", opt=admin_only, status_code=200,
          operation_class=IdempotentOperation)
    async def retry(self, request: Caller, collection_id: FromPath[uuid.UUID],
                    collections: Collections) -> CollectionOut:
        """Try a failed or overdue collection again now (takes an `Idempotency-Key`)."""
        return await run_idempotent(collections.idempotency, request, None,
                                    lambda claim: collections.collecting.retry(collection_id, claim, request.user))
