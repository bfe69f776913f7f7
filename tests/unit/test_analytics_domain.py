"""Analytics' pure parts: rollups stay the exact sum of the latest facts whatever order events
arrive in (checked against an integer oracle, not the code's own formula); the dashboard has every
day, type and processor; a worked Six Figure Barber example."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D

from hypothesis import given, settings
from hypothesis import strategies as st

from services.analytics.domain import (
    ALL_BARBERS,
    NONE,
    Fact,
    Measures,
    RollupRow,
    Visit,
    dashboard,
    measures_of,
    rollup_deltas,
    six_figure_insights,
    success_rate,
)

STATUSES = ["pending", "completed", "failed", "canceled", "partially_refunded", "refunded"]


def cents(n: int) -> D:
    return D(n).scaleb(-2)


def half_up_div(num: int, den: int) -> int:
    return (2 * num + den) // (2 * den)


@st.composite
def histories(draw):
    """Transactions, each a list of states in the producer's order (the last one is the truth)."""
    txs = []
    for tx in range(draw(st.integers(1, 6))):
        amount = draw(st.integers(1, 100_000))
        commission = draw(st.integers(0, amount))
        fee = draw(st.integers(0, 500))
        barber = draw(st.integers(1, 3))
        payment_type = draw(st.sampled_from(["centralized", "external"]))
        processor = "stripe" if payment_type == "centralized" else draw(st.sampled_from(["stripe", "square", "paypal"]))
        states = []
        for _ in range(draw(st.integers(1, 4))):
            status = draw(st.sampled_from(STATUSES))
            refunded = {"refunded": amount, "partially_refunded": draw(st.integers(1, amount))}.get(status, 0)
            day = date(2026, 11, 1) + timedelta(days=draw(st.integers(0, 2)))
            states.append(dict(tx=tx, barber=barber, payment_type=payment_type, processor=processor, status=status,
                               amount=amount, refunded=min(refunded, amount), commission=commission, fee=fee, day=day))
        txs.append(states)
    return txs


def fact_of(s: dict) -> Fact:
    return Fact(barber_id=s["barber"], payment_type=s["payment_type"], processor=s["processor"], currency="USD",
                source="live", status=s["status"], amount=cents(s["amount"]), refunded_amount=cents(s["refunded"]),
                commission_amount=cents(s["commission"]), processor_fee=cents(s["fee"]), day=s["day"])


def oracle(final_states: list[dict]) -> dict[tuple, tuple[int, ...]]:
    """Per (day, barber or 0) the figures in integer cents, computed here from scratch."""
    out: dict[tuple, list[int]] = {}
    for s in final_states:
        settled = s["status"] in ("completed", "partially_refunded", "refunded")
        kept = 0
        if settled:
            reversed_ = s["commission"] if s["refunded"] >= s["amount"] else half_up_div(
                s["commission"] * s["refunded"], s["amount"])
            kept = s["commission"] - reversed_
        fee_paid_by_barber = s["fee"] if s["payment_type"] == "external" else 0
        row = [1, int(settled), int(s["status"] == "failed"), s["amount"] if settled else 0,
               s["refunded"] if settled else 0, kept, s["fee"] if settled else 0,
               (s["amount"] - s["refunded"] - kept - fee_paid_by_barber) if settled else 0]
        for barber in (s["barber"], 0):
            key = (s["day"], barber)
            out[key] = [a + b for a, b in zip(out.get(key, [0] * 8), row)]
    return {k: tuple(v) for k, v in out.items() if any(v)}


@settings(max_examples=300)
@given(histories(), st.randoms(use_true_random=False))
def test_rollups_are_the_sum_of_the_latest_facts_in_any_delivery_order(txs, rnd):
    deliveries = [(s, seq) for states in txs for seq, s in enumerate(states, start=1)]
    deliveries += [rnd.choice(deliveries) for _ in range(len(deliveries) // 2)]  # redeliveries
    rnd.shuffle(deliveries)
    kept: dict[int, tuple[int, Fact]] = {}
    rollups: dict[tuple, Measures] = {}
    for state, seq in deliveries:
        current = kept.get(state["tx"])
        if current is not None and seq <= current[0]:
            continue  # old news (or the same again)
        after = fact_of(state)
        for key, delta in rollup_deltas(current[1] if current else None, after).items():
            rollups[key] = rollups.get(key, NONE) + delta
        kept[state["tx"]] = (seq, after)
    got = {}
    for (day, barber, *_), m in rollups.items():
        key = (day, barber)
        got[key] = got.get(key, NONE) + m
    as_cents = {k: (m.transaction_count, m.completed_count, m.failed_count,
                    *(int(getattr(m, f) * 100) for f in ("gross_volume", "refunded_amount", "commission",
                                                          "processor_fees", "barber_net")))
                for k, m in got.items() if not m.is_zero()}
    assert as_cents == oracle([states[-1] for states in txs])


def test_a_refund_keeps_the_payment_completed_and_counts_it_in_refunds():
    paid = Fact(barber_id=7, payment_type="external", processor="square", currency="USD", source="live",
                status="completed", amount=D("80.00"), refunded_amount=D(0), commission_amount=D("12.00"),
                processor_fee=D("2.62"), day=date(2026, 11, 2))
    half = Fact(**{**paid.__dict__, "status": "partially_refunded", "refunded_amount": D("40.00")})
    m = measures_of(half)
    assert (m.completed_count, m.gross_volume, m.refunded_amount, m.commission, m.barber_net) == (
        1, D("80.00"), D("40.00"), D("6.00"), D("80.00") - D("40.00") - D("6.00") - D("2.62"))
    deltas = rollup_deltas(paid, half)
    assert set(deltas) == {(date(2026, 11, 2), b, "external", "square", "USD", "live") for b in (7, ALL_BARBERS)}
    assert deltas[(date(2026, 11, 2), 7, "external", "square", "USD", "live")] == Measures(
        refunded_amount=D("40.00"), commission=D("-6.00"), barber_net=D("-34.00"))
    moved = Fact(**{**half.__dict__, "day": date(2026, 11, 3)})  # processed_at moved a day: the part moves
    assert sorted(k[0] for k in rollup_deltas(half, moved)) == [date(2026, 11, 2)] * 2 + [date(2026, 11, 3)] * 2


def test_the_dashboard_has_every_day_type_and_processor():
    m = Measures(transaction_count=2, completed_count=1, failed_count=1, gross_volume=D("10.00"))
    board = dashboard([RollupRow(date(2026, 11, 3), "external", "paypal", m),
                       RollupRow(date(2026, 12, 9), "external", "paypal", m)],  # outside: left out
                      date(2026, 11, 1), date(2026, 11, 5))
    assert [d for d, _ in board.daily] == [date(2026, 11, n) for n in range(1, 6)]
    assert [x for _, x in board.daily] == [NONE, NONE, m, NONE, NONE]
    assert board.totals == m and set(board.by_payment_type) == {"centralized", "external"}
    assert board.by_processor == {"stripe": NONE, "square": NONE, "paypal": m}
    assert success_rate(m) == D("0.5000") and success_rate(NONE) is None


NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


def test_six_figure_insights_worked_example():
    """Ten clients come every 14 days at 50.00 (60 visits in the last 90 days: 3,000.00); in the 90
    days before, clients 1-5 and 11-15 came once at 40.00 (400.00). Figures worked by hand:
    run rate 3000 x 365 / 90 = 12,166.67; weekly revenue 3000 x 7 / 90 = 233.33; weekly target
    100000 x 7 / 365 = 1,917.81; weekly gap (100000 - 12166.666..) x 7 / 365 = 1,684.47. To close it
    alone: a ticket of 50 x 100000 / 12166.666.. = 410.958.. -> 410.96; 1684.4749.. / 50 = 33.69 ->
    33.7 more clients a week; a visit every 14 / 8.2192 = 1.703 -> 1.7 days."""
    visits = [Visit(NOW - timedelta(days=1 + 14 * k), D("50.00"), client) for client in range(1, 11)
              for k in range(6)]
    visits += [Visit(NOW - timedelta(days=120), D("40.00"), client) for client in [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]]
    visits += [Visit(NOW - timedelta(days=200), D("999.00"), 1)]  # older than 180 days: ignored
    i = six_figure_insights(visits, now=NOW, target=D(100000), currency="USD")
    assert (i.has_history, i.revenue, i.transactions, i.annualized_run_rate, i.progress) == (
        True, D("3000.00"), 60, D("12166.67"), D("0.1217"))
    assert (i.average_ticket, i.transactions_per_week, i.weekly_revenue, i.weekly_target, i.weekly_gap) == (
        D("50.00"), D("4.67"), D("233.33"), D("1917.81"), D("1684.47"))
    assert (i.clients.distinct_clients, i.clients.retention_rate, i.clients.average_days_between_visits,
            i.clients.revenue_per_client) == (10, D("0.5000"), D("14.0"), D("300.00"))
    assert (i.trend.previous_revenue, i.trend.change_rate, i.trend.direction) == (D("400.00"), D("6.5000"), "up")
    by_lever = {r.lever: r for r in i.recommendations}
    assert (by_lever["price"].needed, by_lever["price"].change) == (D("410.96"), D("360.96"))
    assert "+721.92 %" in by_lever["price"].message
    assert (by_lever["volume"].change, by_lever["volume"].needed) == (D("33.7"), D("38.37"))
    assert (by_lever["frequency"].current, by_lever["frequency"].needed) == (D("14.0"), D("1.7"))


def test_insights_without_history_and_on_track():
    empty = six_figure_insights([], now=NOW, target=D(100000), currency="USD")
    assert (empty.has_history, empty.annualized_run_rate, empty.recommendations, empty.average_ticket) == (
        False, D("0.00"), [], None)
    assert "No completed payments" in empty.message and empty.trend.direction == "flat"
    rich = [Visit(NOW - timedelta(days=d), D("1000.00"), None) for d in range(1, 31)]  # 30,000 in 90 days
    on_track = six_figure_insights(rich, now=NOW, target=D(100000), currency="USD")
    assert (on_track.weekly_gap, on_track.recommendations, on_track.clients.distinct_clients) == (D("0.00"), [], 0)
    assert on_track.annualized_run_rate == D("121666.67") and on_track.trend.direction == "new"
    lapsed = six_figure_insights([Visit(NOW - timedelta(days=100), D("20.00"), 3)], now=NOW, target=D(100000),
                                 currency="USD")
    assert (lapsed.has_history, lapsed.recommendations, lapsed.annualized_run_rate) == (True, [], D("0.00"))
    assert (lapsed.trend.change_rate, lapsed.trend.direction) == (D("-1.0000"), "down")
