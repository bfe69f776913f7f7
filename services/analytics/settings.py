"""Settings of the analytics service (environment and `.env`; see deploy/.env.example)."""

from decimal import Decimal
from functools import cache
from typing import Annotated

import msgspec

from shared.config import BaseSettings, load_settings, require_range


class AnalyticsSettings(BaseSettings, kw_only=True, frozen=True):
    service_name: str = "analytics"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8004
    unified_analytics_enabled: bool = True
    six_figure_insights_enabled: bool = True
    six_figure_target: Decimal = Decimal("100000")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range("SIX_FIGURE_TARGET", self.six_figure_target, low=Decimal("0.01"))


@cache
def load() -> AnalyticsSettings:
    return load_settings(AnalyticsSettings)
