"""Settings of the router service (environment and `.env`; see deploy/.env.example)."""

from decimal import Decimal
from functools import cache
from typing import Annotated, Literal

import msgspec

from shared.config import PlatformStripeSettings, SettingsError, load_settings, require_range

PaymentMode = Literal["centralized", "decentralized", "hybrid"]


class RouterSettings(PlatformStripeSettings, kw_only=True, frozen=True):
    service_name: str = "router"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8001
    # Kill switch: false routes every payment centralized.
    hybrid_payments_enabled: bool = True
    default_payment_mode: PaymentMode = "centralized"
    default_commission_rate: Decimal = Decimal("0.20")
    # Defaults a new barber config starts from (collections reads them from config.changed).
    commission_collection_frequency: Literal["daily", "weekly", "monthly"] = "weekly"
    auto_collection_enabled: bool = True
    # The sweeper settles payment attempts and refunds left pending (a timeout nobody retried)
    # once nobody has touched them for this many seconds; it runs every `sweep_interval` seconds.
    pending_sweep_after: Annotated[float, msgspec.Meta(ge=1)] = 300.0
    sweep_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # Where the external service answers internal calls (external charges and refunds; a comma
    # list names its replicas, taken in turn: shared.balancing), and how
    # long to wait for it (it waits up to its own PROCESSOR_TIMEOUT for the barber's processor).
    external_service_url: str = "http://127.0.0.1:8002"
    external_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 30.0
    # A `service` JWT for those calls; unset, one is minted with JWT_SECRET (RS256 deployments,
    # which cannot mint, must set it).
    service_token: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range("DEFAULT_COMMISSION_RATE", self.default_commission_rate, Decimal(0), Decimal(1))
        if self.pending_sweep_after <= 2 * self.stripe_timeout:
            # The sweeper must never settle an attempt whose processor call may still be running.
            raise SettingsError(f"PENDING_SWEEP_AFTER: must exceed twice STRIPE_TIMEOUT ({self.stripe_timeout} s)")


@cache
def load() -> RouterSettings:
    return load_settings(RouterSettings)
