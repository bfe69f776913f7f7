"""PayPal: the adapter (`PayPalProcessor`) and its wire mapping (`transformers`)."""

from shared.processors.paypal.adapter import (
    DEFAULT_API_BASE,
    LIVE_API_BASE,
    SANDBOX_API_BASE,
    PayPalCredentials,
    PayPalProcessor,
)
from shared.processors.paypal.transformers import WEBHOOK_EVENT_TYPES

__all__ = [
    "DEFAULT_API_BASE",
    "LIVE_API_BASE",
    "SANDBOX_API_BASE",
    "WEBHOOK_EVENT_TYPES",
    "PayPalCredentials",
    "PayPalProcessor",
]
