"""BookedBarber V2 rows to the suite's: what the legacy import carries over, and why not. Pure.

`tools/legacy_import.py` reads the legacy database (its rows as `V2UserRow` and `V2PaymentRow`) and
writes what these functions return into the router's tables and outbox. The rules:

- A `users` row with role `barber` becomes a barber config: centralized, fallback on, its
  `commission_rate` (a fraction 0..1; a value above 1 and at most 100 is read as a percentage, as
  some V2 databases stored it; null takes the platform default), `stripe_account_id` as the
  Connect account. A rate outside those bounds is not guessed at: the barber is skipped.
- A `payments` row is carried over when it is `completed` or `refunded` (a refund in V2 gave back
  the whole payment), its amount is positive and whole in the currency's minor unit, and its barber
  was carried over. It becomes a centralized Stripe payment with `source: legacy`, its commission
  at the barber's rate, the Stripe list-price fee the router estimates for centralized payments
  (V2 kept no fee), and its original `created_at` (UTC when the column has no zone) as the time
  of the payment. Anything else is skipped with a reason, never dropped silently.
- Its transaction id is derived from the legacy id, so every run, and every replica of the
  suite, names the same legacy payment the same way.
"""

from __future__ import annotations

import uuid
from hashlib import sha1
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import msgspec

from shared.events import TransactionRecorded
from shared.fees import processor_fee
from shared.money import minor_unit_exponent, percentage_of

LEGACY_NAMESPACE = uuid.UUID("6f1c2a55-3d0e-4c4b-9b1e-b00ced0ba4b2")
ImportedStatus = Literal["completed", "refunded"]
# The V2 statuses carried over (lower-cased), each as the suite's status.
IMPORTED_STATUSES: dict[str, ImportedStatus] = {"completed": "completed", "refunded": "refunded"}


_NAMESPACE_BYTES = LEGACY_NAMESPACE.bytes


def legacy_transaction_id(legacy_id: int) -> str:
    """`str(uuid.uuid5(LEGACY_NAMESPACE, "bookedbarber-v2/payments/<id>"))`, spelled out (RFC 9562
    5.5: the name's SHA-1 with the version and variant bits set): the stdlib's validating `UUID`
    and its `str` were a seventh of the import's CPU. A unit test holds it equal to `uuid.uuid5`."""
    name = b"bookedbarber-v2/payments/%d" % legacy_id
    h = bytearray(sha1(_NAMESPACE_BYTES + name).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class V2UserRow(msgspec.Struct, frozen=True, kw_only=True):
    """A `users` row of BookedBarber V2 (role barber), the columns the import selects."""

    id: int
    commission_rate: Decimal | None
    stripe_account_id: str | None


class V2PaymentRow(msgspec.Struct, frozen=True, kw_only=True):
    """A `payments` row of BookedBarber V2, the columns the import selects, with `client_id` from
    its appointment when known. V2 constrained none of them but the id."""

    id: int
    barber_id: int | None
    appointment_id: int | None
    amount: Decimal | None
    status: str | None
    stripe_payment_intent_id: str | None
    created_at: datetime | None
    client_id: int | None = None


@dataclass(frozen=True)
class Skip:
    table: str  # users | payments
    legacy_id: int
    reason: str  # a short code: status_pending, zero_amount, unknown_barber, ...
    detail: str


@dataclass(frozen=True)
class LegacyBarber:
    barber_id: int
    commission_rate: Decimal
    connect_account_id: str | None
    rate_note: str | None  # how the rate was read, when not as given


def barber_of(row: V2UserRow, default_rate: Decimal) -> LegacyBarber | Skip:
    """A `users` row (role barber) as the barber config the suite starts it with."""
    raw = row.commission_rate
    note = None
    if raw is None:
        rate, note = default_rate, "null commission_rate: the platform default"
    else:
        rate = Decimal(raw)
        if 1 < rate <= 100:
            rate, note = rate / 100, f"commission_rate {raw} read as a percentage"
        elif not 0 <= rate <= 1:
            return Skip("users", row.id, "invalid_commission_rate", f"commission_rate {raw}")
    account = (row.stripe_account_id or "").strip() or None
    return LegacyBarber(row.id, rate.normalize() if rate else Decimal(0), account, note)


class LegacyPayment(msgspec.Struct, frozen=True, kw_only=True):
    """A legacy payment as the suite keeps it (a Struct: a million are built per import)."""

    transaction_id: str  # `legacy_transaction_id(legacy_id)`
    legacy_id: int
    barber_id: int
    appointment_id: int | None
    client_id: int | None
    amount: Decimal
    refunded_amount: Decimal
    currency: str
    status: ImportedStatus
    commission_rate: Decimal
    commission_amount: Decimal
    processor_fee: Decimal
    stripe_payment_intent_id: str | None
    processed_at: datetime


def payment_of(row: V2PaymentRow, barbers: Mapping[int, Decimal], currency: str) -> LegacyPayment | Skip:
    """A `payments` row (with `client_id` from its appointment, when known) as an imported payment,
    or why it is not one. `barbers` maps each imported barber to its commission rate."""
    legacy_id, given_status, amount = row.id, (row.status or "").strip().lower(), row.amount

    def skip(reason: str, detail: str) -> Skip:
        return Skip("payments", legacy_id, reason, detail)

    status = IMPORTED_STATUSES.get(given_status)
    if status is None:
        return skip(f"status_{given_status or 'missing'}", f"status {row.status!r} is not completed or refunded")
    if amount is None:
        return skip("missing_amount", "amount is null")
    amount = Decimal(amount)
    if amount == 0:
        return skip("zero_amount", "amount 0")
    if amount < 0:
        return skip("negative_amount", f"amount {amount}")
    if amount != round(amount, minor_unit_exponent(currency)):
        return skip("sub_minor_unit_amount", f"amount {amount} is not whole in {currency}")
    barber_id, created = row.barber_id, row.created_at
    if barber_id is None or barber_id not in barbers:
        return skip("unknown_barber", f"barber {barber_id} is not an imported barber")
    if created is None:
        return skip("missing_created_at", "created_at is null")
    rate = barbers[barber_id]
    return LegacyPayment(
        transaction_id=legacy_transaction_id(legacy_id), legacy_id=legacy_id, barber_id=barber_id,
        appointment_id=row.appointment_id, client_id=row.client_id, amount=amount, refunded_amount=amount if status == "refunded" else Decimal(0),
        currency=currency, status=status, commission_rate=rate, commission_amount=percentage_of(amount, rate, currency),
        processor_fee=processor_fee("stripe", None, amount, currency),
        stripe_payment_intent_id=row.stripe_payment_intent_id,
        processed_at=created if created.tzinfo else created.replace(tzinfo=UTC),
    )


def transaction_recorded(payment: LegacyPayment, sequence: int) -> TransactionRecorded:
    return TransactionRecorded(
        transaction_id=payment.transaction_id, barber_id=payment.barber_id,
        appointment_id=payment.appointment_id, client_id=payment.client_id, payment_type="centralized",
        processor="stripe", connection_id=None, external_transaction_id=payment.stripe_payment_intent_id,
        amount=payment.amount, refunded_amount=payment.refunded_amount, currency=payment.currency,
        status=payment.status, commission_rate=payment.commission_rate,
        commission_amount=payment.commission_amount, processor_fee=payment.processor_fee,
        processed_at=payment.processed_at, sequence=sequence, source="legacy",
    )


@dataclass(frozen=True)
class Totals:
    count: int = 0
    amount: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.count + other.count, self.amount + other.amount, self.refunded + other.refunded)


@dataclass(frozen=True)
class Difference:
    barber_id: int
    where: str  # router | analytics
    legacy: Totals
    suite: Totals

    def describe(self) -> str:
        parts = []
        for name in ("count", "amount", "refunded"):
            theirs, ours = getattr(self.legacy, name), getattr(self.suite, name)
            if theirs != ours:
                parts.append(f"{name} legacy {theirs} vs {self.where} {ours}")
        return f"barber {self.barber_id}: " + ", ".join(parts)


def differences(legacy: Mapping[int, Totals], suite: Mapping[int, Totals], where: str) -> list[Difference]:
    """Per barber, every figure that is not the same on both sides (a barber missing on one side
    counts as zero there)."""
    out = []
    for barber_id in sorted(set(legacy) | set(suite)):
        theirs, ours = legacy.get(barber_id, Totals()), suite.get(barber_id, Totals())
        if theirs != ours:
            out.append(Difference(barber_id, where, theirs, ours))
    return out
