"""The console's page handlers (in-process client) against a real suite (`make run`): every page
renders for its role and is 403 for the other, a barber never sees another barber's data, forms
show the service's own message for bad input and keep nothing half-done, and every form needs its
CSRF token."""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e.console_support import ADMIN_ID, console_client, next_barber, post_form, token
from tests.e2e.ledger import call
from tests.run_support import make_run

OPERATOR_PAGES = ["/console/", "/console/barbers", "/console/barbers/1", "/console/payments", "/console/connections",
                  "/console/webhooks",
                  "/console/payments?type=external", "/console/collections", "/console/dead-letters",
                  "/console/dead-letters?state=all", "/console/audit"]
BARBER_PAGES = ["/console/me", "/console/me/options", "/console/me/insights"]
HP = "/api/v1/hybrid-payments"


@pytest.fixture(scope="module")
def suite(service_env, tmp_path_factory):
    with make_run(service_env, tmp_path_factory.mktemp("console")) as running:
        yield running


async def test_every_page_renders_for_its_role_and_is_refused_to_the_other(suite) -> None:
    b = next_barber()
    async with console_client(suite.state, ADMIN_ID, "admin") as operator:
        for path in OPERATOR_PAGES:
            response = await operator.get(path)
            assert response.status_code == 200, (path, response.text[-800:])
            assert "<h1>" in response.text and "Content-Security-Policy" in response.headers
        for path in BARBER_PAGES:
            assert (await operator.get(path)).status_code == 403, path
    async with console_client(suite.state, b, "barber") as barber:
        for path in BARBER_PAGES:
            response = await barber.get(path)
            assert response.status_code == 200, (path, response.text[-800:])
        for path in OPERATOR_PAGES[1:]:  # the root sends a barber to its dashboard
            assert (await barber.get(path)).status_code == 403, path
        home = await barber.get("/console/", follow_redirects=False)
        assert (home.status_code, home.headers["location"]) == (303, "/console/me")


async def test_sign_in_by_form_or_by_query_and_nothing_without_it(suite) -> None:
    async with console_client(suite.state) as anonymous:
        away = await anonymous.get("/console/barbers", follow_redirects=False)
        assert away.status_code == 303 and away.headers["location"].startswith("/console/login?next=%2Fconsole%2Fbarbers")
        refused = await post_form(anonymous, "/console/login", {"token": "not-a-jwt"}, page="/console/login")
        assert refused.status_code == 401 and "token refused" in refused.text
        forged = token({"jwt_secret": "another-secret-of-enough-length-0000"}, ADMIN_ID, "admin")
        refused = await post_form(anonymous, "/console/login", {"token": forged}, page="/console/login")
        assert refused.status_code == 401 and "Signature verification failed" in refused.text
        service = await post_form(anonymous, "/console/login", {"token": token(suite.state, 1, "service")},
                                  page="/console/login")
        assert service.status_code == 401 and "operators (admin) and barbers" in service.text
        signed = await post_form(anonymous, "/console/login",
                                 {"token": token(suite.state, ADMIN_ID, "admin"), "next": "/console/audit"},
                                 page="/console/login")
        assert (signed.status_code, signed.headers["location"]) == (303, "/console/audit")
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
        assert (await anonymous.get("/console/audit")).status_code == 200
        # Never sent elsewhere after signing in.
        offsite = await post_form(anonymous, "/console/login",
                                  {"token": token(suite.state, ADMIN_ID, "admin"), "next": "//evil.example/"},
                                  page="/console/login")
        assert offsite.headers["location"] == "/console/"
    async with console_client(suite.state) as arriving:
        b = next_barber()
        landed = await arriving.get(f"/console/me/options?token={token(suite.state, b, 'barber')}&x=1",
                                    follow_redirects=False)
        assert (landed.status_code, landed.headers["location"]) == (303, "/console/me/options?x=1")
        assert (await arriving.get("/console/me/options")).status_code == 200


async def test_a_form_without_its_csrf_token_is_refused(suite) -> None:
    b = next_barber()
    async with console_client(suite.state, ADMIN_ID, "admin") as operator:
        response = await operator.post(f"/console/barbers/{b}/rollback", follow_redirects=False)
        assert response.status_code == 403 and "reload the page" in response.text
        response = await operator.post(f"/console/barbers/{b}/rollback", data={"_csrf_token": "forged"},
                                       follow_redirects=False)
        assert response.status_code == 403
    async with aiohttp.ClientSession(base_url=suite.state["urls"]["gateway"]) as http:
        status, config = await call(http, "GET", f"{HP}/config/{b}",
                                    {"Authorization": f"Bearer {token(suite.state, ADMIN_ID, 'admin')}"})
    assert status == 200 and config["is_default"] is True  # nothing was written


async def test_forms_show_the_services_message_and_write_nothing(suite) -> None:
    b = next_barber()
    async with console_client(suite.state, ADMIN_ID, "admin") as operator:
        bad = await post_form(operator, f"/console/barbers/{b}/mode", {"payment_mode": "sometimes"},
                              page=f"/console/barbers/{b}")
        assert bad.status_code == 422 and "payment_mode" in bad.text, bad.text[-600:]
        stale = await post_form(operator, f"/console/barbers/{b}/mode",
                                {"payment_mode": "hybrid", "expected_version": "7"}, page=f"/console/barbers/{b}")
        assert stale.status_code == 409 and "not 7" in stale.text
        run = await post_form(operator, "/console/collections/run", {"barber_id": "-4"}, page="/console/collections")
        assert run.status_code == 422 and "barber_id" in run.text
        trail = await operator.get(f"/console/barbers/{b}")
        assert "no change recorded" in trail.text
    async with console_client(suite.state, b, "barber") as barber:
        for fields, words in [({"appointment_id": "1", "amount": "abc", "payment_method": "pm_card_visa"}, "amount"),
                              ({"appointment_id": "1", "amount": "10.001", "payment_method": "pm_card_visa"}, "amount"),
                              ({"appointment_id": "x", "amount": "10.00", "payment_method": "pm_card_visa"},
                               "appointment_id")]:
            response = await post_form(barber, "/console/me/pay", fields, page="/console/me/options")
            assert response.status_code == 422 and words in response.text, (fields, response.text[-600:])
        connect = await post_form(barber, "/console/me/connections",
                                  {"processor": "square", "account_id": "", "access_token": "t", "location_id": "L"},
                                  page="/console/me/options")
        assert connect.status_code == 422 and "account_id" in connect.text
        mine = await barber.get("/console/me")
        assert '<p class="big" id="gross">$0.00</p>' in mine.text


async def test_a_barber_never_sees_another_barbers_data(suite) -> None:
    paying, other = next_barber(), next_barber()
    async with aiohttp.ClientSession(base_url=suite.state["urls"]["gateway"]) as http:
        status, _ = await call(http, "PUT", f"{HP}/config/{paying}",
                               {"Authorization": f"Bearer {token(suite.state, ADMIN_ID, 'admin')}"},
                               {"connect_account_id": f"acct_console{paying}"})
        assert status == 200
    async with console_client(suite.state, paying, "barber") as barber:
        paid = await post_form(barber, "/console/me/pay", {
            "appointment_id": "7", "amount": "123.45", "payment_method": "pm_card_visa",
            "idempotency_key": f"pages-{paying}"}, page="/console/me/options")
        assert paid.status_code == 303 and "completed" in paid.headers["location"], paid.text[-600:]
    async with console_client(suite.state, other, "barber") as barber:
        for path in BARBER_PAGES:
            page = await barber.get(path)
            assert "123.45" not in page.text and str(paying) not in page.text, path
        # The operator pages of that barber are not the barber's to see (the console and the services say so).
        assert (await barber.get(f"/console/barbers/{paying}")).status_code == 403
        assert (await barber.get("/console/payments.csv")).status_code == 403
    async with console_client(suite.state, ADMIN_ID, "admin") as operator:
        listed = await operator.get(f"/console/payments?barber_id={paying}")
        assert "123.45" in listed.text


async def test_an_operator_reconciles_from_the_console_and_sees_the_run(suite) -> None:
    async with console_client(suite.state, ADMIN_ID, "admin") as operator:
        done = await post_form(operator, "/console/connections/reconcile", {}, page="/console/connections")
        assert done.status_code == 303 and "reconciled" in done.headers["location"], done.text[-500:]
        shown = await operator.get("/console/connections")
        assert shown.status_code == 200 and "<td>operator</td>" in shown.text
        refused = await post_form(operator, "/console/connections/reconcile", {"connection_id": "-1"},
                                  page="/console/connections")
        assert refused.status_code == 303 and "refused" in refused.headers["location"]
        audit = await operator.get("/console/audit")
        assert "reconciliation.run" in audit.text
