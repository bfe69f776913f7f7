"""The analytics service's decisions: plain functions over plain values, no I/O, no clock.

- Rollups: what one transaction's state adds to the daily rollups (`measures_of`), and the deltas
  that move them from its previous state to its new one (`rollup_deltas`), so the rollups are
  always the exact sum of the latest facts, whatever order the events came in.
- The dashboard from rollup rows (`dashboard`): totals, by payment type, by processor, and a daily
  series without gaps.
- Six Figure Barber insights (`six_figure_insights`) from a barber's visits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

import msgspec

from shared.commission import SETTLED, commission_earned
from shared.money import minor_unit_exponent, round_money

ALL_BARBERS = 0  # the rollup row that sums every barber (barber ids start at 1)
PAYMENT_TYPES = ("centralized", "external")
PROCESSORS = ("stripe", "square", "paypal")
ZERO = Decimal(0)


# ---- rollups -----------------------------------------------------------------------------------------

class Measures(msgspec.Struct, frozen=True):
    """What a set of transactions adds up to. Amounts are in one currency. (A frozen Struct, as
    `Fact`: analytics builds a few for each payment it applies, and a frozen dataclass builds
    itself one `object.__setattr__` per field.)"""

    transaction_count: int = 0
    completed_count: int = 0
    failed_count: int = 0
    gross_volume: Decimal = ZERO
    refunded_amount: Decimal = ZERO
    commission: Decimal = ZERO
    processor_fees: Decimal = ZERO
    barber_net: Decimal = ZERO

    # Spelled out field by field: the legacy import's catch-up adds up millions of these, and a loop
    # over the field names was a sixth of analytics' CPU there.
    def __add__(self, other: Measures) -> Measures:
        return Measures(
            self.transaction_count + other.transaction_count, self.completed_count + other.completed_count,
            self.failed_count + other.failed_count, self.gross_volume + other.gross_volume,
            self.refunded_amount + other.refunded_amount, self.commission + other.commission,
            self.processor_fees + other.processor_fees, self.barber_net + other.barber_net)

    def __neg__(self) -> Measures:
        return Measures(-self.transaction_count, -self.completed_count, -self.failed_count, -self.gross_volume,
                        -self.refunded_amount, -self.commission, -self.processor_fees, -self.barber_net)

    def __sub__(self, other: Measures) -> Measures:
        return self + -other

    def is_zero(self) -> bool:
        return not (self.transaction_count or self.completed_count or self.failed_count or self.gross_volume
                    or self.refunded_amount or self.commission or self.processor_fees or self.barber_net)


MEASURES: tuple[str, ...] = Measures.__struct_fields__
NONE = Measures()


class Fact(msgspec.Struct, frozen=True, kw_only=True):
    """The latest known state of one transaction, as analytics keeps it."""

    barber_id: int
    payment_type: str
    processor: str
    currency: str
    source: str
    status: str
    amount: Decimal
    refunded_amount: Decimal
    commission_amount: Decimal
    processor_fee: Decimal
    day: date  # the UTC day the payment happened (`processed_at`)


def measures_of(fact: Fact) -> Measures:
    """One transaction's part of the figures. Every recorded transaction counts once; one that took
    the money counts as completed with its whole amount in `gross_volume` (refunds later do not
    take it out: they count in `refunded_amount`); `commission` is what the platform kept after
    refunds (`shared.commission`); the processor's fee is not given back by a refund;
    `barber_net` is what the barber kept: the amount less refunds, commission kept, and (on the
    barber's own processor) the processor's fee. The platform pays Stripe's fee on centralized
    payments out of its application fee, as the router promises."""
    if fact.status not in SETTLED:
        return Measures(transaction_count=1, failed_count=1 if fact.status == "failed" else 0)
    commission = commission_earned(status=fact.status, amount=fact.amount, refunded_amount=fact.refunded_amount,
                                   commission=fact.commission_amount, currency=fact.currency).net
    fee = fact.processor_fee if fact.payment_type == "external" else ZERO
    return Measures(
        transaction_count=1, completed_count=1, gross_volume=fact.amount, refunded_amount=fact.refunded_amount,
        commission=commission, processor_fees=fact.processor_fee,
        barber_net=fact.amount - fact.refunded_amount - commission - fee,
    )


RollupKey = tuple[date, int, str, str, str, str]  # day, barber (0: all), payment type, processor, currency, source


def _keys(fact: Fact) -> list[RollupKey]:
    return [(fact.day, barber, fact.payment_type, fact.processor, fact.currency, fact.source)
            for barber in (fact.barber_id, ALL_BARBERS)]


def rollup_deltas(before: Fact | None, after: Fact) -> dict[RollupKey, Measures]:
    """What to add to each rollup row when a transaction moves from `before` (None: first seen) to
    `after`: its old part taken out of the rows it was in, its new part added to the rows it is in
    now (another day, if its `processed_at` moved). Rows that do not change are left out."""
    if before is None:  # first seen: its part goes in as it is (the common case, by far)
        new = measures_of(after)
        return {} if new.is_zero() else dict.fromkeys(_keys(after), new)
    deltas: dict[RollupKey, Measures] = defaultdict(Measures)
    old = measures_of(before)
    for key in _keys(before):
        deltas[key] = deltas[key] - old
    new = measures_of(after)
    for key in _keys(after):
        deltas[key] = deltas[key] + new
    return {key: delta for key, delta in deltas.items() if not delta.is_zero()}


# ---- the dashboard -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RollupRow:
    day: date
    payment_type: str
    processor: str
    measures: Measures


@dataclass(frozen=True)
class Dashboard:
    totals: Measures
    by_payment_type: dict[str, Measures]
    by_processor: dict[str, Measures]
    daily: list[tuple[date, Measures]]


def dashboard(rows: Iterable[RollupRow], start: date, end: date) -> Dashboard:
    """Sum rollup rows of [start, end] (inclusive UTC days) every way the dashboard shows them.
    Every payment type and processor is present (zeros when none), and so is every day."""
    by_type = {t: NONE for t in PAYMENT_TYPES}
    by_processor = {p: NONE for p in PROCESSORS}
    by_day: dict[date, Measures] = defaultdict(Measures)
    totals = NONE
    for row in rows:
        if not start <= row.day <= end:
            continue
        totals = totals + row.measures
        by_type[row.payment_type] = by_type.get(row.payment_type, NONE) + row.measures
        by_processor[row.processor] = by_processor.get(row.processor, NONE) + row.measures
        by_day[row.day] = by_day[row.day] + row.measures
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    return Dashboard(totals=totals, by_payment_type=by_type, by_processor=by_processor,
                     daily=[(day, by_day.get(day, NONE)) for day in days])


def success_rate(m: Measures) -> Decimal | None:
    """Completed / (completed + failed), to four places; None when nothing was decided yet."""
    decided = m.completed_count + m.failed_count
    if not decided:
        return None
    return (Decimal(m.completed_count) / decided).quantize(Decimal("0.0001"), ROUND_HALF_UP)


# ---- Six Figure Barber insights ----------------------------------------------------------------------

WINDOW_DAYS = 90


@dataclass(frozen=True)
class Visit:
    """A completed payment of the barber: when, what it brought (net of refunds), and who paid."""

    at: datetime
    revenue: Decimal
    client_id: int | None


@dataclass(frozen=True)
class ClientMeasures:
    distinct_clients: int
    retention_rate: Decimal | None  # of the previous window's clients, the share who came back
    average_days_between_visits: Decimal | None
    revenue_per_client: Decimal | None


@dataclass(frozen=True)
class Recommendation:
    lever: str  # price | volume | frequency
    current: Decimal
    needed: Decimal
    change: Decimal
    message: str


@dataclass(frozen=True)
class Trend:
    previous_revenue: Decimal
    change_rate: Decimal | None
    direction: str  # up | down | flat | new


@dataclass(frozen=True)
class Insights:
    has_history: bool
    revenue: Decimal
    transactions: int
    annualized_run_rate: Decimal
    target: Decimal
    progress: Decimal
    average_ticket: Decimal | None
    transactions_per_week: Decimal
    weekly_revenue: Decimal
    weekly_target: Decimal
    weekly_gap: Decimal
    clients: ClientMeasures
    trend: Trend
    recommendations: list[Recommendation] = field(default_factory=list)
    message: str = ""


def _per_week(annual: Decimal) -> Decimal:
    return annual * 7 / 365


def _rate(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.0001"), ROUND_HALF_UP)


def _days(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.1"), ROUND_HALF_UP)


def client_measures(current: list[Visit], previous: list[Visit], revenue_currency: str) -> ClientMeasures:
    """From the visits that name their client: how many clients, how many of the previous window's
    came back, how often a returning client comes (the mean gap between one client's consecutive
    visits), and what a client brings in the window."""
    visits: dict[int, list[datetime]] = defaultdict(list)
    revenue = ZERO
    for visit in current:
        if visit.client_id is not None:
            visits[visit.client_id].append(visit.at)
            revenue += visit.revenue
    before = {v.client_id for v in previous if v.client_id is not None}
    retention = _rate(Decimal(len(before & visits.keys())) / len(before)) if before else None
    gaps = [b - a for times in map(sorted, visits.values()) for a, b in zip(times, times[1:])]
    interval = _days(Decimal(sum(gaps, timedelta()) // timedelta(seconds=1)) / 86400 / len(gaps)) if gaps else None
    per_client = round_money(revenue / len(visits), revenue_currency) if visits else None
    return ClientMeasures(distinct_clients=len(visits), retention_rate=retention,
                          average_days_between_visits=interval, revenue_per_client=per_client)


def six_figure_insights(visits: list[Visit], *, now: datetime, target: Decimal, currency: str) -> Insights:
    """From the last 180 days of a barber's completed payments: where the last 90 days put it on
    the way to `target` a year, and what alone would close the gap.

    Run rate = revenue of the last 90 days x 365 / 90. Weekly figures are the annual ones x 7 / 365,
    so `weekly_gap` = (target - run rate) x 7 / 365. The barber reaches the target when the run
    rate as shown (to the cent) does; then the gap is zero, otherwise it is at least one cent, so
    the gap, `progress` and the message never disagree. Each recommendation changes one lever and
    keeps the others: the ticket that closes the gap (price), the extra clients a week at today's
    average ticket (volume), or the visit interval that brings returning clients back often enough
    (frequency: revenue taken to scale with how often clients come). Levers scale the revenue kept,
    so when refunds took all of it back (zero, or less) there are none, and the message says why.

    `target` must be positive (settings hold SIX_FIGURE_TARGET at 0.01 or more)."""
    if not target > 0:
        # Not an assert: a caller's value, and progress and every lever divide by it.
        raise ValueError(f"the six-figure target must be positive, not {target}")
    start = now - timedelta(days=WINDOW_DAYS)
    earlier = start - timedelta(days=WINDOW_DAYS)  # once, not per visit (a busy year is 50,000 of them)
    current = [v for v in visits if start < v.at <= now]
    previous = [v for v in visits if earlier < v.at <= start]
    revenue = sum((v.revenue for v in current), ZERO)
    previous_revenue = sum((v.revenue for v in previous), ZERO)
    count = len(current)
    exact_run_rate = revenue * 365 / WINDOW_DAYS
    run_rate = round_money(exact_run_rate, currency)
    reaches = run_rate >= target
    average_ticket = round_money(revenue / count, currency) if count else None
    weekly_revenue = round_money(_per_week(exact_run_rate), currency)
    weekly_target = round_money(_per_week(target), currency)
    # Rounded half-up, a shortfall under half a cent a week would read 0.00 beside a run rate
    # short of the target (and "on track"): it shows as the smallest amount instead.
    quantum = Decimal(1).scaleb(-minor_unit_exponent(currency))
    weekly_gap = (round_money(ZERO, currency) if reaches
                  else max(quantum, round_money(_per_week(target - exact_run_rate), currency)))
    clients = client_measures(current, previous, currency)
    insights = Insights(
        has_history=bool(current or previous), revenue=revenue, transactions=count, annualized_run_rate=run_rate,
        target=target, progress=_rate(run_rate / target), average_ticket=average_ticket,
        transactions_per_week=(Decimal(count) * 7 / WINDOW_DAYS).quantize(Decimal("0.01"), ROUND_HALF_UP),
        weekly_revenue=weekly_revenue, weekly_target=weekly_target, weekly_gap=weekly_gap, clients=clients,
        trend=_trend(revenue, previous_revenue),
    )
    if not insights.has_history:
        return replace(insights, message="No completed payments in the last 180 days: nothing to measure yet. "
                                          "Insights appear once payments are recorded.")
    if not count:
        return replace(insights, message="No completed payments in the last 90 days: the run rate is zero. "
                                          "Recommendations need at least one recent payment.")
    if reaches:
        return replace(insights, message=f"On track: the run rate {run_rate} {currency} reaches the target.")
    if revenue <= 0:
        payments = "payment was" if count == 1 else "payments were"
        return replace(insights, message=(
            f"The last 90 days' {count} {payments} refunded: {round_money(revenue, currency)} {currency} "
            f"kept, so the run rate is {run_rate} {currency} a year, "
            f"{weekly_gap} {currency} a week short of {target} {currency}. No lever scales zero revenue: "
            f"recommendations need revenue kept in the last 90 days."))
    return replace(insights, recommendations=_recommendations(insights, currency),
                    message=f"The run rate is {run_rate} {currency} a year, {weekly_gap} {currency} a week "
                            f"short of {target} {currency}.")


def _trend(revenue: Decimal, previous: Decimal) -> Trend:
    """The change against the previous 90 days. A rate is only measured from previous revenue
    above zero: from nothing it is undefined, and from less than nothing its sign would lie."""
    if previous > 0:
        change = _rate((revenue - previous) / previous)
        return Trend(previous, change, "up" if change > 0 else "down" if change < 0 else "flat")
    if previous == 0 and revenue > 0:
        return Trend(previous, None, "new")
    return Trend(previous, None, "up" if revenue > previous else "down" if revenue < previous else "flat")


def _recommendations(i: Insights, currency: str) -> list[Recommendation]:
    """The levers, for a barber with a recent payment, revenue kept (> 0) and a run rate short of
    the target: the only case `six_figure_insights` calls this in, so every division below has a
    positive divisor. Each figure is one exact fraction divided once before it is rounded: a chain
    of divisions, each rounded to 28 digits, can land a hair off an exact cent and then round a
    whole cent (or tenth) the wrong way."""
    revenue, visits, target = i.revenue, i.transactions, i.target
    average_ticket = round_money(revenue / visits, currency)
    factor = target * WINDOW_DAYS / (revenue * 365)  # how much more revenue the target needs (> 1 here)
    quantum = Decimal(1).scaleb(-minor_unit_exponent(currency))
    # avg ticket x factor = (revenue / visits) x target x 90 / (revenue x 365): revenue cancels out.
    ticket = (target * WINDOW_DAYS / (365 * visits)).quantize(quantum, ROUND_CEILING)
    # The weekly gap, (target - run rate) x 7 / 365, over today's exact average ticket, revenue / visits.
    extra = ((target * WINDOW_DAYS - revenue * 365) * 7 * visits / (WINDOW_DAYS * 365 * revenue)).quantize(
        Decimal("0.1"), ROUND_CEILING)
    found = [
        Recommendation("price", average_ticket, ticket, ticket - average_ticket,
                       f"Raise the average ticket from {average_ticket} to {ticket} {currency} "
                       f"(+{_rate(factor - 1) * 100:.2f} %) at today's volume."),
        Recommendation("volume", i.transactions_per_week, i.transactions_per_week + extra, extra,
                       f"Add {extra} clients a week at today's average ticket of {average_ticket} {currency}."),
    ]
    interval = i.clients.average_days_between_visits
    if interval is not None and interval > 0:
        # interval / factor, in one division.
        needed = (interval * revenue * 365 / (target * WINDOW_DAYS)).quantize(Decimal("0.1"), ROUND_FLOOR)
        if needed > 0:  # rounded down to 0.0 it would ask clients to come back continuously: no lever
            found.append(Recommendation(
                "frequency", interval, needed, needed - interval,
                f"Bring returning clients back every {needed} days instead of every {interval}."))
    return found
