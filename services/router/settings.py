"""Settings of the router service (environment and `.env`; see deploy/.env.example)."""

from decimal import Decimal
from functools import cache
from typing import Annotated, Literal

import msgspec

from shared.config import BaseSettings, load_settings, require_range

PaymentMode = Literal["centralized", "decentralized", "hybrid"]


class RouterSettings(BaseSettings, kw_only=True, frozen=True):
    service_name: str = "router"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8001
    # Kill switch: false routes every payment centralized.
    hybrid_payments_enabled: bool = True
    default_payment_mode: PaymentMode = "centralized"
    default_commission_rate: Decimal = Decimal("0.20")
    # Defaults a new barber config starts from (collections reads them from config.changed).
    commission_collection_frequency: Literal["daily", "weekly", "monthly"] = "weekly"
    auto_collection_enabled: bool = True
    # The platform's Stripe account (centralized payments); the API base points at a simulator in the sandbox.
    stripe_secret_key: str | None = None
    stripe_api_base: str = "https://api.stripe.com"
    # Seconds before a Stripe call counts as timed out (the client then gets a 504 and retries).
    stripe_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    # Where the external service answers internal calls (external charges).
    external_service_url: str = "http://127.0.0.1:8002"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range("DEFAULT_COMMISSION_RATE", self.default_commission_rate, Decimal(0), Decimal(1))


@cache
def load() -> RouterSettings:
    return load_settings(RouterSettings)
