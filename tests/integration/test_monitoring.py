"""Monitoring: the alert rules and the Prometheus config pass promtool (and their unit tests), every
metric the rules and the Grafana dashboard name is one the four services export at /metrics, every
metric the monitoring spec asks for is watched, processor calls are timed, and the collection
gauges drop to 0 when nothing is left in a status (an overdue alert must not outlive the overdue)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from decimal import Decimal
from operator import attrgetter
from pathlib import Path

import pytest
import yaml
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sandbox.paypal_sim import start_paypal_sim
from sandbox.square_sim import NONCE_DECLINED, NONCE_OK, start_square_sim
from services.analytics import store as analytics_store
from services.analytics.app import create_app as analytics_app
from services.analytics.settings import AnalyticsSettings
from services.collections import store as collections_store
from services.collections.app import create_app as collections_app
from services.collections.settings import CollectionsSettings
from services.external.app import create_app as external_app
from services.external.settings import ExternalSettings
from shared.processors.base import PaymentDeclined, PaymentRequest, ProcessorUnavailable, Secret
from shared.processors.paypal import PayPalCredentials, PayPalProcessor
from shared.processors.square import SquareCredentials, SquareProcessor
from tests.integration.router_support import BASE, admin, barber

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES, CONFIG, RULE_TESTS = PROMETHEUS / "alerts.yml", PROMETHEUS / "prometheus.yml", PROMETHEUS / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hybrid-payments.json"

# The monitoring spec's list, and the metric that shows each item.
SPEC = {
    "payment success rate (overall, by processor, by mode)": "payment_success_rate",
    "API latency histograms": "http_request_duration_seconds",
    "processor response times": "processor_request_duration_seconds",
    "commission collection rate": "commission_collection_rate",
    "pending and overdue collections": "pending_collections",
    "revenue by payment method": "payment_volume",
    "outbox backlog": "outbox_backlog",
    "consumer lag": "consumer_lag",
    "dead letters": "dead_letters_waiting",
}
# What must page someone: the spec's list but revenue, plus services down and failing jobs.
ALERTED = ({*SPEC.values(), "up", "scheduled_job_runs", "platform_collections"}
           - {"payment_volume", "pending_collections"})  # overdue alerts read the collections service's own
PROMETHEUS_OWN = {"up"}  # written by Prometheus itself, not by a service

_ids = itertools.count(1)


# ---- promtool ----------------------------------------------------------------------------------

def promtool(*args: str) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool not installed, and CI installs it (apt-get install prometheus)")
        pytest.skip("promtool not installed: apt-get install prometheus (CI installs it)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_rules_config_and_rule_tests_pass_promtool():
    output = ""
    for args in (("check", "rules", str(RULES)), ("check", "config", str(CONFIG)),
                 ("test", "rules", str(RULE_TESTS))):
        done = promtool(*args)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
        output += done.stdout
    assert "SUCCESS: 1 rule files found" in output  # the config loads alerts.yml


def test_promtool_fails_a_broken_rule_and_a_wrong_expectation(tmp_path):
    """The checks above can fail: a rule that does not parse, and a rule that no longer does what
    its unit test expects, are both refused."""
    text = RULES.read_text()
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("histogram_quantile(0.95,", "histogram_quantile(0.95,,", 1))
    done = promtool("check", "rules", str(broken))
    assert done.returncode != 0 and "parse error" in done.stdout + done.stderr

    (tmp_path / "alerts.yml").write_text(text.replace("for: 2m", "for: 10m", 1))  # ServiceDown fires too late
    shutil.copy(RULE_TESTS, tmp_path / "alerts.test.yml")
    done = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert done.returncode != 0 and "ServiceDown" in done.stdout + done.stderr


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_every_rule_waits_has_a_severity_and_says_what_is_wrong():
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) and len(names) >= 10
    for rule in rules():
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_dashboard_is_an_importable_prometheus_dashboard():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and 36 <= board["schemaVersion"] <= 41
    variable = board["templating"]["list"][0]
    assert (variable["type"], variable["query"], variable["name"]) == ("datasource", "prometheus", "datasource")
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in graphs(board):
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def graphs(board: dict) -> list[dict]:
    panels = [*board["panels"], *(p for row in board["panels"] for p in row.get("panels", []))]
    return [panel for panel in panels if panel["type"] != "row"]


# ---- metric names in PromQL --------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_VARIABLES = re.compile(r"\$\{?\w+\}?")  # Grafana's $__rate_interval, ${datasource}
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
             "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label matchers,
    ranges and grouping labels are gone, that are neither keywords nor called like functions."""
    text = expr
    for pattern in (_STRINGS, _VARIABLES, _MATCHERS, _RANGES, _GROUPING):
        text = pattern.sub(" ", text)
    return {m.group() for m in _IDENTIFIER.finditer(text)
            if m.group().lower() not in _KEYWORDS and not text[m.end():].lstrip().startswith("(")}


def test_metric_names_are_read_from_promql():
    expr = ('histogram_quantile(0.95, sum by (service, le) (rate(http_request_duration_seconds_bucket'
            '{route!~"/metrics|/health/.*"}[$__rate_interval]))) > 0.5 and on(job) up offset 1h'
            ' unless max without (instance) (outbox_backlog) > bool 1e3')
    assert metric_names(expr) == {"http_request_duration_seconds_bucket", "up", "outbox_backlog"}
    assert metric_names('sum(rate(a_total{x="b(c)"}[5m])) / sum(rate(a_total[5m]))') == {"a_total"}


# A sample name as PromQL writes it -> the family type(s) it belongs to, by suffix.
_SUFFIXES = {"_total": {"counter"}, "_created": {"counter", "histogram", "summary"}, "_bucket": {"histogram"},
             "_sum": {"histogram", "summary"}, "_count": {"histogram", "summary"}}


def family_of(name: str, families: dict[str, str]) -> str | None:
    """The exported family a PromQL name reads (`x_bucket` -> histogram `x`), or None."""
    if families.get(name) in ("gauge", "untyped"):
        return name
    for suffix, types in _SUFFIXES.items():
        base = name.removesuffix(suffix)
        if base != name and families.get(base) in types:
            return base
    return None


def rule_exprs() -> list[str]:
    return [rule["expr"] for rule in rules()]


def panel_exprs() -> list[str]:
    return [target["expr"] for panel in graphs(json.loads(DASHBOARD.read_text())) for target in panel["targets"]]


@pytest.fixture(scope="module")
async def scraped(client, make_settings) -> dict[str, dict[str, str]]:
    """Each service's GET /metrics, as {service: {family: type}}: the router is the module's
    client; the others start in-process with no consumers, relay or jobs (only /metrics is read).
    In one process they share prometheus_client's registry, so this proves each app serves the
    exposition and the names in it, not which service would fill which metric."""
    def families(text: str) -> dict[str, str]:
        return {family.name: family.type for family in text_string_to_metric_families(text)}

    found = {"router": families((await client.get("/metrics")).text)}
    for name, create, cls in (("external", external_app, ExternalSettings),
                              ("collections", collections_app, CollectionsSettings),
                              ("analytics", analytics_app, AnalyticsSettings)):
        app = create(make_settings(cls, log_level="error"))
        runtime = app.state.runtime
        runtime.consumer_specs, runtime.start_relay, runtime.start_jobs = (), False, False
        async with AsyncTestClient(app) as service:
            response = await service.get("/metrics")
            assert response.status_code == 200, name
            found[name] = families(response.text)
    return found


def test_every_metric_in_the_rules_and_the_dashboard_is_exported(scraped):
    exported = {family: kind for families in scraped.values() for family, kind in families.items()}
    for source, exprs in (("alerts.yml", rule_exprs()), ("hybrid-payments.json", panel_exprs())):
        names = set().union(*map(metric_names, exprs))
        assert len(names) >= 8, (source, names)
        missing = {n for n in names - PROMETHEUS_OWN if family_of(n, exported) is None}
        assert not missing, f"{source} reads metrics no service exports: {sorted(missing)}"
    # ... and the check can fail: a typo, a histogram read as a gauge, a gauge read as a counter.
    for wrong in ("payment_sucess_rate", "processor_request_duration_seconds", "outbox_backlog_total"):
        assert family_of(wrong, exported) is None, wrong


def test_every_metric_the_spec_lists_is_on_the_dashboard_and_the_paging_ones_alert(scraped):
    exported = {family: kind for families in scraped.values() for family, kind in families.items()}

    def families_in(exprs: list[str]) -> set[str]:
        names = set().union(*map(metric_names, exprs))
        return {family_of(n, exported) or n for n in names}

    on_dashboard, alerted = families_in(panel_exprs()), families_in(rule_exprs())
    for item, metric in SPEC.items():
        assert metric in exported, (item, metric)
        assert metric in on_dashboard | alerted, item
        assert metric in on_dashboard, item
    assert ALERTED <= alerted, sorted(ALERTED - alerted)
    assert any('status="overdue"' in expr for expr in rule_exprs()) and any(
        'status="overdue"' in expr for expr in panel_exprs())


# ---- processor response times ------------------------------------------------------------------

def timed_calls(processor: str, operation: str, outcome: str = "ok") -> float:
    labels = {"processor": processor, "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("processor_request_duration_seconds_count", labels) or 0.0


def time_spent(processor: str, operation: str, outcome: str = "ok") -> float:
    labels = {"processor": processor, "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("processor_request_duration_seconds_sum", labels) or 0.0


def payment(method: str, amount: str = "45.00") -> PaymentRequest:
    n = next(_ids)
    return PaymentRequest(amount=Decimal(amount), currency="USD", payment_method=method,
                          idempotency_key=f"monitoring-{n}-{method}", reference=f"mon-{n}")


async def test_the_routers_stripe_connect_payment_is_timed(client):
    """The platform account: a centralized payment through the router is one timed Stripe call."""
    b = 900_000 + next(_ids)
    config = await client.put(f"{BASE}/config/{b}", headers=admin(), json={
        "payment_mode": "centralized", "commission_rate": "0.15", "connect_account_id": f"acct_{b}"})
    assert config.status_code == 200, config.text
    calls, spent = timed_calls("stripe", "create_payment"), time_spent("stripe", "create_payment")
    paid = await client.post(f"{BASE}/process", headers=barber(b), json={
        "appointment_id": 1, "amount": "80.00", "payment_method": "pm_card_visa"})
    assert paid.status_code == 200 and paid.json()["processor"] == "stripe", paid.text
    assert timed_calls("stripe", "create_payment") == calls + 1
    assert time_spent("stripe", "create_payment") > spent


async def test_a_barbers_own_square_calls_are_timed_by_outcome():
    sim = await start_square_sim()
    square = SquareProcessor(SquareCredentials(Secret("EAAAl-monitoring-token-0001"), "LMONITOR"), api_base=sim.url)
    down = SquareProcessor(SquareCredentials(Secret("EAAAl-monitoring-token-0001"), "LMONITOR"),
                           api_base="http://127.0.0.1:1")
    try:
        ok, declined = timed_calls("square", "create_payment"), timed_calls("square", "create_payment", "declined")
        unavailable = timed_calls("square", "create_payment", "unavailable")
        await square.create_payment(payment(NONCE_OK))
        with pytest.raises(PaymentDeclined):
            await square.create_payment(payment(NONCE_DECLINED))
        with pytest.raises(ProcessorUnavailable):
            await down.create_payment(payment(NONCE_OK))
        assert timed_calls("square", "create_payment") == ok + 1
        assert timed_calls("square", "create_payment", "declined") == declined + 1
        assert timed_calls("square", "create_payment", "unavailable") == unavailable + 1
    finally:
        await square.close()
        await down.close()
        await sim.close()


async def test_a_barbers_own_paypal_calls_are_timed_step_by_step():
    """A PayPal payment is an OAuth token (once), an order and its capture: three timed calls."""
    sim = await start_paypal_sim()
    paypal = PayPalProcessor(PayPalCredentials("AZmonitoring-client-id", Secret("EL-monitoring-secret")),
                             api_base=sim.url)
    try:
        steps = ("access_token", "create_payment", "capture_payment", "retrieve_payment")
        before = {step: timed_calls("paypal", step) for step in steps}
        paid = await paypal.create_payment(payment("paypal-approved"))
        await paypal.retrieve_payment(paid.processor_payment_id)
        assert {step: timed_calls("paypal", step) - before[step] for step in steps} == dict.fromkeys(steps, 1)
    finally:
        await paypal.close()
        await sim.close()


# ---- the collection gauges ---------------------------------------------------------------------

async def test_overdue_collections_read_zero_once_none_is_left(make_settings, monkeypatch):
    """Both gauges that show overdue collections (analytics' pending_collections, the collections
    service's platform_collections) set every status of a currency they know, so the last overdue
    one being collected reads 0 rather than the last count (which would keep its alert firing)."""
    def status_rows(make, *statuses: str):
        async def rows(session):
            return [make(status=s, currency="CHF", n=2, amount=Decimal("30.00")) for s in statuses]
        return rows

    def gauge(name: str, status: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"status": status, "currency": "CHF"})

    now = datetime.now(UTC)
    for create, cls, state, store, query, make, name in (
            (analytics_app, AnalyticsSettings, "reports", analytics_store, "collections_by_status",
             analytics_store.StatusTotal,
             "pending_collections"),
            (collections_app, CollectionsSettings, "collections.lookups", collections_store, "totals_by_status",
             collections_store.StatusTotal, "platform_collections")):
        app = create(make_settings(cls, log_level="error"))
        runtime = app.state.runtime
        runtime.consumer_specs, runtime.start_relay, runtime.start_jobs = (), False, False
        async with AsyncTestClient(app) as service:
            async def refresh(*statuses: str) -> None:
                monkeypatch.setattr(store, query, status_rows(make, *statuses))
                await asyncio.to_thread(service.blocking_portal.call, attrgetter(state)(app.state).refresh_metrics, now)

            await refresh("overdue", "collected")
            assert (gauge(name, "overdue"), gauge(name, "pending"), gauge(name, "failed")) == (2, 0, 0), name
            await refresh("collected")
            assert (gauge(name, "overdue"), gauge(name, "pending")) == (0, 0), name
