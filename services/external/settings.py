"""Settings of the external service (environment and `.env`; see deploy/.env.example)."""

from functools import cache
from typing import Annotated

import msgspec

from shared.config import BaseSettings, load_settings


class ExternalSettings(BaseSettings, kw_only=True, frozen=True):
    service_name: str = "external"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8002
    external_stripe_enabled: bool = True
    external_square_enabled: bool = True
    external_paypal_enabled: bool = True
    # Public base URL processors deliver webhooks to: {base}/api/v1/webhooks/{processor}/{connection_id}.
    webhook_base_url: str = "http://127.0.0.1:8000"
    # Comma-separated Fernet keys; the first encrypts, all decrypt (rotation).
    connection_encryption_keys: str | None = None
    square_sandbox: bool = True
    paypal_sandbox: bool = True
    stripe_api_base: str = "https://api.stripe.com"
    square_api_base: str = "https://connect.squareupsandbox.com"
    paypal_api_base: str = "https://api-m.sandbox.paypal.com"


@cache
def load() -> ExternalSettings:
    return load_settings(ExternalSettings)
