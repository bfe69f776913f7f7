"""Square: the adapter (`SquareProcessor`) and its wire mapping (`transformers`)."""

from shared.processors.square.adapter import (
    DEFAULT_API_BASE,
    SANDBOX_API_BASE,
    SIGNATURE_HEADER,
    SquareCredentials,
    SquareProcessor,
    signature_for,
    square_idempotency_key,
)

__all__ = [
    "DEFAULT_API_BASE",
    "SANDBOX_API_BASE",
    "SIGNATURE_HEADER",
    "SquareCredentials",
    "SquareProcessor",
    "signature_for",
    "square_idempotency_key",
]
