"""The analytics service against real Postgres and NATS: events fed through JetStream (duplicated,
out of order, a refund before its payment, legacy history, collections) and every dashboard number
checked against sums this test computes itself, in integer cents, from the states it sent; the
insights of a barber with a known history; who may see what; bad input; the Prometheus gauges.

Figures of March 2031 are this module's alone (other modules' payments happen now), so even the
all-barbers dashboard is checked exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import msgspec
import nats
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from services.analytics import store
from services.analytics import tables as at
from services.analytics.app import create_app
from services.analytics.settings import AnalyticsSettings
from shared.db import PlatformTables
from shared.events import (
    CollectionDue,
    CollectionSettled,
    TransactionImported,
    TransactionRecorded,
    encode_event,
    new_event,
)
from tests.integration.router_support import admin, barber
from tests.support import eventually

BASE = "/api/v1/unified-payment-analytics"
_ids = itertools.count(1)
platform = PlatformTables(at.metadata)
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
MARCH = date(2031, 3, 1)
APRIL = date(2031, 4, 1)
TYPES, PROCESSORS = ("centralized", "external"), ("stripe", "square", "paypal")


def next_barber() -> int:
    return 700_000 + next(_ids)


@pytest.fixture(scope="module")
async def app(make_settings):
    settings = make_settings(AnalyticsSettings, log_level="error", analytics_metrics_window_days=366)
    application = create_app(settings, clock=lambda: NOW)
    application.state.runtime.start_jobs = False
    return application


@pytest.fixture(scope="module")
async def client(app):
    async with AsyncTestClient(app) as test_client:
        yield test_client


@pytest.fixture
async def js(infra):
    nc = await nats.connect(infra.nats_url)
    yield nc.jetstream()
    await nc.close()


async def publish(js, event_names, event, *, again: bool = False) -> None:
    """`again`: a redelivery JetStream's own duplicate window does not catch (another message id),
    so only the consumer's claim on the event id stands between it and a second count."""
    await js.publish(event_names["EVENT_SUBJECT_PREFIX"] + event.event_type, encode_event(event),
                     headers={"Nats-Msg-Id": str(uuid.uuid4()) if again else str(event.event_id)})


async def all_applied(db, events) -> None:
    ids = {e.event_id for e in events}
    processed = platform.processed_events

    async def seen():
        async with db.connect() as conn:
            found = set((await conn.execute(sa.select(processed.c.event_id).where(
                processed.c.event_id.in_(ids)))).scalars())
        return found == ids

    await eventually(seen, timeout=30, interval=0.1)


async def drained(js, event_names, durable: str) -> None:
    async def nothing_left():
        info = await js.consumer_info(event_names["EVENT_STREAM"], durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(nothing_left, timeout=30, interval=0.1)


def cents(n: int) -> Decimal:
    return Decimal(n).scaleb(-2)


def money(n: int) -> str:
    return f"{Decimal(n).scaleb(-2):.2f}"


# ---- a random month of payments, and its figures computed here ------------------------------------------

def payment_history(rnd: random.Random, barbers: list[int]) -> list[list[dict]]:
    """Per transaction, its states in the producer's order: created, then settled, then refunds."""
    txs = []
    for n in range(60):
        b = rnd.choice(barbers)
        payment_type = rnd.choice(TYPES)
        processor = "stripe" if payment_type == "centralized" else rnd.choice(PROCESSORS)
        amount = rnd.randint(500, 30_000)
        commission = amount * rnd.choice([10, 15, 20]) // 100
        fee = amount * 29 // 1000 + 30
        day = MARCH + timedelta(days=rnd.randint(0, 9))
        base = dict(tx=f"an-{b}-{n}-{uuid.uuid4().hex[:6]}", barber=b, payment_type=payment_type,
                    processor=processor, amount=amount, commission=commission, fee=fee, day=day,
                    client=rnd.choice([None, 1, 2, 3]), source="legacy" if rnd.random() < 0.15 else "live")
        states = [dict(base, status="pending", refunded=0)]
        outcome = rnd.random()
        if outcome < 0.15:
            states.append(dict(base, status="failed", refunded=0))
        elif outcome < 0.2:
            states.append(dict(base, status="canceled", refunded=0))
        else:
            states.append(dict(base, status="completed", refunded=0))
            refunded = 0
            for _ in range(rnd.choice([0, 0, 1, 2])):
                refunded = min(amount, refunded + rnd.randint(1, amount))
                states.append(dict(base, status="refunded" if refunded == amount else "partially_refunded",
                                   refunded=refunded))
        txs.append(states)
    return txs


def event_of(state: dict, sequence: int):
    return new_event(TransactionRecorded(
        transaction_id=state["tx"], barber_id=state["barber"], appointment_id=1, client_id=state["client"],
        payment_type=state["payment_type"], processor=state["processor"],
        connection_id=None if state["payment_type"] == "centralized" else 1, external_transaction_id=None,
        amount=cents(state["amount"]), refunded_amount=cents(state["refunded"]), currency="USD",
        status=state["status"], commission_rate=Decimal("0.20"), commission_amount=cents(state["commission"]),
        processor_fee=cents(state["fee"]),
        processed_at=datetime(state["day"].year, state["day"].month, state["day"].day, 15, tzinfo=UTC),
        sequence=sequence, source=state["source"]))


def expected_figures(final: list[dict]) -> dict:
    """Per scope (a barber, or "all"), per view: figures in integer cents, from the final states."""
    out: dict = defaultdict(lambda: [0] * 8)
    for s in final:
        settled = s["status"] in ("completed", "partially_refunded", "refunded")
        kept = 0
        if settled:
            reversed_ = s["commission"] if s["refunded"] == s["amount"] else (
                2 * s["commission"] * s["refunded"] + s["amount"]) // (2 * s["amount"])
            kept = s["commission"] - reversed_
        row = [1, int(settled), int(s["status"] == "failed"), s["amount"] * settled, s["refunded"] * settled, kept,
               s["fee"] * settled,
               (s["amount"] - s["refunded"] - kept - (s["fee"] if s["payment_type"] == "external" else 0)) * settled]
        for scope in (s["barber"], "all"):
            for view in (("totals",), ("type", s["payment_type"]), ("processor", s["processor"]), ("day", s["day"]),
                         ("source", s["source"])):
                key = (scope, *view)
                out[key] = [a + b for a, b in zip(out[key], row)]
    return out


NAMES = ("transaction_count", "completed_count", "failed_count", "gross_volume", "refunded_amount", "commission",
         "processor_fees", "barber_net")


def as_wire(figures: list[int]) -> dict:
    wire = {name: (value if i < 3 else money(value)) for i, (name, value) in enumerate(zip(NAMES, figures))}
    decided = figures[1] + figures[2]
    wire["success_rate"] = None if not decided else str((Decimal(figures[1]) / decided).quantize(Decimal("0.0001")))
    return wire


async def test_every_dashboard_number_is_the_sum_of_what_was_sent(client, db, js, event_names):
    rnd = random.Random(20261126)
    barbers = [next_barber() for _ in range(4)]
    txs = payment_history(rnd, barbers)
    events = [event_of(state, seq) for states in txs for seq, state in enumerate(states, start=1)]
    # Out of order (a refund often before its payment), and some delivered twice (the same event).
    deliveries = [(e, False) for e in events] + [(e, True) for e in rnd.sample(events, len(events) // 4)]
    rnd.shuffle(deliveries)
    # A refund's state first of all, before its payment's (the payment's own events then are old news).
    refunded = next(states for states in txs if len(states) > 2)
    refund = [e for e in events if e.decode(TransactionRecorded).transaction_id == refunded[-1]["tx"]][-1]
    deliveries.remove((refund, False))
    deliveries.insert(0, (refund, False))
    for event, again in deliveries:
        await publish(js, event_names, event, again=again)
    await all_applied(db, events)
    await drained(js, event_names, "analytics-transactions")  # the second copies were tried too
    expected = expected_figures([states[-1] for states in txs])
    zero = [0] * 8
    period = {"from": "2031-03-01", "to": "2031-03-10"}
    for scope, headers, params in [*((b, barber(b), {}) for b in barbers), ("all", admin(), {})]:
        response = await client.get(f"{BASE}/dashboard", headers=headers, params={**period, **params})
        assert response.status_code == 200, response.text
        board = response.json()
        assert board["totals"] == as_wire(expected.get((scope, "totals"), zero)), scope
        assert board["by_payment_type"] == {t: as_wire(expected.get((scope, "type", t), zero)) for t in TYPES}
        assert board["by_processor"] == {p: as_wire(expected.get((scope, "processor", p), zero)) for p in PROCESSORS}
        days = [MARCH + timedelta(days=n) for n in range(10)]
        assert board["daily"] == [{"date": d.isoformat(), **as_wire(expected.get((scope, "day", d), zero))}
                                  for d in days]
        for source in ("live", "legacy"):  # legacy history counts everywhere, and can be told apart
            only = (await client.get(f"{BASE}/dashboard", headers=headers,
                                     params={**period, **params, "source": source})).json()
            assert only["totals"] == as_wire(expected.get((scope, "source", source), zero)), (scope, source)
    # An admin can look at one barber too, and a payment outside the range counts nowhere in it.
    one = (await client.get(f"{BASE}/dashboard", headers=admin(), params={**period, "barber_id": barbers[0]})).json()
    assert one["totals"] == as_wire(expected.get((barbers[0], "totals"), zero))
    before = (await client.get(f"{BASE}/dashboard", headers=admin(),
                               params={"from": "2031-02-01", "to": "2031-02-28"})).json()
    assert before["totals"] == as_wire(zero) and len(before["daily"]) == 28


async def test_a_bulk_import_counts_every_legacy_payment_once(client, db, js, event_names):
    """`transaction.imported` batches big enough for the bulk (COPY) writes of facts and of rollups:
    3 events of 450 legacy payments of 40 barbers over 10 days, one of them delivered again under
    another message id, and one payment repeated in a later event with an older sequence. Every
    figure equals a sum computed here, each payment once."""
    rnd = random.Random(20261205)
    barbers = [next_barber() for _ in range(40)]
    final = []
    for n in range(1350):
        amount = rnd.randint(100, 50_000)
        final.append(dict(tx=f"bulk-{barbers[0]}-{n}", barber=rnd.choice(barbers), payment_type="centralized",
                          processor="stripe", amount=amount, commission=amount * 15 // 100, fee=amount * 29 // 1000 + 30,
                          day=APRIL + timedelta(days=rnd.randint(0, 9)), client=rnd.choice([None, 1, 2]),
                          source="legacy", status=rnd.choice(["completed"] * 9 + ["refunded"]), refunded=0))
        if final[-1]["status"] == "refunded":
            final[-1]["refunded"] = amount
    payloads = [event_of(state, 2).decode(TransactionRecorded) for state in final]
    batches = [new_event(TransactionImported(transactions=payloads[i:i + 450])) for i in range(0, 1350, 450)]
    # Each batch moves more rollup rows (a barber's day, and all barbers' day) than the bulk path's threshold.
    assert all(len({(p.barber_id, p.processed_at.date()) for p in payloads[i:i + 450]}) >= store.COPY_FROM
               for i in range(0, 1350, 450))
    stale = msgspec.structs.replace(payloads[0], sequence=1, status="pending", refunded_amount=Decimal(0))
    late = new_event(TransactionImported(transactions=[stale]))  # older than what the first batch holds
    for event in batches:
        await publish(js, event_names, event)
    await publish(js, event_names, batches[1], again=True)
    await publish(js, event_names, late)
    await all_applied(db, [*batches, late])
    await drained(js, event_names, "analytics-imports")
    expected = expected_figures(final)
    period = {"from": "2031-04-01", "to": "2031-04-10"}  # April: March's all-barbers figures stay exact
    for b in barbers:
        board = (await client.get(f"{BASE}/dashboard", headers=admin(), params={**period, "barber_id": b})).json()
        assert board["totals"] == as_wire(expected[(b, "totals")]), b
        assert board["daily"] == [{"date": d.isoformat(), **as_wire(expected.get((b, "day", d), [0] * 8))}
                                  for d in (APRIL + timedelta(days=n) for n in range(10))], b


async def test_commission_collected_and_outstanding_follow_the_collections(client, db, js, event_names):
    b = next_barber()
    day = datetime(2031, 3, 12, 15, tzinfo=UTC)
    payments = [new_event(TransactionRecorded(
        transaction_id=f"an-coll-{b}-{n}", barber_id=b, appointment_id=1, client_id=None, payment_type="external",
        processor="square", connection_id=1, external_transaction_id=None, amount=Decimal("100.00"),
        refunded_amount=Decimal(0), currency="USD", status="completed", commission_rate=Decimal("0.15"),
        commission_amount=Decimal("15.00"), processor_fee=Decimal("3.20"), processed_at=day, sequence=1))
        for n in range(4)]  # 60.00 owed
    one, two = str(uuid.uuid4()), str(uuid.uuid4())

    def due(cid, amount):
        return new_event(CollectionDue(collection_id=cid, barber_id=b, amount=Decimal(amount), currency="USD",
                                       transaction_ids=[], due_date=day.date(), attempt=1), now=day)

    def settled(cid, amount, status, at):
        return new_event(CollectionSettled(collection_id=cid, barber_id=b, amount=Decimal(amount), currency="USD",
                                           status=status, failed_reason=None if status == "collected" else "declined"),
                         now=at)

    collected = settled(one, "30.00", "collected", day + timedelta(days=1))
    events = [*payments, collected, due(one, "30.00"),  # settled before its due: still collected once
              due(two, "30.00"), settled(two, "30.00", "failed", day + timedelta(days=1))]
    for event in events:
        await publish(js, event_names, event)
    await publish(js, event_names, collected, again=True)  # and the collection delivered twice
    await all_applied(db, events)
    await drained(js, event_names, "analytics-collections-settled")
    params = {"from": "2031-03-11", "to": "2031-03-14", "barber_id": b}
    board = (await client.get(f"{BASE}/dashboard", headers=admin(), params=params)).json()
    assert (board["commission_collected"], board["commission_outstanding"]) == ("30.00", "30.00")
    assert board["by_payment_type"]["external"]["commission"] == "60.00"
    # Before the collection happened, all 60.00 was outstanding and nothing collected.
    earlier = (await client.get(f"{BASE}/dashboard", headers=admin(),
                                params={**params, "to": "2031-03-12"})).json()
    assert (earlier["commission_collected"], earlier["commission_outstanding"]) == ("0.00", "60.00")
    async with db.connect() as conn:
        states = dict((await conn.execute(sa.select(at.collection_facts.c.collection_id, at.collection_facts.c.status)
                                          .where(at.collection_facts.c.barber_id == b))).all())
    assert states == {uuid.UUID(one): "collected", uuid.UUID(two): "failed"}


async def test_insights_for_a_barber_with_a_known_history(client, db, js, event_names):
    """The worked example of the unit tests, fed as events: ten clients every 14 days at 50.00 in
    the last 90 days, ten clients (five of them the same) once at 40.00 in the 90 before, one
    refunded visit that brings nothing, and one payment in another currency."""
    b = next_barber()
    events = []
    for client_id in range(1, 11):
        for k in range(6):
            events.append((client_id, NOW - timedelta(days=1 + 14 * k), "50.00", "0.00", "USD"))
    for client_id in [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]:
        events.append((client_id, NOW - timedelta(days=120), "40.00", "0.00", "USD"))
    events.append((16, NOW - timedelta(days=3), "70.00", "70.00", "USD"))  # refunded in full: revenue 0
    events.append((17, NOW - timedelta(days=3), "500.00", "0.00", "EUR"))
    sent = []
    for n, (client_id, at_, amount, refunded, currency) in enumerate(events):
        status = "refunded" if refunded != "0.00" else "completed"
        sent.append(new_event(TransactionRecorded(
            transaction_id=f"an-ins-{b}-{n}", barber_id=b, appointment_id=n, client_id=client_id,
            payment_type="external", processor="stripe", connection_id=1, external_transaction_id=None,
            amount=Decimal(amount), refunded_amount=Decimal(refunded), currency=currency, status=status,
            commission_rate=Decimal("0.10"), commission_amount=Decimal(amount) / 10, processor_fee=Decimal("1.00"),
            processed_at=at_, sequence=1)))
    for event in sent:
        await publish(js, event_names, event)
    await all_applied(db, sent)
    response = await client.get(f"{BASE}/six-figure-insights", headers=barber(b))
    assert response.status_code == 200, response.text
    i = response.json()
    # The refunded visit counts as a visit bringing 0.00: 61 visits, 3,000.00.
    assert (i["has_history"], i["revenue_90d"], i["transactions_90d"], i["annualized_run_rate"], i["target"]) == (
        True, "3000.00", 61, "12166.67", "100000.00")
    assert (i["average_ticket"], i["weekly_revenue"], i["weekly_target"], i["weekly_revenue_gap"]) == (
        "49.18", "233.33", "1917.81", "1684.47")
    assert i["clients"] == {"distinct_clients": 11, "retention_rate": "0.5000", "average_days_between_visits": "14.0",
                            "revenue_per_client": "272.73"}
    assert i["trend"] == {"previous_revenue_90d": "400.00", "change_rate": "6.5000", "direction": "up"}
    levers = {r["lever"]: r for r in i["recommendations"]}
    # The ticket that closes the gap: 100000 / (365 / 90) / 61 visits = 9,000,000 / 22,265 = 404.2218..,
    # rounded up to the cent (a ticket rounded down would fall short).
    assert (levers["price"]["needed"], levers["frequency"]["needed"]) == ("404.23", "1.7")
    eur = (await client.get(f"{BASE}/six-figure-insights", headers=barber(b), params={"currency": "eur"})).json()
    assert (eur["currency"], eur["revenue_90d"], eur["transactions_90d"]) == ("EUR", "500.00", 1)
    nobody = (await client.get(f"{BASE}/six-figure-insights", headers=barber(next_barber()))).json()
    assert (nobody["has_history"], nobody["recommendations"], nobody["annualized_run_rate"]) == (False, [], "0.00")
    assert nobody["message"].startswith("No completed payments")


async def test_insights_of_a_barber_whose_recent_payments_were_all_refunded_answer_200(client, db, js, event_names):
    """Regression: a barber whose only payments of the last 90 days were refunded in full has
    visits but no revenue; the insights failed an `assert` and answered 500."""
    b = next_barber()
    sent = []
    for n, days_ago in enumerate((5, 40)):
        common = dict(transaction_id=f"an-refunded-{b}-{n}", barber_id=b, appointment_id=n, client_id=21,
                      payment_type="external", processor="square", connection_id=1, external_transaction_id=None,
                      amount=Decimal("60.00"), currency="USD", commission_rate=Decimal("0.10"),
                      commission_amount=Decimal("6.00"), processor_fee=Decimal("2.04"),
                      processed_at=NOW - timedelta(days=days_ago))
        sent.append(new_event(TransactionRecorded(**common, refunded_amount=Decimal(0), status="completed",
                                                  sequence=1)))
        sent.append(new_event(TransactionRecorded(**common, refunded_amount=Decimal("60.00"), status="refunded",
                                                  sequence=2)))
    for event in sent:
        await publish(js, event_names, event)
    await all_applied(db, sent)
    response = await client.get(f"{BASE}/six-figure-insights", headers=barber(b))
    assert response.status_code == 200, response.text
    i = response.json()
    assert (i["has_history"], i["revenue_90d"], i["transactions_90d"], i["annualized_run_rate"], i["progress"]) == (
        True, "0.00", 2, "0.00", "0.0000")
    # Nothing kept, so the whole weekly target is the gap: 100000 x 7 / 365 = 1917.808.. -> 1917.81.
    assert (i["average_ticket"], i["weekly_revenue"], i["weekly_target"], i["weekly_revenue_gap"]) == (
        "0.00", "0.00", "1917.81", "1917.81")
    assert i["recommendations"] == []
    assert "refund" in i["message"] and "zero" in i["message"]
    assert i["clients"] == {"distinct_clients": 1, "retention_rate": None, "average_days_between_visits": "35.0",
                            "revenue_per_client": "0.00"}
    assert i["trend"] == {"previous_revenue_90d": "0.00", "change_rate": None, "direction": "flat"}


async def test_who_sees_what_and_bad_input_is_a_422_naming_the_field(client):
    b = next_barber()
    other = (await client.get(f"{BASE}/dashboard", headers=barber(b), params={"barber_id": b + 1}))
    assert other.status_code == 403
    assert (await client.get(f"{BASE}/dashboard", headers=barber(b), params={"barber_id": b})).status_code == 200
    assert (await client.get(f"{BASE}/dashboard")).status_code == 401
    assert (await client.get(f"{BASE}/six-figure-insights", headers=barber(b),
                             params={"barber_id": b + 1})).status_code == 403
    missing = await client.get(f"{BASE}/six-figure-insights", headers=admin())
    assert missing.status_code == 422 and missing.json()["field"] == "barber_id"
    for params, field in [({"from": "2031-03-10", "to": "2031-03-01"}, "from"), ({"from": "yesterday"}, "from"),
                          ({"to": "2031-02-30"}, "to"), ({"from": "2020-01-01", "to": "2031-01-01"}, "to"),
                          ({"currency": "XXY"}, "currency"), ({"currency": "US"}, "currency"),
                          ({"source": "imported"}, "source"), ({"barber_id": "0"}, "barber_id"),
                          ({"barber_id": "abc"}, "barber_id")]:
        response = await client.get(f"{BASE}/dashboard", headers=admin(), params=params)
        assert response.status_code in (400, 422) and field in response.text, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_switched_off_features_answer_404(make_settings):
    settings = make_settings(AnalyticsSettings, log_level="error", unified_analytics_enabled=False,
                             six_figure_insights_enabled=False)
    async with AsyncTestClient(create_app(settings)) as off:
        app_state = off.app.state.runtime
        app_state.start_jobs = False
        for path in ("/dashboard", "/six-figure-insights"):
            response = await off.get(f"{BASE}{path}", headers=barber(5))
            assert response.status_code == 404 and response.json()["code"] == "feature_disabled"


async def test_the_gauges_show_success_rates_volume_and_collections(client, app, db, js, event_names):
    reports = app.state.reports
    await asyncio.to_thread(client.blocking_portal.call, reports.refresh_metrics, datetime(2031, 3, 20, tzinfo=UTC))
    text = (await client.get("/metrics")).text
    for name in ('payment_success_rate{payment_type="all",processor="all"}',
                 'payment_success_rate{payment_type="external",processor="square"}',
                 'payment_volume{currency="USD",payment_type="centralized",processor="stripe"}',
                 'commission_collection_rate{currency="USD"}',
                 'pending_collections{currency="USD",status="failed"}'):
        assert name in text, name


async def test_the_event_pipeline_is_measured(client, app, db, js, event_names):
    """Every service exports its outbox backlog, each consumer's lag and its parked events; a drained
    consumer shows no lag."""
    await drained(js, event_names, "analytics-transactions")
    await asyncio.to_thread(client.blocking_portal.call, app.state.runtime.refresh_pipeline_metrics)
    text = (await client.get("/metrics")).text
    assert 'consumer_lag{consumer="analytics-transactions"} 0.0' in text
    for name in ('outbox_backlog{service="analytics"}', 'dead_letters_waiting{service="analytics"}',
                 'consumer_lag{consumer="analytics-collections-settled"}'):
        assert name in text, name

    # A discarded dead letter is dealt with: only those neither replayed nor discarded are waiting.
    parked = platform.dead_letters
    async with db.begin() as conn:
        await conn.execute(sa.insert(parked).values(
            consumer="analytics-transactions", event_id=uuid.uuid4(), event_type="transaction.recorded",
            subject="x", body=b"{}", error="test", attempts=5, discarded_at=datetime.now(UTC)))
        waiting = await conn.scalar(sa.select(sa.func.count()).select_from(parked).where(
            parked.c.replayed_at.is_(None), parked.c.discarded_at.is_(None)))
    await asyncio.to_thread(client.blocking_portal.call, app.state.runtime.refresh_pipeline_metrics)
    text = (await client.get("/metrics")).text
    assert f'dead_letters_waiting{{service="analytics"}} {float(waiting)}' in text
