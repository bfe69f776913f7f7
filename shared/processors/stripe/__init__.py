"""Stripe: the adapter (`StripeProcessor`) and its wire mapping (`transformers`)."""

from shared.processors.stripe.adapter import (
    DEFAULT_API_BASE,
    StripeCredentials,
    StripeProcessor,
    platform_stripe,
)

__all__ = ["DEFAULT_API_BASE", "StripeCredentials", "StripeProcessor", "platform_stripe"]
