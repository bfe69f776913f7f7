"""The routing engine: every rule of the contract's decision list, its edges, and the money identities."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.router.domain import (
    Connection,
    NoPaymentRoute,
    PaymentConfig,
    RoutingInput,
    decide_route,
    estimate_fee,
    price_route,
    validate_rules,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
D = Decimal


def conn(id=1, processor="stripe", status="active", currency="USD", payments=True, age_days=0, fees=None):
    return Connection(id, processor, status, currency, payments, T0 - timedelta(days=age_days), fees)


def config(mode="hybrid", **kw):
    return PaymentConfig(barber_id=7, payment_mode=mode, commission_rate=kw.pop("rate", D("0.20")), **kw)


def decide(cfg, connections=(), amount="50.00", currency="USD", enabled=True, unavailable=()):
    return decide_route(
        RoutingInput(cfg, tuple(connections), D(amount), currency, enabled, frozenset(unavailable))
    )


# Rule 1: kill switch and centralized mode.
def test_kill_switch_routes_everything_centralized():
    route = decide(config("decentralized"), [conn()], enabled=False)
    assert (route.payment_type, route.processor, route.reason) == ("centralized", "stripe", "hybrid_payments_disabled")
    assert decide(config("hybrid", split_threshold=D(1)), [conn()], enabled=False).payment_type == "centralized"


def test_centralized_mode_ignores_connections():
    route = decide(config("centralized"), [conn()])
    assert (route.payment_type, route.reason, route.connection) == ("centralized", "mode_centralized", None)


# Rule 2: which connection is the candidate.
def test_preferred_processor_wins_over_older_connections():
    route = decide(config("decentralized", preferred_processor="square"),
                   [conn(1, "stripe", age_days=30), conn(2, "square", age_days=1)])
    assert (route.processor, route.connection.id) == ("square", 2)


def test_inactive_preferred_processor_falls_to_oldest_other():
    route = decide(config("decentralized", preferred_processor="square"),
                   [conn(1, "square", status="pending", age_days=90), conn(2, "paypal", age_days=5),
                    conn(3, "stripe", age_days=10)])
    assert (route.processor, route.connection.id) == ("stripe", 3)


def test_currency_must_match_the_connection():
    route = decide(config("decentralized", preferred_processor="stripe"),
                   [conn(1, "stripe", currency="EUR"), conn(2, "paypal", currency="USD")])
    assert route.connection.id == 2
    assert decide(config("decentralized"), [conn(1, currency="EUR")]).payment_type == "centralized"


def test_connections_that_cannot_take_payments_are_skipped():
    route = decide(config("decentralized"), [conn(1, payments=False), conn(2, status="disconnected"),
                                             conn(3, status="error")])
    assert (route.payment_type, route.fallback_used, route.reason) == ("centralized", True, "no_external_connection")


def test_oldest_wins_on_equal_preference_and_id_breaks_ties():
    assert decide(config("decentralized"), [conn(5, age_days=1), conn(4, age_days=1)]).connection.id == 4


# Rule 3: decentralized.
def test_decentralized_uses_the_candidate():
    route = decide(config("decentralized"), [conn(9, "paypal")])
    assert (route.payment_type, route.processor, route.reason, route.fallback_used) == (
        "external", "paypal", "mode_decentralized", False)


def test_decentralized_without_candidate_and_without_fallback_is_refused():
    with pytest.raises(NoPaymentRoute) as info:
        decide(config("decentralized", fallback_enabled=False), [conn(status="pending")])
    assert info.value.reason == "no_external_connection"


# Rule 4: hybrid amount rules, in order, with their edges.
@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("19.99", ("centralized", "below_min_external_amount")),
        ("20.00", ("centralized", "below_split_threshold")),  # equal to the minimum is not below it
        ("99.99", ("centralized", "below_split_threshold")),
        ("100.00", ("external", "at_or_above_split_threshold")),  # equal to the threshold goes external
        ("500.00", ("external", "at_or_above_split_threshold")),  # equal to the max stays within it
        ("500.01", ("external", "above_max_platform_amount")),
    ],
)
def test_hybrid_rules_in_order(amount, expected):
    cfg = config(min_external_amount=D("20.00"), split_threshold=D("100.00"), max_platform_amount=D("500.00"))
    route = decide(cfg, [conn()], amount=amount)
    assert (route.payment_type, route.reason) == expected


def test_hybrid_above_max_without_candidate_is_refused_even_with_fallback():
    cfg = config(max_platform_amount=D("500.00"), fallback_enabled=True)
    with pytest.raises(NoPaymentRoute) as info:
        decide(cfg, [], amount="600.00")
    assert info.value.reason == "above_max_platform_amount"


def test_hybrid_threshold_without_candidate_follows_fallback_rules():
    route = decide(config(split_threshold=D("100")), [], amount="150.00")
    assert (route.payment_type, route.fallback_used, route.reason) == ("centralized", True, "no_external_connection")
    with pytest.raises(NoPaymentRoute):
        decide(config(split_threshold=D("100"), fallback_enabled=False), [], amount="150.00")


def test_hybrid_without_rules_prefers_external_when_possible():
    assert decide(config(), [conn()]).reason == "hybrid_prefers_external"
    route = decide(config(), [])
    assert (route.payment_type, route.reason, route.fallback_used) == (
        "centralized", "hybrid_without_external_connection", False)


def test_hybrid_with_only_a_minimum_sends_larger_amounts_external():
    cfg = config(min_external_amount=D("20"))
    assert decide(cfg, [conn()], amount="20.00").payment_type == "external"
    assert decide(cfg, [conn()], amount="19.99").payment_type == "centralized"


# Rule 5: a failing account (its connection's circuit open) is unavailable; others of the same processor are not.
def test_open_circuit_makes_that_connection_unavailable():
    cfg = config("decentralized", preferred_processor="stripe")
    route = decide(cfg, [conn(1, "stripe"), conn(2, "square", age_days=3)], unavailable={1})
    assert route.processor == "square"
    route = decide(cfg, [conn(1, "stripe"), conn(3, "stripe", age_days=3)], unavailable={1})
    assert (route.processor, route.connection.id) == ("stripe", 3)  # the same processor, another account
    route = decide(cfg, [conn(1, "stripe")], unavailable={1})
    assert (route.payment_type, route.reason, route.fallback_used) == ("centralized", "processor_unavailable", True)
    with pytest.raises(NoPaymentRoute) as info:
        decide(config("decentralized", fallback_enabled=False), [conn(1, "stripe")], unavailable={1})
    assert info.value.reason == "processor_unavailable"


# Pricing.
# Money in other currencies, and routes that would cost the barber more than the payment.
def test_list_price_fixed_fee_is_per_currency():
    # Stripe's list price has no fixed part known for JPY: 2.9 % of 1000 is 29, never 29 + 0.30.
    assert estimate_fee("stripe", None, D("1000"), "JPY") == D("29")
    assert estimate_fee("stripe", None, D("10.00"), "EUR") == D("0.54")  # 0.29 + 0.25
    assert estimate_fee("stripe", None, D("10.00"), "USD") == D("0.59")  # 0.29 + 0.30
    assert estimate_fee("paypal", None, D("1.125"), "KWD") == D("0.039")  # 3.49 % alone, in fils


def test_thresholds_apply_only_in_their_currency():
    cfg = config(min_external_amount=D("20.00"), split_threshold=D("100.00"), max_platform_amount=D("500.00"))
    # 10 EUR is "below 20" only if the rule were in EUR; it is in USD, so it is not compared.
    route = decide(cfg, [conn(currency="EUR")], amount="10.00", currency="EUR")
    assert (route.payment_type, route.reason) == ("external", "other_currency_prefers_external")
    route = decide(cfg, [], amount="900.00", currency="EUR")  # above the USD maximum, but not in USD
    assert (route.payment_type, route.reason) == ("centralized", "other_currency_without_external_connection")
    jpy = config(min_external_amount=D("2000"), threshold_currency="JPY")
    assert decide(jpy, [conn(currency="JPY")], amount="1999", currency="JPY").reason == "below_min_external_amount"
    assert decide(jpy, [conn(currency="JPY")], amount="2000", currency="JPY").payment_type == "external"


def test_external_route_never_promises_a_negative_net():
    # 0.50 through PayPal: fee 0.49 + 3.49 % = 0.51 > 0.50, so that connection cannot take it.
    paypal = conn(9, "paypal")
    route = decide(config("decentralized"), [paypal], amount="0.50")
    assert (route.payment_type, route.reason, route.fallback_used) == (
        "centralized", "external_fees_exceed_amount", True)
    with pytest.raises(NoPaymentRoute) as info:
        decide(config("decentralized", fallback_enabled=False), [paypal], amount="0.50")
    assert info.value.reason == "external_fees_exceed_amount"
    # A cheaper connection that can take it is used instead.
    route = decide(config("decentralized", preferred_processor="paypal"), [paypal, conn(3, "stripe")], amount="0.50")
    assert (route.payment_type, route.processor) == ("external", "stripe")
    priced = price_route(route, D("0.50"), "USD", D("0.20"))
    assert priced.barber_net == D("0.50") - D("0.10") - D("0.31") >= 0


def test_pricing_examples():
    centralized = price_route(decide(config("centralized"), []), D("50.00"), "USD", D("0.20"))
    assert (centralized.commission_amount, centralized.estimated_processor_fee, centralized.barber_net) == (
        D("10.00"), D("1.75"), D("40.00"))
    fees = (D("2.6"), D("0.10"))
    external = price_route(decide(config("decentralized"), [conn(processor="square", fees=fees)]),
                           D("50.00"), "USD", D("0.125"))
    assert (external.commission_amount, external.estimated_processor_fee, external.barber_net) == (
        D("6.25"), D("1.40"), D("42.35"))


def test_commission_rounds_half_up():
    priced = price_route(decide(config("centralized"), []), D("10.25"), "USD", D("0.10"))
    assert priced.commission_amount == D("1.03")  # 1.025 -> 1.03


def test_rule_validation():
    assert validate_rules(D("50"), D("40"), None).startswith("min_external_amount")
    assert validate_rules(D("50"), None, D("40")).startswith("split_threshold")
    assert validate_rules(D("10"), D("500"), D("100")) is None


# Properties. The oracle is integer arithmetic in minor units, independent of the Decimal code.
EXPONENT = {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3}
amounts = st.integers(min_value=1, max_value=10_000_000)  # minor units
rates = st.integers(min_value=0, max_value=10_000)  # ten-thousandths: 0.2000 is 2000
optional_amounts = st.none() | amounts.map(lambda c: D(c).scaleb(-2))
processors = st.sampled_from(["stripe", "square", "paypal"])
fee_percents = st.integers(0, 1000)  # hundredths of a percent: 2.90 % is 290
fee_fixed = st.integers(0, 200)  # minor units
connections = st.lists(
    st.builds(
        lambda id, processor, status, currency, payments, age_days, fees: conn(
            id, processor, status, currency, payments, age_days,
            None if fees is None else (D(fees[0]).scaleb(-2), D(fees[1]).scaleb(-EXPONENT[currency]))),
        id=st.integers(1, 1000),
        processor=processors,
        status=st.sampled_from(["active", "pending", "disconnected", "error"]),
        currency=st.sampled_from(["USD", "EUR", "JPY", "KWD"]),
        payments=st.booleans(),
        age_days=st.integers(0, 400),
        fees=st.none() | st.tuples(fee_percents, fee_fixed),
    ),
    max_size=5,
)
configs = st.builds(
    config,
    mode=st.sampled_from(["centralized", "decentralized", "hybrid"]),
    preferred_processor=st.none() | processors,
    fallback_enabled=st.booleans(),
    min_external_amount=optional_amounts,
    max_platform_amount=optional_amounts,
    split_threshold=optional_amounts,
)


def half_up_div(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) half-up, for non-negative integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def oracle_fee(connection, processor: str, units: int, currency: str) -> int:
    """The fee in minor units from integers only: percent in hundredths, fixed in minor units."""
    if connection is not None and connection.processing_fees is not None:
        percent, fixed = connection.processing_fees
    else:
        from shared.fees import LIST_PRICES

        percent, by_currency = LIST_PRICES[processor]
        fixed = by_currency.get(currency, D(0))
    hundredths = int(percent * 100)
    return half_up_div(units * hundredths, 10_000) + int(fixed.scaleb(EXPONENT[currency]))


@given(configs, connections, amounts, st.sampled_from(["USD", "EUR", "JPY", "KWD"]), st.booleans(),
       st.frozensets(st.integers(1, 1000)), rates)
def test_decisions_name_only_usable_connections_and_price_exactly(
    cfg, conns, units, currency, enabled, unavailable, rate_units
):
    amount = D(units).scaleb(-EXPONENT[currency])
    rate = D(rate_units).scaleb(-4)
    cfg = PaymentConfig(**{**cfg.__dict__, "commission_rate": rate})
    try:
        route = decide_route(RoutingInput(cfg, tuple(conns), amount, currency, enabled, unavailable))
    except NoPaymentRoute as refused:
        assert cfg.payment_mode != "centralized" and enabled and refused.reason
        return
    assert route.reason
    if route.payment_type == "external":
        assert route.connection is not None and route.connection.status == "active"
        assert route.connection.supports_payments and route.connection.default_currency == currency
        assert route.processor == route.connection.processor and route.connection.id not in unavailable
    else:
        assert route.connection is None and route.processor == "stripe"
    priced = price_route(route, amount, currency, rate)
    commission = half_up_div(units * rate_units, 10_000)
    fee = oracle_fee(route.connection, route.processor, units, currency)
    scale = EXPONENT[currency]
    assert priced.commission_amount.scaleb(scale) == commission
    assert priced.estimated_processor_fee.scaleb(scale) == fee
    expected_net = units - commission - (fee if route.payment_type == "external" else 0)
    assert priced.barber_net.scaleb(scale) == expected_net
    assert expected_net >= 0  # no route ever promises the barber a negative net
    for value in (priced.commission_amount, priced.estimated_processor_fee, priced.barber_net):
        assert value == value.quantize(D(1).scaleb(-scale))  # exact in the currency's minor units
