"""A processor's refusal of an idempotency key already used with other parameters (Stripe's 400
`idempotency_error`, Square's 400 `IDEMPOTENCY_KEY_REUSED`; PayPal's 422
`PAYPAL_REQUEST_ID_PREVIOUSLY_USED`, in test_paypal.py) is no refusal of the payment: the key
was used, so the first request under it reached the processor and may have charged. Read as
"rejected", the attempt was settled failed beside a payment that succeeded (and collections' dunning
would charge again; a barber's saved card changing while two drives of one attempt ran was enough).
Each adapter answers it as `OutcomeUnknown`, which leaves the attempt to be looked up by reference."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from sandbox.square_sim import start_square_sim
from sandbox.stripe_sim import start_stripe_sim
from shared.processors.base import OutcomeUnknown, PaymentRequest, Secret
from shared.processors.square.adapter import SquareCredentials, SquareProcessor
from shared.processors.stripe.adapter import StripeCredentials, StripeProcessor


@pytest.mark.parametrize("processor", ["stripe", "square"])
async def test_a_key_reused_with_other_parameters_is_an_unknown_outcome(processor: str) -> None:
    if processor == "stripe":
        sim = await start_stripe_sim()
        adapter = StripeProcessor(StripeCredentials(secret_key=Secret("sk_test_reused")), api_base=sim.url)
        method = "pm_card_visa"
    else:
        sim = await start_square_sim()
        adapter = SquareProcessor(SquareCredentials(access_token=Secret("EAAAreused"), location_id="LREUSED"),
                                  api_base=sim.url)
        method = "cnon:card-nonce-ok"
    try:
        key = f"hp-coll-{uuid.uuid4()}"
        first = PaymentRequest(amount=Decimal("25.00"), currency="USD", payment_method=method,
                               idempotency_key=key, reference="ref-reused")
        paid = await adapter.create_payment(first)
        assert paid.status == "completed"
        other_card = PaymentRequest(amount=Decimal("25.00"), currency="USD",
                                    payment_method="pm_card_mastercard" if processor == "stripe" else "cnon:other",
                                    idempotency_key=key, reference="ref-reused")
        with pytest.raises(OutcomeUnknown):
            await adapter.create_payment(other_card)
    finally:
        await adapter.close()
        await sim.close()
