"""Settings of the external service (environment and `.env`; see deploy/.env.example)."""

from decimal import Decimal
from functools import cache
from typing import Annotated

import msgspec
from cryptography.fernet import Fernet

from shared.config import BaseSettings, SettingsError, load_settings, require_range

SQUARE_HOSTS = {True: "https://connect.squareupsandbox.com", False: "https://connect.squareup.com"}
PAYPAL_HOSTS = {True: "https://api-m.sandbox.paypal.com", False: "https://api-m.paypal.com"}


class ExternalSettings(BaseSettings, kw_only=True, frozen=True):
    service_name: str = "external"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8002
    # A processor switched off takes no new connections and its connections publish as unusable.
    external_stripe_enabled: bool = True
    external_square_enabled: bool = True
    external_paypal_enabled: bool = True
    # Public base URL processors deliver webhooks to: {base}/api/v1/webhooks/{processor}/{connection_id}.
    webhook_base_url: str = "http://127.0.0.1:8000"
    # Comma-separated Fernet keys; the first encrypts, all decrypt (rotation). Required.
    connection_encryption_keys: str | None = None
    square_sandbox: bool = True
    paypal_sandbox: bool = True
    # API bases; Square's and PayPal's default to their sandbox or production hosts per *_SANDBOX.
    stripe_api_base: str = "https://api.stripe.com"
    square_api_base: str | None = None
    paypal_api_base: str | None = None
    # Seconds before a processor call counts as timed out (its outcome is then unknown).
    processor_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    # Attempts left pending (a timeout nobody retried) are looked up at the processor once untouched
    # for this many seconds; the sweeper runs every `sweep_interval` seconds, in one replica at a time.
    pending_sweep_after: Annotated[float, msgspec.Meta(ge=1)] = 300.0
    sweep_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # Reconciliation: every `reconcile_interval` seconds, the last `reconcile_window_hours` hours.
    reconcile_interval: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    reconcile_window_hours: Annotated[int, msgspec.Meta(ge=1, le=24 * 31)] = 48
    # How often the seed's per-connection counters (total_transactions, total_volume) are recounted.
    stats_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # The commission on a payment we learn of (webhook, reconciliation) for a barber whose config
    # the router has not published yet (`config.changed` carries each barber's own rate).
    default_commission_rate: Decimal = Decimal("0.20")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range("DEFAULT_COMMISSION_RATE", self.default_commission_rate, Decimal(0), Decimal(1))
        if not self.connection_encryption_keys:
            raise SettingsError("CONNECTION_ENCRYPTION_KEYS: set one or more Fernet keys, comma-separated "
                                "(python -c \"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\")")
        for i, key in enumerate(self.encryption_keys):
            try:
                Fernet(key)
            except (ValueError, TypeError):
                raise SettingsError(f"CONNECTION_ENCRYPTION_KEYS: key {i + 1} is not a Fernet key "
                                    "(32 url-safe base64-encoded bytes)") from None
        if self.pending_sweep_after <= 4 * self.processor_timeout:
            # A PayPal charge is up to three calls (token, order, capture), each with its own timeout:
            # the sweeper must never take an attempt whose calls may still be running.
            raise SettingsError(f"PENDING_SWEEP_AFTER: must exceed four times PROCESSOR_TIMEOUT "
                                f"({self.processor_timeout} s)")
        if not self.webhook_base_url.startswith(("http://", "https://")):
            raise SettingsError(f"WEBHOOK_BASE_URL: expected an http(s) URL, got {self.webhook_base_url!r}")

    @property
    def encryption_keys(self) -> list[str]:
        return [k.strip() for k in (self.connection_encryption_keys or "").split(",") if k.strip()]

    def api_base(self, processor: str) -> str:
        if processor == "stripe":
            return self.stripe_api_base
        if processor == "square":
            return self.square_api_base or SQUARE_HOSTS[self.square_sandbox]
        return self.paypal_api_base or PAYPAL_HOSTS[self.paypal_sandbox]

    def enabled(self, processor: str) -> bool:
        return bool(getattr(self, f"external_{processor}_enabled"))


@cache
def load() -> ExternalSettings:
    return load_settings(ExternalSettings)
