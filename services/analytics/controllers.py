"""HTTP edge of the analytics service: parse, authorise, hand to the use case, return its struct."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Request, get
from litestar.params import QueryParameter, SkipValidation

from services.analytics.usecases import AnalyticsUseCases
from services.analytics.wire import DashboardOut, InsightsOut
from shared.auth import MAX_USER_ID, Principal
from shared.edge import roles

Analytics = SkipValidation[AnalyticsUseCases]
Caller = Request[Principal, str, object]
barbers_and_admins = roles("barber", "admin")
BarberId = Annotated[int | None, QueryParameter(ge=1, le=MAX_USER_ID)]
Day = Annotated[str | None, QueryParameter(max_length=10, description="a UTC day, YYYY-MM-DD")]
Currency = Annotated[str, QueryParameter(min_length=3, max_length=3)]


class AnalyticsController(Controller):
    path = "/api/v1/unified-payment-analytics"
    tags = ["unified-payment-analytics"]

    @get("/dashboard", opt=barbers_and_admins)
    async def dashboard(
        self, request: Caller, analytics: Analytics, barber_id: BarberId = None,
        start: Annotated[str | None, QueryParameter(
            name="from", description="first UTC day, YYYY-MM-DD (default: to - 29 days)")] = None,
        end: Annotated[str | None, QueryParameter(name="to",
                                                  description="last UTC day, YYYY-MM-DD (default: today)")] = None,
        currency: Currency = "USD",
        source: Annotated[Literal["live", "legacy"] | None, QueryParameter(
            description="only live payments, or only imported legacy history (default: both)")] = None,
    ) -> DashboardOut:
        """Every payment's figures for a date range: a barber its own, an admin one barber
        (`barber_id`) or all. Amounts are in `currency` (default USD) and count only its payments."""
        return await analytics.reports.dashboard(request.user, barber_id=barber_id, start=start, end=end,
                                                 currency=currency, source=source)

    @get("/six-figure-insights", opt=barbers_and_admins)
    async def six_figure_insights(self, request: Caller, analytics: Analytics, barber_id: BarberId = None,
                                  currency: Currency = "USD") -> InsightsOut:
        """How far the barber's last 90 days put it from SIX_FIGURE_TARGET a year, and what alone
        would close the gap (an admin names the barber)."""
        return await analytics.reports.insights(request.user, barber_id=barber_id, currency=currency)
