"""What every processor adapter speaks: outcomes, errors, and a secret that never prints.

Adapters map their processor's statuses onto `PaymentStatus` exhaustively and raise these
errors, so callers handle Stripe, Square and PayPal alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

PaymentStatus = Literal["pending", "completed", "failed", "canceled"]
RefundStatus = Literal["pending", "succeeded", "failed"]


class Secret:
    """A credential: `repr`/`str` are masked so it cannot leak into logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def hint(self) -> str:
        return f"…{self._value[-4:]}" if len(self._value) > 8 else "…"

    def __repr__(self) -> str:
        return f"Secret({self.hint})"

    __str__ = __repr__


@dataclass(frozen=True)
class PaymentResult:
    processor_payment_id: str
    status: PaymentStatus
    charge_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class RefundResult:
    refund_id: str
    status: RefundStatus
    amount_minor: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class ProcessorError(Exception):
    """A processor call did not succeed; subclasses say how."""

    def __init__(self, message: str, *, code: str | None = None, raw: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.raw = raw or {}


class PaymentDeclined(ProcessorError):
    """The processor refused the payment (card declined, insufficient funds, ...)."""

    def __init__(self, message: str, *, code: str | None = None, processor_payment_id: str | None = None,
                 raw: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code, raw=raw)
        self.processor_payment_id = processor_payment_id


class ProcessorTimeout(ProcessorError):
    """No answer in time: the outcome is unknown and must be settled by a retry with the same key."""


class ProcessorUnavailable(ProcessorError):
    """The processor answered 5xx or could not be reached: nothing happened, as far as we know."""


class InvalidCredentials(ProcessorError):
    """The processor refused the credentials."""


class ProcessorRequestError(ProcessorError):
    """The processor refused the request itself (a 4xx other than a decline): our bug or bad input."""
