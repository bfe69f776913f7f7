"""A hand table of bad inputs per service (issue 14): huge numbers, negative ids, wrong types, unknown
enum values, empty and 1 MB bodies. Each is a 4xx problem document that names the field at fault,
never a 5xx, and writes nothing. (tests/fuzz runs schemathesis over the same documents; this table
keeps the cases a reader expects, by name.)"""

from __future__ import annotations

import json
import uuid

import pytest
from litestar.testing import AsyncTestClient

from shared.auth import issue_token
from tests.conftest import JWT_SECRET

ADMIN = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 1000, 'admin')}"}
BARBER = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 77_001, 'barber')}"}
SERVICE = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 1, 'service')}"}
INT4_PAST = 2**31
INT8_PAST = 2**63
MEGABYTE_JSON = json.dumps({"appointment_id": 1, "amount": "10.00", "pad": "x" * (1024 * 1024)})
HUGE = "1" + "0" * 40
R, X, C, A = ("/api/v1/hybrid-payments", "/api/v1/external-payments", "/api/v1/platform-collections",
              "/api/v1/unified-payment-analytics")

# (service, who, method, path, body (dict, raw str, or None), the field the answer must name)
CASES = [
    ("router", BARBER, "POST", f"{R}/route", {"appointment_id": 1, "amount": HUGE}, "amount"),
    ("router", BARBER, "POST", f"{R}/route", {"appointment_id": 1, "amount": 1e308}, "amount"),
    ("router", BARBER, "POST", f"{R}/route", {"appointment_id": 1, "amount": "-5.00"}, "amount"),
    ("router", BARBER, "POST", f"{R}/route", {"appointment_id": -1, "amount": "5.00"}, "appointment_id"),
    ("router", BARBER, "POST", f"{R}/route", {"appointment_id": int(HUGE), "amount": "5.00"}, "appointment_id"),
    ("router", BARBER, "POST", f"{R}/route", {"appointment_id": "one", "amount": "5.00"}, "appointment_id"),
    ("router", BARBER, "POST", f"{R}/route", {"appointment_id": 1, "amount": "5.00", "currency": "ZZZ"}, "currency"),
    ("router", BARBER, "POST", f"{R}/route", "", "body"),
    ("router", BARBER, "POST", f"{R}/route", MEGABYTE_JSON, "pad"),
    ("router", BARBER, "PUT", f"{R}/config", {"payment_mode": "sometimes"}, "payment_mode"),
    ("router", ADMIN, "PUT", f"{R}/config/5", {"commission_rate": "2.5"}, "commission_rate"),
    ("router", ADMIN, "PUT", f"{R}/config/-5", {}, "barber_id"),
    ("router", BARBER, "POST", f"{R}/process", {"route_id": "not-a-uuid", "payment_method": "pm_card_visa"},
     "route_id"),
    ("router", ADMIN, "GET", f"{R}/transactions?limit=100000", None, "limit"),
    ("router", ADMIN, "GET", f"{R}/transactions?barber_id=-3", None, "barber_id"),
    ("router", ADMIN, "GET", f"{R}/transactions?status=lost", None, "status"),
    ("router", ADMIN, "GET", f"{R}/transactions?from=yesterday", None, "from"),
    ("router", ADMIN, "GET", f"{R}/config/{INT4_PAST}", None, "barber_id"),
    ("router", BARBER, "PUT", f"{R}/config", {"max_platform_amount": "100000000000000"}, "max_platform_amount"),
    ("router", BARBER, "PUT", f"{R}/config", {"split_threshold": 3.0e16}, "split_threshold"),
    ("router", BARBER, "POST", f"{R}/process", {"appointment_id": 1, "amount": "5.00", "payment_method": "pm_\u0000"},
     "payment_method"),
    ("external", BARBER, "POST", f"{X}/connections", {"processor": "venmo", "account_id": "a", "credentials": {}},
     "processor"),
    ("external", BARBER, "POST", f"{X}/connections",
     {"processor": "stripe", "account_id": "a" * 300, "credentials": {"secret_key": "sk_test_1"}}, "account_id"),
    ("external", BARBER, "POST", f"{X}/connections", {"processor": "stripe", "account_id": "a", "credentials": 7},
     "credentials"),
    ("external", BARBER, "POST", f"{X}/connections", "", "body"),
    ("external", BARBER, "POST", f"{X}/connections", MEGABYTE_JSON, "pad"),
    ("external", BARBER, "GET", f"{X}/transactions?from=yesterday", None, "from"),
    ("external", BARBER, "GET", f"{X}/transactions?external_transaction_id=pi_%00", None, "external_transaction_id"),
    ("external", BARBER, "POST", f"{X}/connections",
     {"processor": "stripe", "account_id": "a", "account_name": "Shop\u0000", "credentials": {"secret_key": "sk_1"}},
     "account_name"),
    ("external", ADMIN, "GET", f"{X}/connections/{INT4_PAST}", None, "connection_id"),
    ("external", ADMIN, "DELETE", f"{X}/connections/{INT4_PAST}", None, "connection_id"),
    ("external", ADMIN, "POST", f"{X}/unattributed/{INT8_PAST}/attribute", {"connection_id": 1}, "unattributed_id"),
    ("external", SERVICE, "POST", "/internal/v1/charges",
     {"route_id": str(uuid.uuid4()), "barber_id": 1, "connection_id": 1, "appointment_id": 1, "amount": "5.00",
      "currency": "USD", "commission_rate": "0.1", "commission_amount": "0.50", "estimated_processor_fee": "0.45",
      "payment_method": "pm_\u0000"}, "payment_method"),
    ("external", BARBER, "GET", f"{X}/transactions?status=lost", None, "status"),
    ("external", ADMIN, "GET", f"{X}/connections?barber_id={HUGE}", None, "barber_id"),
    ("external", ADMIN, "POST", f"{X}/reconcile", {"since": "last week"}, "since"),
    ("external", ADMIN, "POST", f"{X}/unattributed/1/attribute", {"connection_id": -1}, "connection_id"),
    ("external", ADMIN, "GET", f"{X}/unattributed?limit=-1", None, "limit"),
    ("collections", ADMIN, "POST", f"{C}/run", {"barber_id": -1}, "barber_id"),
    ("collections", ADMIN, "POST", f"{C}/run", {"force": "yes"}, "force"),
    ("collections", ADMIN, "POST", f"{C}/run", MEGABYTE_JSON, "pad"),
    ("collections", ADMIN, "GET", f"{C}/?limit=0", None, "limit"),
    ("collections", ADMIN, "GET", f"{C}/?status=lost", None, "status"),
    ("collections", ADMIN, "GET", f"{C}/balance/{HUGE}", None, "barber_id"),
    ("collections", ADMIN, "PUT", f"{C}/payment-method/{INT4_PAST}", {"payment_method": "pm_card_visa"}, "barber_id"),
    ("collections", BARBER, "GET", f"{C}/my-balance?currency=US", None, "currency"),
    ("collections", BARBER, "PUT", f"{C}/payment-method", {"payment_method": ""}, "payment_method"),
    ("collections", BARBER, "PUT", f"{C}/payment-method", "", "body"),
    ("analytics", BARBER, "GET", f"{A}/dashboard?from=2026-13-01", None, "from"),
    ("analytics", ADMIN, "GET", f"{A}/dashboard?barber_id=-1", None, "barber_id"),
    ("analytics", BARBER, "GET", f"{A}/dashboard?currency=ZZZ", None, "currency"),
    ("analytics", BARBER, "GET", f"{A}/dashboard?from=2026-01-01&to=2020-01-01", None, "from"),
    ("analytics", BARBER, "GET", f"{A}/six-figure-insights?currency=1", None, "currency"),
    # Too long a time is named by the key the caller sent, not by a handler's own argument name.
    ("router", ADMIN, "GET", f"{R}/transactions?to={'2026-01-01' * 5}", None, "to"),
    ("external", ADMIN, "GET", f"{X}/transactions?from={'2026-01-01' * 5}", None, "from"),
    ("collections", ADMIN, "GET", f"{C}/?from={'2026-01-01' * 5}", None, "from"),
    ("analytics", BARBER, "GET", f"{A}/dashboard?to={'2026-01-01' * 5}", None, "to"),
]


@pytest.fixture(scope="module")
async def apps(make_settings):
    from services.analytics.app import create_app as analytics
    from services.analytics.settings import AnalyticsSettings
    from services.collections.app import create_app as collections
    from services.collections.settings import CollectionsSettings
    from services.external.app import create_app as external
    from services.external.settings import ExternalSettings
    from services.router.app import create_app as router
    from services.router.settings import RouterSettings

    built = {
        "router": router(make_settings(RouterSettings, log_level="error", rate_limit_per_minute=100_000)),
        "external": external(make_settings(ExternalSettings, log_level="error", rate_limit_per_minute=100_000)),
        "collections": collections(make_settings(CollectionsSettings, log_level="error",
                                                 rate_limit_per_minute=100_000)),
        "analytics": analytics(make_settings(AnalyticsSettings, log_level="error", rate_limit_per_minute=100_000)),
    }
    clients = {}
    for name, app in built.items():
        runtime = app.state.runtime
        runtime.consumer_specs, runtime.start_relay, runtime.start_jobs = (), False, False
        clients[name] = AsyncTestClient(app)
        await clients[name].__aenter__()
    yield clients
    for client in clients.values():
        await client.__aexit__(None, None, None)


@pytest.mark.parametrize(("service", "who", "method", "path", "body", "field"), CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3].rsplit('/', 1)[-1][:30]}-{c[5]}-{i}" for i, c in enumerate(CASES)])
async def test_bad_input_is_a_4xx_naming_the_field(apps, service, who, method, path, body, field):
    headers = {**who, "Idempotency-Key": str(uuid.uuid4())}
    if isinstance(body, str):
        response = await apps[service].request(method, path, headers={**headers, "Content-Type": "application/json"},
                                               content=body.encode())
    else:
        response = await apps[service].request(method, path, headers=headers, json=body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/problem+json"), response.text[:200]
    problem = response.json()
    named = " ".join(str(problem.get(k, "")) for k in ("detail", "field", "errors", "title")).lower()
    if field == "body":  # an empty body: the answer says what is missing or unreadable
        assert problem["code"] in ("invalid_json", "validation_error", "body_required"), problem
    elif field == "pad":  # a 1 MB body: refused as too large, or for the field it must not carry
        assert response.status_code in (413, 400, 422), problem
    else:
        assert field in named, problem
        if field in ("from", "to"):  # the key the caller sent, not the handler argument's name
            assert "since" not in named and "until" not in named, problem
