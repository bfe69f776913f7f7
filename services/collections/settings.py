"""Settings of the collections service (environment and `.env`; see deploy/.env.example)."""

from decimal import Decimal
from functools import cache
from typing import Annotated, Literal

import msgspec

from shared.config import PlatformStripeSettings, SettingsError, load_settings, require_range


class CollectionsSettings(PlatformStripeSettings, kw_only=True, frozen=True):
    service_name: str = "collections"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8003
    # What a barber without a config (no `config.changed` seen yet) gets.
    commission_collection_frequency: Literal["daily", "weekly", "monthly"] = "weekly"
    auto_collection_enabled: bool = True
    # Unbilled commission below this (in the collection's currency's major unit) waits for more.
    minimum_collection_amount: Decimal = Decimal("25.00")
    # Days after the first failure on which a failed collection is tried again; then it is overdue.
    collection_retry_days: str = "1,3,7"
    # How often the schedule aggregates unbilled accruals, and looks for retries that are due
    # (seconds); both run in one replica at a time.
    collection_run_interval: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    dunning_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # Attempts left pending (a crash or a timeout) are looked up at Stripe once untouched this long.
    pending_sweep_after: Annotated[float, msgspec.Meta(ge=1)] = 300.0
    sweep_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range("MINIMUM_COLLECTION_AMOUNT", self.minimum_collection_amount, low=Decimal(0))
        try:
            days = self.retry_days
        except ValueError:
            raise SettingsError(f"COLLECTION_RETRY_DAYS: expected comma-separated whole days like 1,3,7, got "
                                f"{self.collection_retry_days!r}") from None
        if any(d < 0 for d in days) or list(days) != sorted(days):
            raise SettingsError(f"COLLECTION_RETRY_DAYS: days must be increasing and not negative, got {days}")
        if self.pending_sweep_after <= 2 * self.stripe_timeout:
            raise SettingsError(f"PENDING_SWEEP_AFTER: must exceed twice STRIPE_TIMEOUT ({self.stripe_timeout} s)")

    @property
    def retry_days(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.collection_retry_days.split(",") if d.strip())


@cache
def load() -> CollectionsSettings:
    return load_settings(CollectionsSettings)
