"""The HTTP conventions every service gets from `shared.service.build_app`, exercised on a small
test service against real Postgres and NATS: problem details, auth, idempotency, rate limits,
health, metrics, OpenAPI.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import sqlalchemy as sa
from litestar import Request, get, post
from litestar.params import JSONBody
from litestar.testing import AsyncTestClient

from services.router.settings import RouterSettings
from shared.auth import issue_token
from shared.db import PlatformTables, session_factory
from shared.edge import roles
from shared.errors import ProblemError
from shared.idempotency import Claim, IdempotencyStore, fingerprint, run_idempotent
from shared.money import PlainDecimal, amount_field, format_amount
from shared.service import Runtime, ServiceRuntime, build_app
from tests.conftest import JWT_SECRET
from tests.integration.platform_support import metadata, widgets

_flaky_failures: dict[str, int] = {}


class WidgetIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    amount: PlainDecimal
    currency: str = "USD"
    delay: float = 0.0

    def __post_init__(self) -> None:
        self.amount = amount_field("amount", self.amount, self.currency)


class WidgetOut(msgspec.Struct):
    id: int
    name: str
    amount: str


@post("/api/v1/widgets", opt=roles("barber", "admin"))
async def create_widget(request: Request, data: JSONBody[WidgetIn], runtime: Runtime) -> WidgetOut:
    async def action(claim: Claim | None) -> WidgetOut:
        if data.name == "refused":
            raise ProblemError(422, "widget_refused", "this widget is refused")
        if data.name.startswith("busy") and _flaky_failures.get(data.name, 0) < 1:
            _flaky_failures[data.name] = 1  # "in progress elsewhere, retry": a 4xx that is no answer
            raise ProblemError(409, "payment_in_progress", "being paid right now", headers={"Retry-After": "2"})
        if data.name.startswith("flaky") and _flaky_failures.get(data.name, 0) < 1:
            _flaky_failures[data.name] = 1
            raise ProblemError(504, "processor_timeout", "upstream timed out")
        await asyncio.sleep(data.delay)
        async with runtime.uow() as uow:
            widget_id = await uow.session.scalar(
                sa.insert(widgets).values(name=data.name, amount=data.amount).returning(widgets.c.id)
            )
            out = WidgetOut(id=widget_id, name=data.name, amount=format_amount(data.amount))
            # A subject of the stream no service consumes: on `transaction.recorded` these widgets
            # reached the collections and analytics consumers other modules of the same run start,
            # each failing five times over ~30 s of back-off before it was parked.
            uow.emit("transaction.widget_created", msgspec.structs.asdict(out))
            if claim:
                claim.record(uow, 201, out)
            await uow.commit()
        return out

    return await run_idempotent(runtime.idempotency, request, data, action, status_code=201)


@post("/api/v1/admin-only", opt=roles("admin"), status_code=200)
async def admin_only() -> dict[str, bool]:
    return {"ok": True}


@get("/api/v1/no-roles")
async def no_roles() -> dict[str, bool]:
    return {"ok": True}


def make_app(settings: RouterSettings):
    runtime = ServiceRuntime(settings=settings, metadata=metadata)
    return build_app(settings=settings, runtime=runtime, route_handlers=[create_widget, admin_only, no_roles],
                     api_prefix="/api/v1/widgets", title="test")


@pytest.fixture
async def client(make_settings, platform_engine):
    settings = make_settings(RouterSettings, rate_limit_per_minute=20, log_level="error")
    async with platform_engine.begin() as conn:  # the budgets are in the database: each test starts afresh
        await conn.execute(PlatformTables(metadata).rate_limits.delete())
    async with AsyncTestClient(make_app(settings)) as test_client:
        yield test_client


def auth(subject="1", role="barber") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(JWT_SECRET, subject, role)}"}


_test_sessions = None


@pytest.fixture(autouse=True)
def _bind_sessions(sessions):
    # The app runs on the test client's own loop; tests read the database through their own engine.
    global _test_sessions
    _test_sessions = sessions


async def count_widgets(_client, name: str) -> int:
    async with _test_sessions() as session:
        return await session.scalar(sa.select(sa.func.count()).where(widgets.c.name == name))


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["title"]
    return body


async def test_missing_or_bad_token_is_401(client):
    body = {"name": "w", "amount": "1.00"}
    assert_problem(await client.post("/api/v1/widgets", json=body), 401, "unauthorized")
    bad = {"Authorization": "Bearer " + issue_token("some-other-secret-long-enough-for-hs256", 1, "barber")}
    assert_problem(await client.post("/api/v1/widgets", json=body, headers=bad), 401, "unauthorized")
    assert_problem(await client.post("/api/v1/widgets", json=body, headers={"Authorization": "Basic x"}), 401,
                   "unauthorized")


async def test_wrong_role_is_403(client):
    assert_problem(await client.post("/api/v1/admin-only", headers=auth()), 403, "forbidden")
    assert (await client.post("/api/v1/admin-only", headers=auth(role="admin"))).json() == {"ok": True}


async def test_a_route_naming_no_roles_admits_no_caller(client):
    """Deny by default: a route that forgot `opt=roles(...)` is closed, not open to every token."""
    for role in ("barber", "admin", "service"):
        assert_problem(await client.get("/api/v1/no-roles", headers=auth(role=role)), 403, "forbidden")
    assert_problem(await client.get("/api/v1/no-roles"), 401, "unauthorized")


async def test_refusals_at_the_door_carry_the_request_id_and_count_by_status(client):
    """401, 403 and 429 are answered by the edge itself: the caller's request id comes back on them
    as on every answer, and the latency metric counts them under their own status, not as 500s."""
    for headers, status, code in ((auth(role="barber"), 403, "forbidden"), ({}, 401, "unauthorized")):
        response = await client.post("/api/v1/admin-only", headers={**headers, "x-request-id": f"door-{status}"})
        assert_problem(response, status, code)
        assert response.headers["x-request-id"] == f"door-{status}"
    assert (await client.post("/api/v1/admin-only", headers=auth())).headers["x-request-id"]  # made up when absent
    counted = [line for line in (await client.get("/metrics")).text.splitlines()
               if line.startswith("http_request_duration_seconds_count") and 'route="/api/v1/admin-only"' in line]
    for status in ("401", "403"):
        assert any(f'status="{status}"' in line for line in counted), (status, counted)
    assert not any('status="500"' in line for line in counted), counted
    assert (await client.post("/api/v1/admin-only", headers=auth("1000", "admin"))).json() == {"ok": True}


@pytest.mark.parametrize(
    ("raw", "status", "code", "field"),
    [
        (b'{"name": "w", "amount": -1}', 422, "validation_error", "amount"),
        (b'{"name": "w", "amount": 0}', 422, "validation_error", "amount"),
        (b'{"name": "w", "amount": "1.001"}', 422, "validation_error", "amount"),
        (b'{"name": "w", "amount": "NaN"}', 422, "validation_error", "amount"),
        (b'{"name": "w", "amount": 1e999}', 422, "validation_error", "amount"),  # exact: no float overflow
        (b'{"name": "w", "amount": 50.0000000000000001}', 422, "validation_error", "amount"),  # a float says 50.0
        ('{"name": "w", "amount": "５０"}'.encode(), 422, "validation_error", "amount"),
        (b'{"name": "w", "amount": "1_000"}', 422, "validation_error", "amount"),
        (b'{"name": "w", "amount": " 50"}', 422, "validation_error", "amount"),
        (b'{"name": "w", "amount": "1e3"}', 422, "validation_error", "amount"),
        (b'{"name": "w", "amount": "NaN"}', 422, "validation_error", "amount"),
        (b'{"name": "w", "amount": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400, "invalid_json", None),
        (b"[" * 10_000 + b"]" * 10_000, 400, "invalid_json", None),
        (b'{"name": "w", "amount": 1e99}', 422, "validation_error", "amount"),
        (b"", 422, "validation_error", "body"),
        (b'{"name": "w", "amount": true}', 422, "validation_error", "amount"),
        (b'{"name": 5, "amount": 1}', 422, "validation_error", "name"),
        (b'{"name": "w", "amount": 1, "currency": "ZZZ"}', 422, "validation_error", "amount"),
        (b'{"name": "w", "amount": 1, "surprise": 1}', 422, "validation_error", None),
        (b'{"amount": 1}', 422, "validation_error", None),
        (b'{"name": "w", "amount": 1', 400, "invalid_json", None),
        (b"[]", 422, "validation_error", None),
    ],
)
async def test_bad_bodies_are_4xx_problems_and_write_nothing(client, raw, status, code, field):
    response = await client.post(
        "/api/v1/widgets", content=raw, headers={**auth(), "Content-Type": "application/json"}
    )
    body = assert_problem(response, status, code)
    if field:
        assert field in body["detail"]
    assert await count_widgets(client, "w") == 0


async def test_idempotent_replay_returns_the_first_answer(client):
    headers = {**auth("11"), "Idempotency-Key": "replay-1"}
    first = await client.post("/api/v1/widgets", json={"name": "replay", "amount": 50}, headers=headers)
    second = await client.post("/api/v1/widgets", json={"name": "replay", "amount": 50}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json() == {"id": first.json()["id"], "name": "replay", "amount": "50.00"}
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert await count_widgets(client, "replay") == 1
    # Keys are scoped to the caller: another barber's identical key is a new request.
    other = await client.post("/api/v1/widgets", json={"name": "replay", "amount": 50},
                              headers={**auth("12"), "Idempotency-Key": "replay-1"})
    assert other.status_code == 201 and "idempotent-replayed" not in other.headers
    assert await count_widgets(client, "replay") == 2


async def test_same_key_with_another_body_is_422(client):
    headers = {**auth("13"), "Idempotency-Key": "reuse-1"}
    await client.post("/api/v1/widgets", json={"name": "reuse", "amount": 5}, headers=headers)
    response = await client.post("/api/v1/widgets", json={"name": "reuse", "amount": 6}, headers=headers)
    assert_problem(response, 422, "idempotency_key_reused")
    assert await count_widgets(client, "reuse") == 1


async def test_a_key_still_in_flight_is_409(client, platform_engine):
    """A claim held by another request (here: taken directly in the store) answers 409 at once.
    The race itself is run against a real server in test_router_concurrency.py."""
    store = IdempotencyStore(session_factory(platform_engine), PlatformTables(metadata))
    body = {"name": "inflight", "amount": "7.00", "delay": 0.0}
    request_path = "/api/v1/widgets"
    await store.claim("barber:14", "inflight-1", fingerprint("POST", request_path, WidgetIn(**body)))
    response = await client.post(request_path, json=body, headers={**auth("14"), "Idempotency-Key": "inflight-1"})
    assert_problem(response, 409, "idempotency_in_progress")
    assert response.headers["retry-after"] == "1"
    assert await count_widgets(client, "inflight") == 0


async def test_server_error_releases_the_key_and_client_errors_are_remembered(client):
    headers = {**auth("15"), "Idempotency-Key": "flaky-1"}
    body = {"name": "flaky-a", "amount": 3}
    assert_problem(await client.post("/api/v1/widgets", json=body, headers=headers), 504, "processor_timeout")
    retried = await client.post("/api/v1/widgets", json=body, headers=headers)
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert await count_widgets(client, "flaky-a") == 1

    headers = {**auth("15"), "Idempotency-Key": "refused-1"}
    first = await client.post("/api/v1/widgets", json={"name": "refused", "amount": 3}, headers=headers)
    again = await client.post("/api/v1/widgets", json={"name": "refused", "amount": 3}, headers=headers)
    assert_problem(first, 422, "widget_refused")
    assert_problem(again, 422, "widget_refused")
    assert again.headers["idempotent-replayed"] == "true"


async def test_a_retry_later_answer_is_not_remembered_as_the_keys_answer(client):
    """A 4xx that asks to retry later (Retry-After: another attempt holds the route) says nothing
    final about the request: the key is released, and the retry with it runs. Remembered, every
    retry would replay the 409 for 24 h (found with a replica killed mid-payment)."""
    headers = {**auth("17"), "Idempotency-Key": "busy-1"}
    body = {"name": "busy-a", "amount": 3}
    first = await client.post("/api/v1/widgets", json=body, headers=headers)
    assert_problem(first, 409, "payment_in_progress")
    assert first.headers["retry-after"] == "2"
    retried = await client.post("/api/v1/widgets", json=body, headers=headers)
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers, retried.text
    assert await count_widgets(client, "busy-a") == 1


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_bad_idempotency_keys_are_422(client, key):
    response = await client.post("/api/v1/widgets", json={"name": "k", "amount": 1},
                                 headers={**auth("16"), "Idempotency-Key": key})
    assert_problem(response, 422, "validation_error")


async def test_rate_limit_is_per_caller_and_spares_admins(client):
    headers = auth("17")
    statuses = [(await client.post("/api/v1/admin-only", headers=headers)).status_code for _ in range(21)]
    assert statuses[:20] == [403] * 20  # allowed through the limiter, refused for its role
    limited = await client.post("/api/v1/admin-only", headers={**headers, "x-request-id": "over-budget"})
    assert_problem(limited, 429, "rate_limited")
    assert limited.headers["x-request-id"] == "over-budget"
    assert int(limited.headers["retry-after"]) >= 1
    assert (await client.post("/api/v1/admin-only", headers=auth("18"))).status_code == 403
    admin = auth("1000", "admin")
    assert all([(await client.post("/api/v1/admin-only", headers=admin)).status_code == 200 for _ in range(25)])


async def test_health_metrics_and_openapi(client):
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "nats": True, "accepting": True}
    await client.post("/api/v1/admin-only", headers=auth("1000", "admin"))
    metrics = (await client.get("/metrics")).text
    assert 'http_request_duration_seconds_count{method="POST",route="/api/v1/admin-only"' in metrics
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/api/v1/widgets" in schema["paths"]
    assert "x-request-id" in ready.headers


async def test_ready_is_503_once_shutdown_begins(make_settings, platform_engine):
    """A replica being stopped (SIGTERM) leaves the balancer's rotation while it finishes its work:
    readiness fails from the first step of the shutdown, liveness does not."""
    settings = make_settings(RouterSettings, log_level="error")
    idle = ServiceRuntime(settings=settings, metadata=metadata)
    await idle.stop()  # stopping begins by leaving the rotation (nothing else to stop: never started)
    assert idle.draining
    app = make_app(settings)
    async with AsyncTestClient(app) as test_client:
        assert (await test_client.get("/health/ready")).status_code == 200
        app.state.runtime.draining = True  # as stop() does first (it runs on the app's own loop)
        body = assert_problem(await test_client.get("/health/ready"), 503, "not_ready")
        assert body["checks"] == {"database": True, "nats": True, "accepting": False}
        assert (await test_client.get("/health/live")).status_code == 200


async def test_ready_is_503_while_nats_is_unreachable(make_settings, platform_engine):
    settings = make_settings(RouterSettings, nats_url="nats://127.0.0.1:1", log_level="error")
    async with AsyncTestClient(make_app(settings)) as test_client:
        assert (await test_client.get("/health/live")).status_code == 200
        body = assert_problem(await test_client.get("/health/ready"), 503, "not_ready")
        assert body["checks"] == {"database": True, "nats": False, "accepting": True}
