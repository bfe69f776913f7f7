"""Settings of the analytics service (environment and `.env`; see deploy/.env.example)."""

from decimal import Decimal
from functools import cache
from typing import Annotated

import msgspec

from shared.config import BaseSettings, load_settings, require_range


class AnalyticsSettings(BaseSettings, kw_only=True, frozen=True):
    service_name: str = "analytics"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8004
    # Serve GET /dashboard (404 `feature_disabled` when off; the read models are kept either way).
    unified_analytics_enabled: bool = True
    # Serve GET /six-figure-insights.
    six_figure_insights_enabled: bool = True
    # The yearly revenue the insights measure progress against, in the asked currency's units.
    six_figure_target: Decimal = Decimal("100000")
    # The longest range one dashboard request may span (days).
    dashboard_max_days: Annotated[int, msgspec.Meta(ge=1, le=3660)] = 731
    # The Prometheus gauges (success rates, volume) cover this many trailing UTC days.
    analytics_metrics_window_days: Annotated[int, msgspec.Meta(ge=1, le=366)] = 7
    analytics_metrics_interval: Annotated[float, msgspec.Meta(gt=0)] = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range("SIX_FIGURE_TARGET", self.six_figure_target, low=Decimal("0.01"))


@cache
def load() -> AnalyticsSettings:
    return load_settings(AnalyticsSettings)
