"""The analytics service's wire types: responses as sent (its requests are query strings)."""

from __future__ import annotations

from datetime import date, datetime

import msgspec


class TotalsOut(msgspec.Struct, kw_only=True):
    """Figures of a set of payments in one currency. `gross_volume` sums the payments that took the
    money (a refund does not take one out: it counts in `refunded_amount`); `success_rate` is
    completed / (completed + failed), null while none is either; `commission` is what the platform
    kept after refunds; `barber_net` what the barber kept after refunds, commission and (on its own
    processor) the processor's fee."""

    transaction_count: int
    completed_count: int
    failed_count: int
    gross_volume: str
    refunded_amount: str
    success_rate: str | None
    commission: str
    processor_fees: str
    barber_net: str


class DailyOut(TotalsOut, kw_only=True):
    date: date


class DashboardOut(msgspec.Struct, kw_only=True):
    totals: TotalsOut
    by_payment_type: dict[str, TotalsOut]
    by_processor: dict[str, TotalsOut]
    daily: list[DailyOut]
    commission_collected: str  # collected from barbers in the range
    commission_outstanding: str  # owed on barbers' own processors up to `to`, less what was collected by then


class ClientsOut(msgspec.Struct, kw_only=True):
    distinct_clients: int
    retention_rate: str | None
    average_days_between_visits: str | None
    revenue_per_client: str | None


class TrendOut(msgspec.Struct, kw_only=True):
    previous_revenue_90d: str
    change_rate: str | None
    direction: str


class RecommendationOut(msgspec.Struct, kw_only=True):
    lever: str
    current: str
    needed: str
    change: str
    message: str


class InsightsOut(msgspec.Struct, kw_only=True):
    barber_id: int
    currency: str
    as_of: datetime
    has_history: bool
    message: str
    window_days: int
    revenue_90d: str
    transactions_90d: int
    annualized_run_rate: str
    target: str
    progress: str
    average_ticket: str | None
    transactions_per_week: str
    weekly_revenue: str
    weekly_target: str
    weekly_revenue_gap: str
    clients: ClientsOut
    trend: TrendOut
    recommendations: list[RecommendationOut]
