"""Money helpers: exact parsing, refusal of floats and bad values, half-up rounding."""

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.money import (
    MoneyError,
    format_amount,
    format_rate,
    from_minor_units,
    minor_unit_exponent,
    normalise_currency,
    parse_amount,
    parse_rate,
    percentage_of,
    round_money,
    to_minor_units,
)


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        (Decimal("50"), "USD", Decimal("50.00")),
        ("50.00", "USD", Decimal("50.00")),
        (50, "usd", Decimal("50.00")),
        ("0.01", "USD", Decimal("0.01")),
        ("50.100", "USD", Decimal("50.10")),  # trailing zeros still fit the minor unit
        ("1000", "JPY", Decimal("1000")),
        ("1.234", "KWD", Decimal("1.234")),
        ("100000.00", "USD", Decimal("100000.00")),
    ],
)
def test_parse_amount_accepts(value, currency, expected):
    result = parse_amount(value, currency)
    assert result == expected
    assert str(result) == str(expected)


@pytest.mark.parametrize(
    ("value", "currency", "message"),
    [
        (50.0, "USD", "float"),
        (0.1, "USD", "float"),
        (True, "USD", "boolean"),
        ("NaN", "USD", "finite"),
        ("Infinity", "USD", "finite"),
        ("-Infinity", "USD", "finite"),
        (Decimal("NaN"), "USD", "finite"),
        ("0", "USD", "greater than zero"),
        ("-1.00", "USD", "greater than zero"),
        ("0.001", "USD", "decimal places"),
        ("10.5", "JPY", "decimal places"),
        ("1.2345", "KWD", "decimal places"),
        ("100000.01", "USD", "maximum"),
        (Decimal("1e400"), "USD", "maximum"),
        ("abc", "USD", "not a plain decimal"),
        ("", "USD", "not a plain decimal"),
        # Only plain ASCII decimal notation is money (Decimal() itself accepts all of these).
        ("５０", "USD", "not a plain decimal"),  # full-width digits
        ("٥٠", "USD", "not a plain decimal"),  # Arabic-Indic digits
        ("1_000", "USD", "not a plain decimal"),
        (" 50", "USD", "not a plain decimal"),
        ("50 ", "USD", "not a plain decimal"),
        ("5 0", "USD", "not a plain decimal"),
        ("1e3", "USD", "not a plain decimal"),
        ("+50", "USD", "not a plain decimal"),
        ("50.", "USD", "not a plain decimal"),
        (".50", "USD", "not a plain decimal"),
        ("0x10", "USD", "not a plain decimal"),
        ("nan", "USD", "finite"),
        ("-Infinity", "USD", "finite"),
        (None, "USD", "number or string"),
        ([1], "USD", "number or string"),
        ("10", "XXX", "unsupported currency"),
        ("10", "usdollar", "unsupported currency"),
    ],
)
def test_parse_amount_refuses(value, currency, message):
    with pytest.raises(MoneyError, match=message):
        parse_amount(value, currency)


def test_max_amount_is_configurable():
    assert parse_amount("250000", max_amount=Decimal("500000")) == Decimal("250000.00")
    with pytest.raises(MoneyError, match="maximum of 10"):
        parse_amount("10.01", max_amount=Decimal("10"))


def test_json_numbers_reach_decimal_without_float():
    class Body(msgspec.Struct):
        amount: Decimal

    # 0.1 as a binary float is 0.1000000000000000055511151231257827...; msgspec must give exactly 0.1.
    decoded = msgspec.json.decode(b'{"amount": 0.1}', type=Body)
    assert decoded.amount == Decimal("0.1")
    assert parse_amount(decoded.amount) == Decimal("0.10")
    precise = msgspec.json.decode(b'{"amount": 12345678901234.57}', type=Body)
    assert parse_amount(precise.amount, max_amount=None) == Decimal("12345678901234.57")


@pytest.mark.parametrize(("rate", "ok"), [("0", True), ("1", True), ("0.125", True), ("1.01", False), ("-0.01", False)])
def test_parse_rate(rate, ok):
    if ok:
        assert parse_rate(rate) == Decimal(rate)
    else:
        with pytest.raises(MoneyError, match="between 0 and 1"):
            parse_rate(rate)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.005", "0.01"), ("0.004", "0.00"), ("2.675", "2.68"), ("-2.675", "-2.68"), ("10.125", "10.13")],
)
def test_round_half_up(value, expected):
    assert round_money(Decimal(value)) == Decimal(expected)


@pytest.mark.parametrize(("rate", "text"), [("0.2", "0.20"), ("0.20000", "0.20"), ("0.125", "0.125"), ("1", "1.00"),
                                            ("0", "0.00"), ("0.05", "0.05")])
def test_format_rate(rate, text):
    assert format_rate(Decimal(rate)) == text


def test_round_refuses_float():
    with pytest.raises(MoneyError):
        round_money(2.675)  # type: ignore[arg-type]


def test_minor_units_round_trip_examples():
    assert to_minor_units(Decimal("50.00")) == 5000
    assert to_minor_units(Decimal("1000"), "JPY") == 1000
    assert to_minor_units(Decimal("1.234"), "KWD") == 1234
    assert from_minor_units(5000) == Decimal("50.00")
    assert format_amount(Decimal("5"), "USD") == "5.00"
    with pytest.raises(MoneyError):
        to_minor_units(Decimal("0.001"))
    with pytest.raises(MoneyError):
        from_minor_units(1.0)  # type: ignore[arg-type]


cents = st.integers(min_value=1, max_value=10_000_000)
rates = st.decimals(min_value=0, max_value=1, places=4)
currencies = st.sampled_from(["USD", "EUR", "JPY", "KWD", "GBP"])


@given(cents, currencies)
def test_minor_units_round_trip(units, currency):
    amount = from_minor_units(units, currency)
    assert to_minor_units(amount, currency) == units
    assert parse_amount(format_amount(amount, currency), currency, max_amount=None) == amount


@given(st.decimals(min_value=-10**9, max_value=10**9, allow_nan=False, allow_infinity=False, places=6), currencies)
def test_rounding_is_half_up_and_within_half_a_unit(value, currency):
    rounded = round_money(value, currency)
    unit = Decimal(1).scaleb(-minor_unit_exponent(currency))
    assert abs(rounded - value) <= unit / 2
    # Exactly half a unit away always rounds away from zero.
    if abs(rounded - value) == unit / 2:
        assert abs(rounded) > abs(value)
    assert rounded == rounded.quantize(unit)


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=0, max_value=10_000),
       st.sampled_from([("USD", 2), ("JPY", 0), ("KWD", 3)]))
def test_percentage_matches_integer_half_up(units, rate_units, currency_exponent):
    """Oracle: integer arithmetic in minor units (rate in ten-thousandths), rounded half-up."""
    currency, exponent = currency_exponent
    amount = Decimal(units).scaleb(-exponent)
    expected_units = (2 * units * rate_units + 10_000) // 20_000
    got = percentage_of(amount, Decimal(rate_units).scaleb(-4), currency)
    assert to_minor_units(got, currency) == expected_units


@pytest.mark.parametrize("currency", [["USD"], {"USD": 1}, None, 2, b"USD", "US D", "XXX", ""])
def test_a_currency_that_is_not_a_supported_code_is_a_money_error(currency):
    """Never a TypeError (a 500) from the lookups' fast path, whatever reaches them."""
    with pytest.raises(MoneyError):
        minor_unit_exponent(currency)


@pytest.mark.parametrize(("given", "code", "exponent"), [("USD", "USD", 2), (" usd ", "USD", 2), ("jpy", "JPY", 0),
                                                         ("KWD", "KWD", 3)])
def test_codes_are_normalised_alike_with_or_without_the_fast_path(given, code, exponent):
    assert normalise_currency(given) == code and minor_unit_exponent(given) == exponent
