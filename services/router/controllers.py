"""HTTP edge of the router: parse, authorise, hand to `RouterService`, return its struct."""

from __future__ import annotations

import uuid

import msgspec
from litestar import Controller, Request, get, post, put
from litestar.params import FromPath, JSONBody, SkipValidation

from services.router.service import RouterService
from services.router.wire import (
    ConfigOut,
    ConfigUpdate,
    MyOptions,
    ProcessIn,
    ProcessOut,
    RefundIn,
    RefundOut,
    RouteIn,
    RouteOut,
)
from shared.auth import Principal, require_roles
from shared.errors import ProblemError
from shared.idempotency import run_idempotent

Router = SkipValidation[RouterService]
barber_only = [require_roles("barber")]
admin_only = [require_roles("admin")]
any_caller = [require_roles("barber", "admin", "service")]


class HybridPaymentsController(Controller):
    path = "/api/v1/hybrid-payments"
    tags = ["hybrid-payments"]

    @get("/my-options", guards=barber_only)
    async def my_options(self, request: Request[Principal, str, object], router: Router) -> MyOptions:
        return await router.my_options(request.user.barber_id)

    @get("/config", guards=barber_only)
    async def own_config(self, request: Request[Principal, str, object], router: Router) -> ConfigOut:
        return await router.get_config(request.user.barber_id)

    @put("/config", guards=barber_only)
    async def update_own_config(
        self, request: Request[Principal, str, object], data: JSONBody[ConfigUpdate], router: Router
    ) -> ConfigOut:
        return await router.update_config(request.user, request.user.barber_id, data, None)

    @get("/config/{barber_id:int}", guards=admin_only)
    async def barber_config(self, barber_id: FromPath[int], router: Router) -> ConfigOut:
        return await router.get_config(_barber_id(barber_id))

    @put("/config/{barber_id:int}", guards=admin_only)
    async def update_barber_config(
        self, request: Request[Principal, str, object], barber_id: FromPath[int], data: JSONBody[ConfigUpdate], router: Router
    ) -> ConfigOut:
        return await router.update_config(request.user, _barber_id(barber_id), data, None)

    @post("/route", guards=any_caller, status_code=200)
    async def route(self, request: Request[Principal, str, object], data: JSONBody[RouteIn], router: Router) -> RouteOut:
        return await run_idempotent(
            router.rt.idempotency, request, data, lambda claim: router.route_payment(request.user, data, claim)
        )

    @post("/process", guards=any_caller, status_code=200)
    async def process(
        self, request: Request[Principal, str, object], data: JSONBody[ProcessIn], router: Router
    ) -> ProcessOut:
        return await run_idempotent(
            router.rt.idempotency, request, data, lambda claim: router.process_payment(request.user, data, claim)
        )

    @post("/transactions/{transaction_id:uuid}/refund", guards=any_caller, status_code=200)
    async def refund(
        self, request: Request[Principal, str, object], transaction_id: FromPath[uuid.UUID], router: Router
    ) -> RefundOut:
        body = await _optional_body(request, RefundIn)
        return await run_idempotent(
            router.rt.idempotency, request, body,
            lambda claim: router.refund_payment(request.user, transaction_id, body, claim),
        )


def _barber_id(barber_id: int) -> int:
    if not 1 <= barber_id <= 2**31 - 1:
        raise ProblemError(422, "validation_error", "barber_id: must be a positive 32-bit integer", field="barber_id")
    return barber_id


async def _optional_body(request: Request, struct: type[msgspec.Struct]) -> msgspec.Struct:
    """A body that may be absent (then all defaults), decoded with the usual error shapes."""
    raw = await request.body()
    if not raw.strip():
        return struct()
    try:
        return msgspec.json.decode(raw, type=struct)
    except msgspec.ValidationError as exc:
        raise ProblemError(422, "validation_error", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ProblemError(400, "invalid_json", f"malformed JSON body: {exc}") from None
