"""The console and the API docs in a real headless Chromium (Debian's `chromium`, driven by the
`playwright` package through `executable_path`; never `playwright install`), against `make run`.

Each test gets a new browser context in which every request to another origin is aborted and
recorded (so a page that needs a CDN fails here), and page errors and console errors fail the test.
A screenshot of each page visited goes to `.run/screenshots/`. The browser is one per test session
(`tests/e2e/conftest.py`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from shared.config import libpq_url
from tests.e2e.console_support import ADMIN_ID, next_barber, token
from tests.e2e.ledger import call
from tests.run_support import make_run
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".run" / "screenshots"
HP, EX, AN = "/api/v1/hybrid-payments", "/api/v1/external-payments", "/api/v1/unified-payment-analytics"


@pytest.fixture(scope="module")
def suite(service_env, tmp_path_factory):
    with make_run(service_env, tmp_path_factory.mktemp("console-browser")) as running:
        yield running


@dataclass
class Tab:
    page: object
    origin: str
    problems: list[str] = field(default_factory=list)

    async def open(self, path: str, shot: str | None = None):
        response = await self.page.goto(self.origin + path)
        await self.page.wait_for_load_state("networkidle")
        if shot:
            SHOTS.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
        return response


@pytest.fixture
async def tab(browser, suite) -> AsyncIterator[Tab]:
    """A new context per test: other origins aborted, errors collected, dialogs (confirm) accepted."""
    origin = suite.state["urls"]["gateway"]
    context = await browser.new_context(accept_downloads=True)
    page = await context.new_page()
    tab = Tab(page, origin)

    async def only_ours(route) -> None:
        if route.request.url.startswith(origin + "/") or route.request.url.startswith("data:"):
            await route.continue_()
        else:
            tab.problems.append(f"request to another origin: {route.request.url}")
            await route.abort()

    await context.route("**/*", only_ours)
    page.on("pageerror", lambda exc: tab.problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: tab.problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("dialog", lambda dialog: dialog.accept())
    yield tab
    await context.close()
    assert tab.problems == []


async def sign_in(tab: Tab, state: dict, subject: int, role: str) -> None:
    await tab.open(f"/console/?token={token(state, subject, role)}")


def admin_headers(state: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(state, ADMIN_ID, 'admin')}"}


async def test_the_api_docs_load_with_every_other_origin_blocked(tab, suite) -> None:
    for service in ("router", "external", "collections", "analytics"):
        await tab.open(f"/docs/{service}/", shot=f"docs-{service}")
        await tab.page.wait_for_selector(".opblock", timeout=15_000)
        assert await tab.page.locator(".opblock").count() >= 3, service
    assert "Authorize" in await tab.page.content()  # the bearer scheme is declared


async def test_an_operator_switches_a_barber_to_square_and_rolls_it_back(tab, suite) -> None:
    b = next_barber()
    await sign_in(tab, suite.state, ADMIN_ID, "admin")
    await tab.open(f"/console/barbers/{b}")
    page = tab.page
    await page.select_option("select[name=payment_mode]", "decentralized")
    await page.select_option("select[name=preferred_processor]", "square")
    await page.click("#switch")
    await page.wait_for_selector("p.notice")
    assert (await page.text_content("#mode"), await page.text_content("#preferred")) == ("decentralized", "square")
    await page.click("#rollback")
    await page.wait_for_selector("p.notice >> text=rolled back")
    assert await page.text_content("#mode") == "centralized"
    async with aiohttp.ClientSession(base_url=suite.state["urls"]["gateway"]) as http:
        status, config = await call(http, "GET", f"{HP}/config/{b}", admin_headers(suite.state))
        _, audit = await call(http, "GET", f"{HP}/operations/audit?subject=barber:{b}", admin_headers(suite.state))
    assert status == 200 and (config["payment_mode"], config["fallback_enabled"], config["version"]) == (
        "centralized", True, 2)
    assert [(e["before"]["payment_mode"], e["after"]["payment_mode"]) for e in audit["items"]] == [
        ("decentralized", "centralized"), ("centralized", "decentralized")]
    assert await page.locator("#history tbody tr").count() == 2
    await tab.open(f"/console/barbers/{b}", shot="barber")
    await tab.open("/console/barbers", shot="barbers")
    await tab.open("/console/audit", shot="audit")


async def test_a_barber_connects_square_pays_and_sees_it_on_the_dashboard_chart(tab, suite) -> None:
    b = next_barber()
    await sign_in(tab, suite.state, b, "barber")
    page = tab.page
    await tab.open("/console/me/options", shot="options")
    square = page.locator("form.connect[data-processor=square]")
    await square.locator("input[name=account_id]").fill(f"sq-console-{b}")
    await square.locator("input[name=access_token]").fill(f"EAAAconsole-{b}")
    await square.locator("input[name=location_id]").fill(f"LCONSOLE{b}")
    await square.locator("button").click()
    await page.wait_for_selector("p.notice >> text=square connected (active)")
    await page.select_option("#mode-form select[name=payment_mode]", "decentralized")
    await page.select_option("#mode-form select[name=preferred_processor]", "square")
    await page.click("#mode-form button")
    await page.wait_for_selector("p.notice >> text=you are now decentralized")
    await page.fill("#pay-form input[name=appointment_id]", "11")
    await page.fill("#pay-form input[name=amount]", "80.25")
    await page.fill("#pay-form input[name=payment_method]", "cnon:card-nonce-ok")
    await page.click("#pay-form button")
    notice = await page.wait_for_selector("p.notice")
    assert "$80.25 completed (external, square)" in await notice.text_content()

    async def charted():
        await tab.open("/console/me")
        await page.wait_for_function(
            "() => window.Chart && Chart.getChart(document.getElementById('chart-daily'))", timeout=5000)
        data = await page.evaluate("""() => ({
            daily: Chart.getChart(document.getElementById('chart-daily')).data.datasets[0].data,
            processors: Chart.getChart(document.getElementById('chart-processor')).data.labels,
            perProcessor: Chart.getChart(document.getElementById('chart-processor')).data.datasets[0].data,
        })""")
        return data if sum(data["daily"]) == 80.25 else None

    data = await eventually(charted, timeout=20, interval=0.5)
    assert dict(zip(data["processors"], data["perProcessor"], strict=True))["square"] == 80.25
    # The Six Figure panel arrives after the page (htmx), with its progress bar drawn.
    panel = await page.wait_for_selector("#six-figure", timeout=5000)
    assert "a year at the last 90 days' pace" in await panel.text_content()
    assert await page.eval_on_selector(".progress .bar", "bar => bar.style.width") != ""
    await tab.open("/console/me", shot="dashboard")


async def test_an_operator_replays_a_dead_letter_and_nothing_is_counted_twice(tab, suite) -> None:
    """An analytics dead letter made of an event analytics already applied: replayed from the
    console, it is published again, skipped by its event id, and the figures do not move."""
    b = next_barber()
    gateway, headers = suite.state["urls"]["gateway"], admin_headers(suite.state)
    async with aiohttp.ClientSession(base_url=gateway) as http:
        assert (await call(http, "PUT", f"{HP}/config/{b}", headers, {"connect_account_id": f"acct_dl{b}"}))[0] == 200
        status, paid = await call(http, "POST", f"{HP}/process", {**headers, "Idempotency-Key": f"dl-{b}"},
                                  {"barber_id": b, "appointment_id": 5, "amount": "42.00",
                                   "payment_method": "pm_card_visa"})
        assert status == 200 and paid["status"] == "completed", paid

        async def volume() -> str | None:
            s, body = await call(http, "GET", f"{AN}/dashboard?barber_id={b}", headers)
            return body["totals"]["gross_volume"] if s == 200 and body["totals"]["transaction_count"] else None

        assert await eventually(volume, timeout=20) == "42.00"
    conn = await asyncpg.connect(libpq_url(suite.state["database_url"]))
    try:
        event = await conn.fetchrow(
            "SELECT event_id, subject, body FROM router.outbox WHERE event_type = 'transaction.recorded' "
            "AND convert_from(body, 'UTF8') LIKE $1", f'%"transaction_id":"{paid["transaction_id"]}"%')
        assert event is not None
        letter = await conn.fetchval(
            "INSERT INTO analytics.dead_letters (consumer, event_id, event_type, subject, body, error, attempts) "
            "VALUES ('analytics-transactions', $1, 'transaction.recorded', $2, $3, 'parked by the test', 5) "
            "RETURNING id", event["event_id"], event["subject"], event["body"])
    finally:
        await conn.close()

    await sign_in(tab, suite.state, ADMIN_ID, "admin")
    await tab.open("/console/dead-letters", shot="dead-letters")
    await tab.open("/console/connections", shot="connections")
    await tab.open("/console/webhooks", shot="webhooks")
    await tab.open("/console/dead-letters")
    row = tab.page.locator(f"tr[data-service=analytics][data-id='{letter}']")
    await row.locator("button.replay").click()
    await tab.page.wait_for_selector(f"p.notice >> text=analytics dead letter #{letter} replayed")
    await tab.open("/console/dead-letters?state=replayed")
    assert "replayed" in await tab.page.locator(f"tr[data-service=analytics][data-id='{letter}']").text_content()
    async with aiohttp.ClientSession(base_url=gateway) as http:
        _, audit = await call(http, "GET", f"{AN}/operations/audit?subject=dead_letter:{letter}", headers)
        assert [e["action"] for e in audit["items"]] == ["dead_letter.replay"]
        await tab.page.wait_for_timeout(1500)  # time for the replayed event to reach analytics
        _, dashboard = await call(http, "GET", f"{AN}/dashboard?barber_id={b}", headers)
    assert (dashboard["totals"]["gross_volume"], dashboard["totals"]["transaction_count"]) == ("42.00", 1)


async def test_the_csv_export_matches_the_list(tab, suite) -> None:
    b = next_barber()
    headers = admin_headers(suite.state)
    async with aiohttp.ClientSession(base_url=suite.state["urls"]["gateway"]) as http:
        assert (await call(http, "PUT", f"{HP}/config/{b}", headers, {"connect_account_id": f"acct_csv{b}"}))[0] == 200
        for n, amount in enumerate(("10.00", "20.50", "=1+2")):
            body = {"barber_id": b, "appointment_id": n + 1, "amount": amount, "payment_method": "pm_card_visa"}
            status, _ = await call(http, "POST", f"{HP}/process", {**headers, "Idempotency-Key": f"csv-{b}-{n}"}, body)
            assert status == (422 if amount.startswith("=") else 200)
    await sign_in(tab, suite.state, ADMIN_ID, "admin")
    await tab.open(f"/console/payments?barber_id={b}", shot="payments")
    rows = tab.page.locator("#payments tbody tr[data-id]")
    listed = {await rows.nth(i).get_attribute("data-id"): (await rows.nth(i).locator("td").nth(6).text_content())
              for i in range(await rows.count())}
    async with tab.page.expect_download() as download:
        await tab.page.click("#export")
    exported = list(csv.DictReader(io.StringIO(Path(await (await download.value).path()).read_text())))
    assert {r["transaction"]: r["amount"] for r in exported} == listed
    assert sorted(listed.values()) == ["10.00", "20.50"]
    first = next(iter(listed))
    await tab.open(f"/console/payments/centralized/{first}", shot="payment")
    assert await tab.page.locator("#timeline li").count() >= 3  # routed, recorded, answered
    await tab.open("/console/", shot="health")
    await tab.open("/console/collections", shot="collections")
