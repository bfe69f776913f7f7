"""Settings of the collections service (environment and `.env`; see deploy/.env.example)."""

from decimal import Decimal
from functools import cache
from typing import Annotated, Literal

import msgspec

from shared.config import PlatformStripeSettings, load_settings, require_range


class CollectionsSettings(PlatformStripeSettings, kw_only=True, frozen=True):
    service_name: str = "collections"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8003
    commission_collection_frequency: Literal["daily", "weekly", "monthly"] = "weekly"
    auto_collection_enabled: bool = True
    minimum_collection_amount: Decimal = Decimal("25.00")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range("MINIMUM_COLLECTION_AMOUNT", self.minimum_collection_amount, low=Decimal(0))


@cache
def load() -> CollectionsSettings:
    return load_settings(CollectionsSettings)
