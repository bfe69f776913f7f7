"""Analytics' pure parts: the rollup deltas along any run of a transaction's states sum to its
latest state (checked against an integer oracle, not the code's own formula); the dashboard has
every day, type and processor; a worked Six Figure Barber example, and insights that hold up
whatever the history (refunded visits, zero revenue, a run rate a cent short)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D

import msgspec
import pytest
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
@given(histories(), st.data())
def test_rollup_deltas_along_any_rising_run_of_states_sum_to_the_latest_state(txs, data):
    """Whatever states of a transaction the consumer happens to apply (an increasing run of its
    sequence numbers ending at the newest, intermediate ones skipped when they come late), the
    deltas `rollup_deltas` gives along that run add up to the newest state's figures, checked
    against an integer-cents oracle. Delivery order and the sequence guard themselves are driven
    through the real consumer code in tests/integration/test_projection_order.py."""
    rollups: dict[tuple, Measures] = {}
    for states in txs:
        skipped = data.draw(st.lists(st.booleans(), min_size=len(states) - 1, max_size=len(states) - 1))
        run = [s for s, skip in zip(states, skipped) if not skip] + [states[-1]]
        before = None
        for state in run:
            after = fact_of(state)
            for key, delta in rollup_deltas(before, after).items():
                rollups[key] = rollups.get(key, NONE) + delta
            before = after
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
    half = msgspec.structs.replace(paid, **{"status": "partially_refunded", "refunded_amount": D("40.00")})
    m = measures_of(half)
    assert (m.completed_count, m.gross_volume, m.refunded_amount, m.commission, m.barber_net) == (
        1, D("80.00"), D("40.00"), D("6.00"), D("80.00") - D("40.00") - D("6.00") - D("2.62"))
    deltas = rollup_deltas(paid, half)
    assert set(deltas) == {(date(2026, 11, 2), b, "external", "square", "USD", "live") for b in (7, ALL_BARBERS)}
    assert deltas[(date(2026, 11, 2), 7, "external", "square", "USD", "live")] == Measures(
        refunded_amount=D("40.00"), commission=D("-6.00"), barber_net=D("-34.00"))
    moved = msgspec.structs.replace(half, **{"day": date(2026, 11, 3)})  # processed_at moved a day: the part moves
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


def test_insights_when_refunds_took_back_every_recent_payment():
    """A barber whose only payments of the last 90 days were refunded in full: two visits that
    brought 0.00. Regression: this tripped an `assert` (a ZeroDivisionError under -O) and the
    endpoint answered 500."""
    refunded = [Visit(NOW - timedelta(days=3), D("0.00"), 16), Visit(NOW - timedelta(days=10), D("0.00"), None)]
    i = six_figure_insights(refunded, now=NOW, target=D(100000), currency="USD")
    assert (i.has_history, i.revenue, i.transactions, i.annualized_run_rate, i.progress, i.average_ticket) == (
        True, D("0.00"), 2, D("0.00"), D("0.0000"), D("0.00"))
    # The whole weekly target is missing: 100000 x 7 / 365 = 1917.808.. -> 1917.81.
    assert (i.weekly_revenue, i.weekly_target, i.weekly_gap) == (D("0.00"), D("1917.81"), D("1917.81"))
    assert i.recommendations == []  # no lever scales revenue that is zero
    assert "refund" in i.message and "zero" in i.message
    assert (i.clients.distinct_clients, i.clients.revenue_per_client) == (1, D("0.00"))
    assert (i.trend.change_rate, i.trend.direction) == (None, "flat")


def test_a_run_rate_a_cent_short_is_not_on_track():
    """24,657.53 in 90 days is a run rate of 24657.53 x 365 / 90 = 99,999.98..: short of 100,000 by
    0.0175 a year, 0.0003 a week. Rounded half-up that gap read 0.00 and the message said "On
    track"; it now shows the smallest amount, and the ticket that closes it is one cent more."""
    i = six_figure_insights([Visit(NOW - timedelta(days=3), D("24657.53"), 1)], now=NOW, target=D(100000),
                            currency="USD")
    assert (i.annualized_run_rate, i.weekly_gap) == (D("99999.98"), D("0.01"))
    assert "On track" not in i.message
    price = next(r for r in i.recommendations if r.lever == "price")
    # 100000 x 90 / 365 = 24657.534.. -> 24657.54 (24657.53 falls short, see above).
    assert (price.current, price.needed) == (D("24657.53"), D("24657.54"))


def test_insights_when_refunds_exceed_what_was_paid():
    """Net revenue below zero (a refund recorded larger than its payment) is reported as it is, with
    no levers and no division by it; a previous window below zero gives no change rate."""
    visits = [Visit(NOW - timedelta(days=2), D("-5.00"), 1), Visit(NOW - timedelta(days=120), D("-1.00"), 1)]
    i = six_figure_insights(visits, now=NOW, target=D(100000), currency="USD")
    assert (i.revenue, i.transactions, i.recommendations) == (D("-5.00"), 1, [])
    # -5 x 365 / 90 = -20.277.. -> -20.28; (100000 + 20.277..) x 7 / 365 = 1918.197.. -> 1918.20.
    assert (i.annualized_run_rate, i.weekly_gap, i.progress) == (D("-20.28"), D("1918.20"), D("-0.0002"))
    assert "refunded" in i.message
    assert (i.trend.change_rate, i.trend.direction) == (None, "down")


def test_a_target_of_zero_is_refused_with_a_reason():
    # Settings keep SIX_FIGURE_TARGET at 0.01 or more; a direct caller gets a ValueError, not an assert.
    with pytest.raises(ValueError, match="target must be positive"):
        six_figure_insights([], now=NOW, target=D(0), currency="USD")


@st.composite
def barber_histories(draw):
    """Completed payments of the last 200 days in whole seconds (revenue in minor units, zeros
    common: refunded in full), and a target, in USD or a currency without decimals."""
    exponent = draw(st.sampled_from([2, 0]))
    visits = draw(st.lists(st.tuples(st.integers(0, 200 * 86400 - 1),
                                     st.one_of(st.just(0), st.integers(0, 10**6)),
                                     st.one_of(st.none(), st.integers(1, 6))), max_size=30))
    target = draw(st.one_of(st.integers(1, 10**9), st.just(10**7 * 10**exponent)))
    return ("USD" if exponent == 2 else "JPY"), exponent, visits, target


@settings(max_examples=300)
@given(barber_histories())
def test_insights_never_fail_and_progress_gap_and_levers_agree(history):
    """Any history: no exception, and the figures agree with each other and with sums done here in
    integer minor units: the gap is zero exactly when the shown run rate reaches the target, there
    are recommendations exactly when there is kept revenue that falls short, and each lever, moved
    alone, reaches the target, by the smallest step its rounding allows."""
    currency, e, raw, target_m = history
    visits = [Visit(NOW - timedelta(seconds=s), D(m).scaleb(-e), c) for s, m, c in raw]
    target = D(target_m).scaleb(-e)
    i = six_figure_insights(visits, now=NOW, target=target, currency=currency)

    current = [(s, m, c) for s, m, c in raw if s < 90 * 86400]
    revenue_m, count = sum(m for _, m, _ in current), len(current)
    assert (i.revenue, i.transactions) == (D(revenue_m).scaleb(-e), count)
    assert i.has_history == any(s < 180 * 86400 for s, _, _ in raw)
    run_rate_m = half_up_div(revenue_m * 365, 90)  # the run rate as shown, in minor units
    assert i.annualized_run_rate == D(run_rate_m).scaleb(-e)
    reaches = run_rate_m >= target_m
    assert i.weekly_gap >= 0
    assert (i.weekly_gap == 0) == reaches
    if reaches:
        assert i.progress >= 1 and "On track" in i.message
    else:
        assert i.progress <= 1
    assert abs(i.progress - D(run_rate_m) / D(target_m)) <= D("0.00005")
    assert bool(i.recommendations) == (count > 0 and revenue_m > 0 and not reaches)
    if not i.recommendations:
        return
    levers = {r.lever: r for r in i.recommendations}
    # price: the smallest ticket (minor units) at which today's visits reach the target.
    ticket_m = int(levers["price"].needed.scaleb(e))
    assert ticket_m * count * 365 >= target_m * 90 > (ticket_m - 1) * count * 365
    # volume: the fewest extra clients a week (tenths) at today's exact average ticket.
    x = int(levers["volume"].change * 10)
    weekly_target = target_m * 7 * 90 * 10 * count
    assert revenue_m * 7 * 365 * 10 * count + x * revenue_m * 90 * 365 >= weekly_target
    assert revenue_m * 7 * 365 * 10 * count + (x - 1) * revenue_m * 90 * 365 < weekly_target
    # frequency: the longest visit interval (tenths of a day) at which revenue, scaled by how much
    # more often clients come, reaches the target; never an interval of 0.0.
    by_client: dict[int, list[int]] = {}
    for s, _, c in current:
        if c is not None:
            by_client.setdefault(c, []).append(s)
    gaps = [b - a for times in by_client.values() for a, b in zip(sorted(times), sorted(times)[1:])]
    interval = half_up_div(sum(gaps) * 10, 86400 * len(gaps)) if gaps else 0  # tenths of a day
    assert i.clients.average_days_between_visits == (D(interval).scaleb(-1) if gaps else None)
    needed = (revenue_m * interval * 365) // (target_m * 90)  # tenths, rounded down
    if needed >= 1:
        assert int(levers["frequency"].needed * 10) == needed and levers["frequency"].current == D(interval) / 10
    else:
        assert "frequency" not in levers


@given(st.lists(st.integers(-10**6, 10**6), min_size=16, max_size=16))
def test_measures_add_and_subtract_field_by_field(values):
    """`Measures` arithmetic is spelled out field by field (for speed): every field takes part, in
    its own place, whatever fields the class has."""
    a = Measures(*values[:3], *map(cents, values[3:8]))
    b = Measures(*values[8:11], *map(cents, values[11:16]))
    fields = list(Measures.__struct_fields__)
    assert [getattr(a + b, f) for f in fields] == [getattr(a, f) + getattr(b, f) for f in fields]
    assert [getattr(a - b, f) for f in fields] == [getattr(a, f) - getattr(b, f) for f in fields]
    assert (a - a).is_zero() and (a - a) == NONE
    assert a.is_zero() == all(not getattr(a, f) for f in fields)
