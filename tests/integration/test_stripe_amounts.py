"""Amounts on Stripe's wire. Stripe's API keeps ISK two-decimal though fractional króna are gone
(since April 2023 an ISK amount must be a multiple of 100: `100` is 1 króna), while ISO 4217, and
this suite, give ISK no decimals. Sent through the ISO exponent, 5,000 ISK went out as 50 ISK
(and the platform's fee, a commission collection and a refund 1/100 of theirs), and a payment
learned by re-fetch read 100 times its size. UGX is zero-decimal in both."""

from __future__ import annotations

from decimal import Decimal

import aiohttp
import pytest

from sandbox.stripe_sim import start_stripe_sim
from shared.processors.base import PaymentRequest, ProcessorRequestError, RefundRequest, Secret
from shared.processors.stripe import transformers as tf
from shared.processors.stripe.adapter import StripeCredentials, StripeProcessor

KEY = "sk_test_amounts"


@pytest.fixture
async def stripe_pair():
    sim = await start_stripe_sim()
    adapter = StripeProcessor(StripeCredentials(secret_key=Secret(KEY)), api_base=sim.url)
    yield adapter, sim
    await adapter.close()
    await sim.close()


@pytest.mark.parametrize(("currency", "amount", "fee", "refund", "on_the_wire"), [
    ("ISK", "5000", "1000", "1200", (500_000, 100_000, 120_000)),
    ("UGX", "5000", "1000", "1200", (5_000, 1_000, 1_200)),
    ("JPY", "5000", "1000", "1200", (5_000, 1_000, 1_200)),
    ("USD", "50.00", "10.00", "12.00", (5_000, 1_000, 1_200)),
])
async def test_amounts_go_out_and_come_back_in_stripes_units(stripe_pair, currency, amount, fee, refund,
                                                             on_the_wire) -> None:
    adapter, sim = stripe_pair
    paid = await adapter.create_payment(PaymentRequest(
        amount=Decimal(amount), currency=currency, payment_method="pm_card_visa",
        idempotency_key=f"hp-pay-{currency}", reference=f"ref-{currency}", platform_fee=Decimal(fee),
        destination="acct_1BarberAmounts"))
    intent = sim.state.accounts[KEY].payment_intents[paid.processor_payment_id]
    assert (intent["amount"], intent["application_fee_amount"]) == on_the_wire[:2]
    assert paid.amount == Decimal(amount)
    assert (await adapter.retrieve_payment(paid.processor_payment_id)).amount == Decimal(amount)

    refunded = await adapter.refund(RefundRequest(
        processor_payment_id=paid.processor_payment_id, amount=Decimal(refund), currency=currency,
        idempotency_key=f"hp-ref-{currency}", reference=f"rref-{currency}"))
    [kept] = sim.state.accounts[KEY].refunds.values()
    assert kept["amount"] == on_the_wire[2]
    assert refunded.amount == Decimal(refund)


def test_a_fractional_krona_from_stripe_is_refused_not_rounded() -> None:
    intent = {"id": "pi_1", "object": "payment_intent", "status": "succeeded", "currency": "isk",
              "amount": 500_050, "created": 1_796_000_000, "metadata": {}}
    with pytest.raises(ProcessorRequestError, match="ISK"):
        tf.payment_result(intent)
    assert tf.payment_result({**intent, "amount": 500_000}).amount == Decimal("5000")


async def test_the_simulator_refuses_a_fractional_krona_as_stripe_does(stripe_pair) -> None:
    _, sim = stripe_pair
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
        form = {"amount": "500050", "currency": "isk", "payment_method": "pm_card_visa", "confirm": "true"}
        async with http.post(f"{sim.url}/v1/payment_intents", data=form) as answer:
            assert answer.status == 400
            error = (await answer.json())["error"]
        assert (error["code"], error["param"]) == ("invalid_charge_amount_no_decimal_compatible", "amount")
        async with http.post(f"{sim.url}/v1/payment_intents", data={**form, "amount": "500000"}) as answer:
            assert answer.status == 200 and (await answer.json())["status"] == "succeeded"
