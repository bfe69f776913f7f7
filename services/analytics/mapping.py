"""Domain figures to what leaves the analytics service: the dashboard's totals and the insights as
their wire structs (money formatted in the currency; no I/O, no decisions)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from services.analytics.domain import WINDOW_DAYS, Insights, Measures, success_rate
from services.analytics.wire import ClientsOut, InsightsOut, RecommendationOut, TrendOut
from shared.money import format_amount


def totals_of(m: Measures, currency: str) -> dict:
    rate = success_rate(m)
    return dict(
        transaction_count=m.transaction_count, completed_count=m.completed_count, failed_count=m.failed_count,
        gross_volume=format_amount(m.gross_volume, currency),
        refunded_amount=format_amount(m.refunded_amount, currency),
        success_rate=None if rate is None else str(rate), commission=format_amount(m.commission, currency),
        processor_fees=format_amount(m.processor_fees, currency), barber_net=format_amount(m.barber_net, currency))


def insights_out(i: Insights, *, barber_id: int, currency: str, now: datetime) -> InsightsOut:
    def money(value: Decimal | None) -> str | None:
        return None if value is None else format_amount(value, currency)

    def text(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return InsightsOut(
        barber_id=barber_id, currency=currency, as_of=now, has_history=i.has_history, message=i.message,
        window_days=WINDOW_DAYS, revenue_90d=money(i.revenue), transactions_90d=i.transactions,
        annualized_run_rate=money(i.annualized_run_rate), target=money(i.target), progress=str(i.progress),
        average_ticket=money(i.average_ticket), transactions_per_week=str(i.transactions_per_week),
        weekly_revenue=money(i.weekly_revenue), weekly_target=money(i.weekly_target),
        weekly_revenue_gap=money(i.weekly_gap),
        clients=ClientsOut(distinct_clients=i.clients.distinct_clients, retention_rate=text(i.clients.retention_rate),
                           average_days_between_visits=text(i.clients.average_days_between_visits),
                           revenue_per_client=money(i.clients.revenue_per_client)),
        trend=TrendOut(previous_revenue_90d=money(i.trend.previous_revenue), change_rate=text(i.trend.change_rate),
                       direction=i.trend.direction),
        recommendations=[RecommendationOut(lever=r.lever, current=str(r.current), needed=str(r.needed),
                                           change=str(r.change), message=r.message) for r in i.recommendations],
    )
