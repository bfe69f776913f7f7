"""Processor fees: a connection's own fee structure, else the processor's list price. Pure.

Used by the router (the estimate a route promises) and the external service (the fee recorded on
a payment the processor reported without one).
"""

from __future__ import annotations

from decimal import Decimal

from shared.money import round_money

# Card-not-present list prices: a percentage, and a fixed part known per currency. In a currency
# without a known fixed part the fee is the percentage alone (never a USD fee added to yen).
LIST_PRICES: dict[str, tuple[Decimal, dict[str, Decimal]]] = {
    "stripe": (Decimal("2.9"), {"USD": Decimal("0.30"), "CAD": Decimal("0.30"), "AUD": Decimal("0.30"),
                                "NZD": Decimal("0.30"), "EUR": Decimal("0.25"), "GBP": Decimal("0.20")}),
    "square": (Decimal("2.9"), {"USD": Decimal("0.30"), "CAD": Decimal("0.30")}),
    "paypal": (Decimal("3.49"), {"USD": Decimal("0.49")}),
}

Fees = tuple[Decimal, Decimal]  # (percent, fixed), the fixed part in the payment's currency


def processor_fee(processor: str, fees: Fees | None, amount: Decimal, currency: str) -> Decimal:
    """`amount * percent / 100 + fixed`, rounded half-up in the currency's minor unit."""
    if fees is not None:
        percent, fixed = fees
    else:
        percent, fixed_by_currency = LIST_PRICES[processor]
        fixed = fixed_by_currency.get(currency, Decimal(0))
    return round_money(amount * percent / Decimal(100) + fixed, currency)
