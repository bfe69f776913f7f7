"""What the analytics service answers: the unified dashboard, Six Figure Barber insights, and the
Prometheus gauges. Reads rollups (never scans facts for the dashboard), hands them to the pure
functions in `domain`, and shapes the answer (`wire`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from services.analytics import store
from services.analytics.domain import (
    ALL_BARBERS,
    WINDOW_DAYS,
    Measures,
    RollupRow,
    Visit,
    dashboard,
    six_figure_insights,
    success_rate,
)
from services.analytics.mapping import insights_out, totals_of
from services.analytics.settings import AnalyticsSettings
from services.analytics.wire import DailyOut, DashboardOut, InsightsOut, TotalsOut
from shared.auth import Principal
from shared.errors import ProblemError, validation_error
from shared.money import MoneyError, format_amount, normalise_currency
from shared.observability import (
    COMMISSION_COLLECTION_RATE,
    PAYMENT_SUCCESS_RATE,
    PAYMENT_VOLUME,
    PENDING_COLLECTIONS,
    PENDING_COLLECTIONS_AMOUNT,
)
from shared.service import ServiceRuntime

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PENDING_STATUSES = ("pending", "failed", "overdue")  # a collection's statuses before it is collected


def parse_day(name: str, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        if not _DATE.match(value):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise validation_error(name, f"{value[:40]!r} is not a date (YYYY-MM-DD, UTC)") from None


def currency_of(value: str) -> str:
    try:
        return normalise_currency(value)
    except MoneyError as exc:
        raise validation_error("currency", str(exc)) from None


def disabled(feature: str, setting: str) -> ProblemError:
    return ProblemError(404, "feature_disabled", f"{feature} is switched off here ({setting}=false)")


class Reports:
    def __init__(self, runtime: ServiceRuntime, settings: AnalyticsSettings,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.rt = runtime
        self.settings = settings
        self.clock = clock

    # ---- the dashboard ----------------------------------------------------------------------------

    async def dashboard(self, principal: Principal, *, barber_id: int | None, start: str | None, end: str | None,
                        currency: str, source: str | None) -> DashboardOut:
        if not self.settings.unified_analytics_enabled:
            raise disabled("the unified dashboard", "UNIFIED_ANALYTICS_ENABLED")
        scope = _scope(principal, barber_id)
        currency = currency_of(currency)
        last = parse_day("to", end) or self.clock().astimezone(UTC).date()
        first = parse_day("from", start) or last - timedelta(days=29)
        if first > last:
            raise validation_error("from", f"{first} is after to ({last})")
        if (last - first).days >= self.settings.dashboard_max_days:
            raise validation_error("to", f"a range is at most {self.settings.dashboard_max_days} days")
        async with self.rt.uow() as uow:
            rows = await store.daily_payments(uow.session, barber_id=scope, currency=currency, start=first, end=last,
                                              source=source)
            collected = await store.collected_between(uow.session, barber_id=scope, currency=currency, start=first,
                                                      end=last)
            owed = await store.external_commission_until(uow.session, barber_id=scope, currency=currency, end=last)
            collected_by_then = await store.collected_between(uow.session, barber_id=scope, currency=currency,
                                                              start=None, end=last)
        board = dashboard([RollupRow(r.day, r.payment_type, r.processor, r.measures()) for r in rows
                           if r.day is not None], first, last)

        def totals(m: Measures) -> TotalsOut:
            return TotalsOut(**totals_of(m, currency))

        return DashboardOut(
            totals=totals(board.totals),
            by_payment_type={k: totals(v) for k, v in board.by_payment_type.items()},
            by_processor={k: totals(v) for k, v in board.by_processor.items()},
            daily=[DailyOut(date=day, **totals_of(m, currency)) for day, m in board.daily],
            commission_collected=format_amount(collected, currency),
            commission_outstanding=format_amount(owed - collected_by_then, currency),
        )

    # ---- Six Figure Barber insights -----------------------------------------------------------------

    async def insights(self, principal: Principal, *, barber_id: int | None, currency: str) -> InsightsOut:
        if not self.settings.six_figure_insights_enabled:
            raise disabled("Six Figure Barber insights", "SIX_FIGURE_INSIGHTS_ENABLED")
        scope = _scope(principal, barber_id)
        if scope == ALL_BARBERS:
            raise validation_error("barber_id", "insights are per barber: name one")
        currency = currency_of(currency)
        now = self.clock()
        rows = await store.barber_visits(self.rt.hot_path, scope, currency, now - timedelta(days=2 * WINDOW_DAYS))
        found = six_figure_insights([Visit(at, revenue, client) for at, revenue, client in rows],
                                    now=now, target=self.settings.six_figure_target, currency=currency)
        return insights_out(found, barber_id=scope, currency=currency, now=now)

    # ---- Prometheus gauges -----------------------------------------------------------------------------

    async def refresh_metrics(self, now: datetime) -> None:
        since = now.astimezone(UTC).date() - timedelta(days=self.settings.analytics_metrics_window_days - 1)
        async with self.rt.uow() as uow:
            rows = await store.platform_since(uow.session, since)
            commission = await store.commission_by_currency(uow.session)
            collections = await store.collections_by_status(uow.session)
        decided: dict[tuple[str, str], Measures] = {}
        for r in rows:
            m = r.measures()
            PAYMENT_VOLUME.labels(r.payment_type, r.processor, r.currency).set(float(m.gross_volume))
            for key in ((r.payment_type, r.processor), (r.payment_type, "all"), ("all", r.processor), ("all", "all")):
                decided[key] = decided.get(key, Measures()) + m
        for (payment_type, processor), m in decided.items():
            rate = success_rate(m)
            if rate is not None:
                PAYMENT_SUCCESS_RATE.labels(payment_type, processor).set(float(rate))
        for c in commission:
            if c.owed > 0:
                COMMISSION_COLLECTION_RATE.labels(c.currency).set(float(c.collected / c.owed))
        found = {(t.status, t.currency): t for t in collections}
        for currency in {t.currency for t in collections}:
            for status in PENDING_STATUSES:  # a status with none left reads 0, not its last count
                total = found.get((status, currency))
                PENDING_COLLECTIONS.labels(status, currency).set(total.n if total else 0)
                PENDING_COLLECTIONS_AMOUNT.labels(status, currency).set(float(total.amount) if total else 0.0)


def _scope(principal: Principal, barber_id: int | None) -> int:
    """Whose figures: a barber sees only its own; an admin names a barber, or sees all (0)."""
    if principal.role == "barber":
        if barber_id is not None and barber_id != principal.user_id:
            raise ProblemError(403, "forbidden", "barber_id must be your own barber id")
        return principal.user_id
    if principal.role != "admin":
        raise ProblemError(403, "forbidden", "requires role barber or admin")
    return ALL_BARBERS if barber_id is None else barber_id
