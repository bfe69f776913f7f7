"""What the platform keeps of a payment's commission once refunds are counted. Pure.

One rule for every service that counts commission (collections accrues it from barbers' own
processors; analytics reports it for every payment): a payment earns its commission once it
completed, less `commission x refunded_amount / amount` rounded half-up in the currency, so a full
refund gives back exactly the commission and partial refunds never drift by a rounding cent.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from shared.money import round_money

SETTLED = frozenset({"completed", "partially_refunded", "refunded"})  # a payment that took the money


@dataclass(frozen=True)
class Earned:
    """A payment's commission, and the part of it its refunds gave back."""

    commission: Decimal
    reversed: Decimal

    @property
    def net(self) -> Decimal:
        return self.commission - self.reversed


NOTHING = Earned(Decimal(0), Decimal(0))


def commission_earned(*, status: str, amount: Decimal, refunded_amount: Decimal, commission: Decimal,
                      currency: str) -> Earned:
    """Nothing until the payment completed; then its commission, less the proportional reversal."""
    if status not in SETTLED:
        return NOTHING
    if refunded_amount >= amount:
        return Earned(commission, commission)
    return Earned(commission, round_money(commission * refunded_amount / amount, currency))
