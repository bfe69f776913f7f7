"""The console's pages: each handler asks the services (`api.ServiceApi`, with the viewer's token),
shapes what they said (`views`) and renders a template. Forms post back here with a CSRF token;
an action the service refuses re-renders the page with the service's own message and status.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath, URLEncodedBody
from litestar.response import Redirect, Stream, Template
from litestar.status_codes import HTTP_303_SEE_OTHER

from services.console import views
from services.console.api import SERVICES, ApiError, ServiceApi, new_idempotency_key
from services.console.session import (
    PATH,
    Viewer,
    WrongRole,
    cleared_cookie,
    login_url,
    safe_next,
    session_cookie,
    verify,
    viewer_of,
)

MODES = ("centralized", "decentralized", "hybrid")
PROCESSORS = ("stripe", "square", "paypal")
# What a sandbox connection asks for, per processor (the credentials the simulators accept).
CONNECT_FIELDS = {
    "stripe": (("secret_key", "Secret key", "sk_test_…"),),
    "square": (("access_token", "Access token", "EAAA…"), ("location_id", "Location id", "L…")),
    "paypal": (("client_id", "Client id", "A…"), ("client_secret", "Client secret", "E…")),
}
SANDBOX_METHODS = {"stripe": "pm_card_visa", "square": "cnon:card-nonce-ok", "paypal": "paypal-approved"}
PAYMENT_FILTERS = ("barber_id", "status", "processor", "from", "to")


def _api(state: State) -> ServiceApi:
    return state.api


def _viewer(request: Request) -> Viewer:
    return viewer_of(request, request.app.state.verifier)


def _operator(request: Request) -> Viewer:
    viewer = _viewer(request)
    if not viewer.is_admin:
        raise WrongRole("this page is for operators (admin tokens)")
    return viewer


def _barber(request: Request) -> Viewer:
    viewer = _viewer(request)
    if viewer.barber_id is None:
        raise WrongRole("this page is for barbers (barber tokens)")
    return viewer


def page(name: str, viewer: Viewer | None, status_code: int = 200, **context: Any) -> Template:
    return Template(template_name=name, status_code=status_code, context={"viewer": viewer, "v": views, **context})


def see_other(path: str, **notice: str) -> Redirect:
    query = urlencode({k: v for k, v in notice.items() if v})
    return Redirect(path + (f"?{query}" if query else ""), status_code=HTTP_303_SEE_OTHER)


async def _gather(*calls) -> list[Any]:
    """Several API calls at once; a failed one is its ApiError in the result, not a failed page."""
    return list(await asyncio.gather(*calls, return_exceptions=True))


def show_in_place(exc: ApiError, *, forbidden: bool = False, unavailable: bool = False) -> None:
    """Re-raise what the page cannot show in place (the error page, or sign-in for a 401): a
    service failure (5xx, unless `unavailable` may be shown, e.g. NATS away for a replay) or a
    refusal of the caller (403, unless `forbidden` is the service's answer to this form, e.g. a
    barber changing its commission). Any other 4xx is the service's message for the form."""
    if exc.status == 401 or (exc.status == 403 and not forbidden):
        raise exc
    if exc.status >= 500 and not (unavailable and exc.status == 503):
        raise exc


def _ok(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


class SignInController(Controller):
    path = PATH

    @get("/login", name="login")
    async def login_form(self, request: Request) -> Template:
        return page("login.html", None, next_path=safe_next(request.query_params.get("next")),
                    error=request.query_params.get("error"))

    @post("/login")
    async def login(self, request: Request, data: URLEncodedBody[dict[str, str]]) -> Response:
        token, next_path = data.get("token", ""), safe_next(data.get("next"))
        try:
            verify(request.app.state.verifier, token)
        except ValueError as exc:
            return page("login.html", None, status_code=401, next_path=next_path, error=str(exc))
        response = see_other(next_path)
        response.set_cookie(session_cookie(token, secure=request.app.state.settings.console_cookie_secure))
        return response

    @post("/logout")
    async def logout(self, request: Request) -> Response:
        response = see_other(login_url())
        response.set_cookie(cleared_cookie(secure=request.app.state.settings.console_cookie_secure))
        return response


class ConsoleController(Controller):
    path = PATH

    @get("/", name="home")
    async def home(self, request: Request, state: State) -> Response:
        viewer = _viewer(request)
        if not viewer.is_admin:
            return see_other(f"{PATH}/me")
        statuses = await _gather(*(_api(state).call(viewer.token, "GET", s, "/operations/status") for s in SERVICES))
        by_service = {s: (None if isinstance(r, BaseException) else r) for s, r in zip(SERVICES, statuses, strict=True)}
        errors = {s: r.detail for s, r in zip(SERVICES, statuses, strict=True) if isinstance(r, ApiError)}
        for result in statuses:
            if isinstance(result, BaseException) and not isinstance(result, ApiError):
                raise result
        return page("overview.html", viewer, statuses=by_service, errors=errors,
                    healthy=views.overall_health(by_service))

    # ---- barbers (operators) -------------------------------------------------------------------

    @get("/barbers")
    async def barbers(self, request: Request, state: State) -> Template:
        viewer = _operator(request)
        filters = views.clean_filters(request.query_params, ("payment_mode", "processor", "fallback_enabled"))
        cursor = request.query_params.get("cursor")
        try:
            listed = await _api(state).call(viewer.token, "GET", "router", "/configs",
                                            params={**filters, "cursor": cursor, "limit": 50})
        except ApiError as exc:
            show_in_place(exc)
            return page("barbers.html", viewer, status_code=exc.status, filters=filters, listed=None, error=exc.detail)
        return page("barbers.html", viewer, filters=filters, listed=listed, error=None,
                    next_query=urlencode({**filters, "cursor": listed["next_cursor"]}) if listed["next_cursor"] else None)

    @get("/barbers/{barber_id:int}")
    async def barber(self, request: Request, state: State, barber_id: FromPath[int]) -> Template:
        return await self._barber_page(request, state, barber_id)

    async def _barber_page(self, request: Request, state: State, barber_id: int, *, error: str | None = None,
                           status_code: int = 200) -> Template:
        viewer = _operator(request)
        api = _api(state)
        config, trail, connections, balance = await _gather(
            api.call(viewer.token, "GET", "router", f"/config/{barber_id}"),
            api.call(viewer.token, "GET", "router", "/operations/audit",
                     params={"subject": f"barber:{barber_id}", "limit": 50}),
            api.call(viewer.token, "GET", "external", "/connections", params={"barber_id": barber_id, "limit": 100}),
            api.call(viewer.token, "GET", "collections", f"/balance/{barber_id}"),
        )
        return page("barber.html", viewer, status_code=status_code, barber_id=barber_id, config=_ok(config),
                    trail=_ok(trail)["items"], connections=None if isinstance(connections, ApiError) else connections,
                    balance=None if isinstance(balance, ApiError) else balance, error=error,
                    notice=request.query_params.get("notice"), modes=MODES, processors=PROCESSORS)

    @post("/barbers/{barber_id:int}/mode")
    async def switch_mode(self, request: Request, state: State, barber_id: FromPath[int],
                          data: URLEncodedBody[dict[str, str]]) -> Response:
        viewer = _operator(request)
        change: dict[str, Any] = {"payment_mode": data.get("payment_mode", ""),
                                  "fallback_enabled": data.get("fallback_enabled") == "on"}
        if data.get("preferred_processor"):
            change["preferred_processor"] = data["preferred_processor"]
        if data.get("expected_version", "").isdigit():
            change["expected_version"] = int(data["expected_version"])
        try:
            saved = await _api(state).call(viewer.token, "PUT", "router", f"/config/{barber_id}", body=change)
        except ApiError as exc:
            show_in_place(exc)
            return await self._barber_page(request, state, barber_id, error=exc.detail, status_code=exc.status)
        return see_other(f"{PATH}/barbers/{barber_id}",
                         notice=f"barber {barber_id} is now {saved['payment_mode']} (version {saved['version']})")

    @post("/barbers/{barber_id:int}/rollback")
    async def rollback(self, request: Request, state: State, barber_id: FromPath[int]) -> Response:
        """Back to centralized with fallback on, as `make rollback BARBER=<id>` does."""
        viewer = _operator(request)
        saved = await _api(state).call(viewer.token, "PUT", "router", f"/config/{barber_id}",
                                       body={"payment_mode": "centralized", "fallback_enabled": True})
        return see_other(f"{PATH}/barbers/{barber_id}",
                         notice=f"barber {barber_id} rolled back to centralized (version {saved['version']})")

    # ---- payments (operators) ------------------------------------------------------------------

    @get("/payments")
    async def payments(self, request: Request, state: State) -> Template:
        viewer = _operator(request)
        kind = _payment_type(request.query_params.get("type"))
        filters = views.clean_filters(request.query_params, PAYMENT_FILTERS)
        cursor = request.query_params.get("cursor")
        service, params = _payments_source(kind, filters)
        try:
            listed = await _api(state).call(viewer.token, "GET", service, "/transactions",
                                            params={**params, "cursor": cursor, "limit": 50})
        except ApiError as exc:
            show_in_place(exc)
            return page("payments.html", viewer, status_code=exc.status, kind=kind, filters=filters, items=[],
                        error=exc.detail, next_query=None, export_query=None)
        query = {"type": kind, **filters}
        return page("payments.html", viewer, kind=kind, filters=filters, error=None,
                    items=[views.as_payment(i) for i in listed["items"]], columns=views.PAYMENT_COLUMNS,
                    next_query=urlencode({**query, "cursor": listed["next_cursor"]}) if listed["next_cursor"] else None,
                    export_query=urlencode(query))

    @get("/payments.csv")
    async def payments_csv(self, request: Request, state: State) -> Response:
        """Every row the filters select (not one page), streamed as the services page through them."""
        viewer = _operator(request)
        kind = _payment_type(request.query_params.get("type"))
        service, params = _payments_source(kind, views.clean_filters(request.query_params, PAYMENT_FILTERS))
        api = _api(state)
        rows = api.pages(viewer.token, service, "/transactions", params)
        try:  # the first page before the answer starts, so a refused filter is a 4xx, not a cut-off file
            first = await anext(rows)
        except StopAsyncIteration:
            first = None

        async def lines() -> AsyncIterator[str]:
            yield views.csv_header()
            if first is not None:
                yield views.csv_line(first)
                async for item in rows:
                    yield views.csv_line(item)

        return Stream(lines(), media_type="text/csv; charset=utf-8",
                      headers={"Content-Disposition": f'attachment; filename="payments-{kind}.csv"'})

    @get("/payments/{kind:str}/{transaction_id:uuid}")
    async def payment(self, request: Request, state: State, kind: FromPath[str],
                      transaction_id: FromPath[uuid.UUID]) -> Template:
        viewer = _operator(request)
        api = _api(state)
        service = "router" if _payment_type(kind) == "centralized" else "external"
        transaction = views.as_payment(await api.call(viewer.token, "GET", service, f"/transactions/{transaction_id}"))
        route = None
        if transaction.get("route_id"):
            found = await _gather(api.call(viewer.token, "GET", "router", f"/routes/{transaction['route_id']}"))
            route = None if isinstance(found[0], ApiError) else found[0]
        return page("payment.html", viewer, t=transaction, route=route, timeline=views.timeline(transaction, route))

    # ---- connections, reconciliation and webhooks (operators) ---------------------------------

    @get("/connections")
    async def connections(self, request: Request, state: State) -> Template:
        viewer = _operator(request)
        filters = views.clean_filters(request.query_params, ("barber_id",))
        api = _api(state)
        listed, runs, circuits = await _gather(
            api.call(viewer.token, "GET", "external", "/connections",
                     params={**filters, "cursor": request.query_params.get("cursor"), "limit": 100}),
            api.call(viewer.token, "GET", "external", "/reconciliation-runs", params={"limit": 20}),
            api.call(viewer.token, "GET", "router", "/circuits"),
        )
        if isinstance(listed, ApiError) and listed.status < 500 and listed.status not in (401, 403):
            return page("connections.html", viewer, status_code=listed.status, filters=filters, listed=None,
                        runs=_ok(runs)["items"], error=listed.detail, notice=None, next_query=None, circuits=None)
        listed = _ok(listed)
        circuits = None if isinstance(circuits, ApiError) else circuits
        return page("connections.html", viewer, filters=filters, listed=listed, runs=_ok(runs)["items"], error=None,
                    circuits=circuits, circuit_of=views.circuit_states(circuits),
                    notice=request.query_params.get("notice"),
                    next_query=urlencode({**filters, "cursor": listed["next_cursor"]}) if listed["next_cursor"] else None)

    @post("/connections/reconcile")
    async def reconcile(self, request: Request, state: State, data: URLEncodedBody[dict[str, str]]) -> Response:
        viewer = _operator(request)
        body: dict[str, Any] = {}
        if data.get("connection_id", "").strip():
            body["connection_id"] = data["connection_id"].strip()
        try:
            report = await _api(state).call(viewer.token, "POST", "external", "/reconcile", body=body)
        except ApiError as exc:
            show_in_place(exc)
            return see_other(f"{PATH}/connections", notice=f"reconciliation refused: {exc.detail}")
        return see_other(f"{PATH}/connections",
                         notice=f"reconciled {report['connections']} connection(s): {report['matched']} matched, "
                                f"{report['mismatch']} mismatched, {report['missing_local']} missing here")

    @get("/webhooks")
    async def webhooks(self, request: Request, state: State) -> Template:
        viewer = _operator(request)
        filters = views.clean_filters(request.query_params, ("connection_id", "outcome"))
        try:
            listed = await _api(state).call(viewer.token, "GET", "external", "/webhook-events",
                                            params={**filters, "cursor": request.query_params.get("cursor"),
                                                    "limit": 100})
        except ApiError as exc:
            show_in_place(exc)
            return page("webhooks.html", viewer, status_code=exc.status, filters=filters, listed=None,
                        error=exc.detail, next_query=None)
        return page("webhooks.html", viewer, filters=filters, listed=listed, error=None,
                    next_query=urlencode({**filters, "cursor": listed["next_cursor"]}) if listed["next_cursor"] else None)

    # ---- collections, dead letters, audit (operators) ------------------------------------------

    @get("/collections")
    async def collections(self, request: Request, state: State) -> Template:
        return await self._collections_page(request, state)

    async def _collections_page(self, request: Request, state: State, *, error: str | None = None,
                                status_code: int = 200) -> Template:
        viewer = _operator(request)
        filters = views.clean_filters(request.query_params, ("status", "barber_id"))
        cursor = request.query_params.get("cursor")
        try:
            listed = await _api(state).call(viewer.token, "GET", "collections", "",
                                            params={**filters, "cursor": cursor, "limit": 50})
        except ApiError as exc:
            show_in_place(exc)
            listed, error, status_code = {"items": [], "next_cursor": None}, exc.detail, exc.status
        return page("collections.html", viewer, status_code=status_code, filters=filters, listed=listed,
                    error=error, notice=request.query_params.get("notice"), run_key=new_idempotency_key(),
                    next_query=urlencode({**filters, "cursor": listed["next_cursor"]}) if listed["next_cursor"] else None)

    @post("/collections/run")
    async def run_collections(self, request: Request, state: State, data: URLEncodedBody[dict[str, str]]) -> Response:
        viewer = _operator(request)
        body: dict[str, Any] = {"force": data.get("force") == "on"}
        if data.get("barber_id", "").strip():
            body["barber_id"] = data["barber_id"].strip()
        try:
            out = await _api(state).call(viewer.token, "POST", "collections", "/run", body=body,
                                         idempotency_key=data.get("idempotency_key") or None)
        except ApiError as exc:
            show_in_place(exc)
            return await self._collections_page(request, state, error=exc.detail, status_code=exc.status)
        return see_other(f"{PATH}/collections",
                         notice=f"run done: {len(out['created'])} collection(s) made from "
                                f"{out['accruals_billed']} accrual(s)")

    @post("/collections/{collection_id:uuid}/retry")
    async def retry_collection(self, request: Request, state: State, collection_id: FromPath[uuid.UUID]) -> Response:
        viewer = _operator(request)
        out = await _api(state).call(viewer.token, "POST", "collections", f"/{collection_id}/retry")
        return see_other(f"{PATH}/collections", notice=f"collection {out['id']} asked to try again")

    @get("/dead-letters")
    async def dead_letters(self, request: Request, state: State) -> Template:
        viewer = _operator(request)
        wanted = request.query_params.get("state") or "waiting"
        params = {} if wanted == "all" else {"state": wanted}
        found = await _gather(*(_api(state).call(viewer.token, "GET", s, "/operations/dead-letters",
                                                 params={**params, "limit": 200}) for s in SERVICES))
        letters = sorted(((s, letter) for s, r in zip(SERVICES, found, strict=True) for letter in _ok(r)["items"]),
                         key=lambda pair: pair[1]["parked_at"], reverse=True)
        return page("dead_letters.html", viewer, letters=letters, wanted=wanted,
                    notice=request.query_params.get("notice"), error=request.query_params.get("error"))

    @post("/dead-letters/{service:str}/{letter_id:int}/replay")
    async def replay(self, request: Request, state: State, service: FromPath[str],
                     letter_id: FromPath[int]) -> Response:
        viewer = _operator(request)
        try:
            await _api(state).call(viewer.token, "POST", _service(service),
                                   f"/operations/dead-letters/{letter_id}/replay")
        except ApiError as exc:
            show_in_place(exc, unavailable=True)
            return see_other(f"{PATH}/dead-letters", error=f"{service} #{letter_id}: {exc.detail}")
        return see_other(f"{PATH}/dead-letters", notice=f"{service} dead letter #{letter_id} replayed")

    @post("/dead-letters/{service:str}/{letter_id:int}/discard")
    async def discard(self, request: Request, state: State, service: FromPath[str], letter_id: FromPath[int],
                      data: URLEncodedBody[dict[str, str]]) -> Response:
        viewer = _operator(request)
        try:
            await _api(state).call(viewer.token, "POST", _service(service),
                                   f"/operations/dead-letters/{letter_id}/discard", body={"note": data.get("note", "")})
        except ApiError as exc:
            show_in_place(exc)
            return see_other(f"{PATH}/dead-letters", error=f"{service} #{letter_id}: {exc.detail}")
        return see_other(f"{PATH}/dead-letters", notice=f"{service} dead letter #{letter_id} discarded")

    @get("/audit")
    async def audit(self, request: Request, state: State) -> Template:
        viewer = _operator(request)
        subject = request.query_params.get("subject") or None
        found = await _gather(*(_api(state).call(viewer.token, "GET", s, "/operations/audit",
                                                 params={"subject": subject, "limit": 200}) for s in SERVICES))
        entries = sorted(((s, e) for s, r in zip(SERVICES, found, strict=True) for e in _ok(r)["items"]),
                         key=lambda pair: pair[1]["at"], reverse=True)
        return page("audit.html", viewer, entries=entries, subject=subject or "")

    # ---- the barber's own pages ----------------------------------------------------------------

    @get("/me")
    async def my_dashboard(self, request: Request, state: State) -> Template:
        viewer = _barber(request)
        api = _api(state)
        params = views.clean_filters(request.query_params, ("from", "to"))
        dashboard, balance = await _gather(
            api.call(viewer.token, "GET", "analytics", "/dashboard", params=params),
            api.call(viewer.token, "GET", "collections", "/my-balance"),
        )
        if isinstance(dashboard, ApiError) and dashboard.status < 500 and dashboard.status not in (401, 403):
            return page("me.html", viewer, status_code=dashboard.status, dashboard=None, charts=None,
                        balance=None, filters=params, error=dashboard.detail)
        dashboard = _ok(dashboard)
        return page("me.html", viewer, dashboard=dashboard, charts=views.dashboard_charts(dashboard),
                    balance=None if isinstance(balance, ApiError) else balance, filters=params, error=None)

    @get("/me/insights")
    async def my_insights(self, request: Request, state: State) -> Template:
        """The Six Figure panel, loaded after the dashboard (htmx): it reads half a year of payments,
        so the page does not wait for it."""
        viewer = _barber(request)
        insights = await _api(state).call(viewer.token, "GET", "analytics", "/six-figure-insights")
        fragment = request.headers.get("HX-Request") == "true"
        return page("insights_panel.html" if fragment else "insights.html", viewer, insights=insights)

    @get("/me/options")
    async def my_options(self, request: Request, state: State) -> Template:
        return await self._options_page(request, state)

    async def _options_page(self, request: Request, state: State, *, error: str | None = None,
                            status_code: int = 200, form: str | None = None) -> Template:
        viewer = _barber(request)
        api = _api(state)
        options, connections = await _gather(
            api.call(viewer.token, "GET", "router", "/my-options"),
            api.call(viewer.token, "GET", "external", "/connections", params={"limit": 100}),
        )
        return page("options.html", viewer, status_code=status_code, options=_ok(options),
                    connections=_ok(connections)["items"], error=error, failed_form=form,
                    notice=request.query_params.get("notice"), processors=PROCESSORS, connect_fields=CONNECT_FIELDS,
                    sandbox=request.app.state.settings.console_sandbox, sandbox_methods=SANDBOX_METHODS,
                    pay_key=new_idempotency_key())

    @post("/me/mode")
    async def change_my_mode(self, request: Request, state: State, data: URLEncodedBody[dict[str, str]]) -> Response:
        viewer = _barber(request)
        change: dict[str, Any] = {"payment_mode": data.get("payment_mode", "")}
        if data.get("preferred_processor"):
            change["preferred_processor"] = data["preferred_processor"]
        try:
            saved = await _api(state).call(viewer.token, "PUT", "router", "/config", body=change)
        except ApiError as exc:
            show_in_place(exc, forbidden=True)
            return await self._options_page(request, state, error=exc.detail, status_code=exc.status, form="mode")
        return see_other(f"{PATH}/me/options", notice=f"you are now {saved['payment_mode']}")

    @post("/me/connections")
    async def connect(self, request: Request, state: State, data: URLEncodedBody[dict[str, str]]) -> Response:
        viewer = _barber(request)
        processor = data.get("processor", "")
        credentials = {name: data.get(name, "") for name, _, _ in CONNECT_FIELDS.get(processor, ())}
        body = {"processor": processor, "account_id": data.get("account_id", ""), "credentials": credentials}
        try:
            made = await _api(state).call(viewer.token, "POST", "external", "/connections", body=body,
                                          idempotency_key=data.get("idempotency_key") or None)
        except ApiError as exc:
            show_in_place(exc, forbidden=True)
            return await self._options_page(request, state, error=exc.detail, status_code=exc.status, form="connect")
        return see_other(f"{PATH}/me/options", notice=f"{made['processor']} connected ({made['status']})")

    @post("/me/pay")
    async def take_payment(self, request: Request, state: State, data: URLEncodedBody[dict[str, str]]) -> Response:
        """A payment the barber takes now (route and pay in one call), e.g. a test card in the sandbox."""
        viewer = _barber(request)
        body: dict[str, Any] = {"payment_method": data.get("payment_method", "").strip(),
                                "amount": data.get("amount", "").strip()}
        appointment = data.get("appointment_id", "").strip()
        body["appointment_id"] = int(appointment) if appointment.isdigit() else appointment
        try:
            paid = await _api(state).call(viewer.token, "POST", "router", "/process", body=body,
                                          idempotency_key=data.get("idempotency_key") or None)
        except ApiError as exc:
            show_in_place(exc, forbidden=True)
            return await self._options_page(request, state, error=exc.detail, status_code=exc.status, form="pay")
        return see_other(f"{PATH}/me/options",
                         notice=f"{views.money(paid['amount'], paid['currency'])} {paid['status']} "
                                f"({paid['payment_type']}, {paid['processor']})")


def _payment_type(value: str | None) -> str:
    return "external" if value == "external" else "centralized"


def _payments_source(kind: str, filters: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Centralized payments are the router's records, external ones the external service's; the
    router's list has no processor filter (it is always the platform's Stripe)."""
    if kind == "external":
        return "external", filters
    return "router", {k: v for k, v in filters.items() if k != "processor"}


def _service(name: str) -> str:
    if name not in SERVICES:
        raise ApiError(404, "not_found", f"no service {name!r}")
    return name
