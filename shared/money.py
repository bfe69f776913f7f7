"""Exact money: parsing, validation per ISO 4217 minor units, and half-up rounding.

Amounts are `Decimal` (or integer minor units at processor boundaries); a Python float is
refused everywhere, because a float has already lost the cents we are asked to keep.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

# Plain ASCII decimal notation only. `Decimal(str)` alone would also take "５０" (full-width
# digits), "1_000", " 50 " and "1e3"; none of those is how anyone writes an amount of money.
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_NON_FINITE = frozenset({"nan", "-nan", "+nan", "snan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"})

# ISO 4217 minor-unit exponents. Currencies absent here have two decimals; those listed are
# the ones the processors we speak to accept with a different exponent.
_ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split()
)
_THREE_DECIMAL = frozenset("BHD IQD JOD KWD LYD OMR TND".split())
# Currencies the suite accepts. Kept explicit so an unknown code is a clear 422, not a guess.
SUPPORTED_CURRENCIES = frozenset(
    """USD CAD EUR GBP AUD NZD CHF SEK NOK DKK PLN CZK HUF RON BGN MXN BRL ARS COP PEN
    SGD HKD INR ZAR AED SAR ILS TRY THB MYR PHP IDR TWD""".split()
) | _ZERO_DECIMAL | _THREE_DECIMAL

DEFAULT_MAX_AMOUNT = Decimal("100000.00")
# The most any stored amount may be (thresholds, fees): more than any payment the suite takes, and
# well within every money column (numeric(18,4) holds less than 10^14).
MAX_STORABLE_AMOUNT = Decimal(10) ** 12


class MoneyError(ValueError):
    """A value that is not an acceptable amount; the message names what is wrong."""


class PlainDecimal(Decimal):
    """A number exactly as a request wrote it: a JSON number (read from its text, never through
    a binary float) or a string in plain ASCII decimal notation. Request structs type their
    amounts and rates with it; `shared.requests` decodes bodies so that this holds."""


def plain_decimal(value: object) -> PlainDecimal:
    """Decode hook for `PlainDecimal`: JSON numbers arrive as Decimal (or int), strings are held
    to plain notation; anything else is refused with the reason."""
    return PlainDecimal(to_decimal(value))


def minor_unit_exponent(currency: str) -> int:
    # A code already normalised: one lookup (hot in bulk paths); anything else is normalised (or refused).
    exponent = _EXPONENTS.get(currency) if isinstance(currency, str) else None
    return exponent if exponent is not None else _EXPONENTS[normalise_currency(currency)]


def minor_unit(currency: str) -> Decimal:
    """The currency's smallest amount as a quantum (`Decimal("0.01")` for USD)."""
    return _QUANTA[minor_unit_exponent(currency)]


def normalise_currency(currency: str) -> str:
    if not isinstance(currency, str):
        raise MoneyError("currency must be a string ISO 4217 code")
    if currency in SUPPORTED_CURRENCIES:
        return currency
    code = currency.strip().upper()
    if code not in SUPPORTED_CURRENCIES:
        raise MoneyError(f"unsupported currency {currency!r}")
    return code


def to_decimal(value: object) -> Decimal:
    """Turn a wire value (Decimal, int, or numeric string) into a finite Decimal.

    JSON numbers reach us as Decimal because msgspec decodes them straight from the text;
    floats are refused rather than converted.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not an amount
        raise MoneyError("amount must be a number, not a boolean")
    if isinstance(value, float):
        raise MoneyError("amount must not be a binary float; send a JSON number or string")
    if isinstance(value, Decimal):
        result = value if type(value) is Decimal else Decimal(value)  # a PlainDecimal becomes a Decimal
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        if value.lower() in _NON_FINITE:
            raise MoneyError("amount must be finite (no NaN or Infinity)")
        if len(value) > 40 or not _PLAIN_DECIMAL.fullmatch(value):
            raise MoneyError(f"amount {value[:40]!r} is not a plain decimal number (ASCII digits, one optional '.')")
        result = Decimal(value)
    else:
        raise MoneyError(f"amount must be a number or string, not {type(value).__name__}")
    if not result.is_finite():
        raise MoneyError("amount must be finite (no NaN or Infinity)")
    return result


def parse_amount(
    value: object,
    currency: str = "USD",
    *,
    max_amount: Decimal | None = DEFAULT_MAX_AMOUNT,
) -> Decimal:
    """Validate a payment amount and return it quantised to the currency's minor unit."""
    amount = to_decimal(value)
    exponent = minor_unit_exponent(currency)
    if amount <= 0:
        raise MoneyError("amount must be greater than zero")
    if max_amount is not None and amount > max_amount:
        raise MoneyError(f"amount {amount} exceeds the maximum of {max_amount}")
    if amount.adjusted() >= 18:  # beyond any column we store (numeric(20, 4)) and any processor
        raise MoneyError(f"amount {amount} is too large")
    quantised = amount.quantize(_quantum(exponent))
    # Trailing zeros ("50.000") are accepted: the value still fits the minor unit exactly.
    if quantised != amount:
        raise MoneyError(
            f"amount {amount} has more than {exponent} decimal places for {normalise_currency(currency)}"
        )
    return quantised


def amount_field(
    name: str, value: object, currency: str = "USD", *, max_amount: Decimal | None = DEFAULT_MAX_AMOUNT
) -> Decimal:
    """`parse_amount` for a named request field: the error message starts with the field name,
    which is how request validation reports which field was wrong."""
    try:
        return parse_amount(value, currency, max_amount=max_amount)
    except MoneyError as exc:
        raise MoneyError(f"{name}: {exc}") from None


def parse_rate(value: object) -> Decimal:
    """A fraction between 0 and 1 inclusive (0.20 is 20 %)."""
    try:
        rate = to_decimal(value)
    except MoneyError as exc:
        raise MoneyError(str(exc).replace("amount", "rate")) from None
    if rate < 0 or rate > 1:
        raise MoneyError(f"rate {rate} must be between 0 and 1")
    return rate


def round_money(value: Decimal, currency: str = "USD") -> Decimal:
    """Round a computed amount half-up to the currency's minor unit."""
    if isinstance(value, float):
        raise MoneyError("refusing to round a binary float")
    return value.quantize(_quantum(minor_unit_exponent(currency)), rounding=ROUND_HALF_UP)


def percentage_of(amount: Decimal, rate: Decimal, currency: str = "USD") -> Decimal:
    """`amount * rate`, rounded half-up to the minor unit (commission, percentage fees)."""
    return round_money(amount * rate, currency)


def to_minor_units(amount: Decimal, currency: str = "USD") -> int:
    exponent = minor_unit_exponent(currency)
    scaled = amount.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"amount {amount} is not a whole number of minor units")
    return int(scaled)


def from_minor_units(units: int, currency: str = "USD") -> Decimal:
    if isinstance(units, bool) or not isinstance(units, int):
        raise MoneyError("minor units must be an integer")
    exponent = minor_unit_exponent(currency)
    return Decimal(units).scaleb(-exponent).quantize(_quantum(exponent))


def format_amount(amount: Decimal, currency: str = "USD") -> str:
    """The wire form: a decimal string with exactly the currency's decimals ("50.00")."""
    return str(amount.quantize(_quantum(minor_unit_exponent(currency))))


def format_rate(rate: Decimal) -> str:
    """A rate on the wire: at least two decimals, no trailing zeros past them ("0.20", "0.125")."""
    normal = rate.normalize()
    return str(normal.quantize(Decimal("0.01")) if normal.as_tuple().exponent > -2 else normal)


def _quantum(exponent: int) -> Decimal:
    return _QUANTA[exponent]


_EXPONENTS: dict[str, int] = {code: 0 if code in _ZERO_DECIMAL else 3 if code in _THREE_DECIMAL else 2
                              for code in SUPPORTED_CURRENCIES}
_QUANTA: dict[int, Decimal] = {exponent: Decimal(1).scaleb(-exponent) for exponent in (0, 2, 3)}
