"""End to end through `make run`: the gateway, the four services and the three processor
simulators as real processes over real Postgres and NATS. For each of Stripe, Square and PayPal,
a barber connects its own account, a payment routed external is paid through the gateway and
charged once on the barber's simulated account while its webhook is delivered twice, refunds move
it, and a decline is a 402 with the processor's reason.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from decimal import Decimal

import aiohttp
import pytest

from shared.auth import issue_token
from tests.run_support import make_run
from tests.support import eventually

HP = "/api/v1/hybrid-payments"
EX = "/api/v1/external-payments"
_ids = itertools.count(1)

# Credentials, a good and a declined payment method, and where the simulator keeps our reference.
PROCESSORS = {
    "stripe": ({"secret_key": "sk_test_e2e_barber_{b}"}, "pm_card_visa", "pm_card_chargeDeclined"),
    "square": ({"access_token": "EAAAe2e-barber-{b}", "location_id": "LE2E{b}"},
               "cnon:card-nonce-ok", "cnon:card-nonce-declined"),
    "paypal": ({"client_id": "AbarberE2E{b}", "client_secret": "EPaypal-e2e-{b}"}, "paypal-approved",
               "paypal-declined"),
}


@pytest.fixture(scope="module")
def suite(service_env, tmp_path_factory):
    with make_run(service_env, tmp_path_factory.mktemp("e2e")) as running:
        yield running


def tokens(state: dict, b: int) -> tuple[dict, dict]:
    secret = state["jwt_secret"]
    return ({"Authorization": f"Bearer {issue_token(secret, 1000, 'admin')}"},
            {"Authorization": f"Bearer {issue_token(secret, b, 'barber')}"})


async def call(http, method: str, url: str, headers: dict, body=None) -> tuple[int, dict]:
    async with http.request(method, url, headers=headers, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def charges_at_processor(http, processor: str, sim: str, reference: str) -> list[dict]:
    """The simulator's payments that carry our reference (our transaction id)."""
    if processor == "stripe":
        async with http.get(sim + "/_sim/payment_intents") as resp:
            return [p for p in (await resp.json())["data"] if p["metadata"].get("hp_reference") == reference
                    and p["status"] == "succeeded"]
    if processor == "square":
        async with http.get(sim + "/_sim/payments") as resp:
            return [p for p in (await resp.json())["payments"] if p.get("reference_id") == reference
                    and p["status"] == "COMPLETED"]
    async with http.get(sim + "/_sim/captures") as resp:
        return [c for c in (await resp.json())["data"] if c.get("custom_id") == reference
                and c["status"] in ("COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED")]


@pytest.mark.parametrize("processor", ["stripe", "square", "paypal"])
async def test_an_external_payment_through_the_gateway(suite, processor):
    b = 970_000 + next(_ids) * 10 + ["stripe", "square", "paypal"].index(processor)
    state, gateway = suite.state, suite.state["urls"]["gateway"]
    sim = suite.state["urls"][f"{processor}-sim"]
    admin, barber = tokens(state, b)
    credentials, ok, declined = PROCESSORS[processor]
    async with aiohttp.ClientSession(base_url=gateway) as http, aiohttp.ClientSession() as raw:
        status, _ = await call(http, "PUT", f"{HP}/config/{b}", admin, {
            "payment_mode": "decentralized", "preferred_processor": processor, "fallback_enabled": False,
            "commission_rate": "0.10"})
        assert status == 200
        status, connection = await call(http, "POST", f"{EX}/connections", barber, {
            "processor": processor, "account_id": f"{processor}-e2e-{b}",
            "credentials": {k: v.format(b=b) for k, v in credentials.items()}})
        assert status == 201 and connection["status"] == "active", connection
        async with raw.post(sim + "/_sim/webhooks/duplicate", json={"enabled": True}) as resp:
            assert resp.status == 200

        async def external_route():
            s, body = await call(http, "POST", f"{HP}/route", barber, {"appointment_id": 1, "amount": "120.00"})
            return body if s == 200 and body["payment_type"] == "external" else None

        assert (await eventually(external_route, timeout=20))["processor"] == processor
        body = {"appointment_id": 2, "amount": "120.00", "payment_method": ok}
        status, paid = await call(http, "POST", f"{HP}/process", {**barber, "Idempotency-Key": f"e2e-{b}"}, body)
        assert status == 200 and (paid["payment_type"], paid["status"]) == ("external", "completed"), paid

        async def webhooks_in():
            async with raw.get(sim + "/_sim/deliveries") as resp:
                mine = [d for d in (await resp.json())["data"] if d["url"] == connection["webhook_url"]]
            return mine if mine and all(d["status"] == 200 for d in mine) and len(mine) >= 2 else None

        await eventually(webhooks_in, timeout=20)
        await asyncio.sleep(0.5)
        assert len(await charges_at_processor(raw, processor, sim, paid["transaction_id"])) == 1
        status, listed = await call(http, "GET", f"{EX}/transactions?barber_id={b}", barber)
        assert [(t["id"], t["status"]) for t in listed["items"]] == [(paid["transaction_id"], "completed")]

        refund_url = f"{HP}/transactions/{paid['transaction_id']}/refund"
        status, part = await call(http, "POST", refund_url, {**barber, "Idempotency-Key": f"r1-{b}"},
                                  {"amount": "20.00"})
        assert status == 200 and (part["status"], part["refunded_amount"]) == ("partially_refunded", "20.00"), part
        status, rest = await call(http, "POST", refund_url, {**barber, "Idempotency-Key": f"r2-{b}"})
        assert status == 200 and (rest["status"], rest["refunded_amount"]) == ("refunded", "120.00"), rest

        status, failed = await call(http, "POST", f"{HP}/process", barber, {
            "appointment_id": 3, "amount": "15.00", "payment_method": declined})
        assert status == 402 and failed["code"] == "payment_declined" and failed["detail"], failed
        async with raw.post(sim + "/_sim/webhooks/duplicate", json={"enabled": False}):
            pass
    text = json.dumps(listed)
    assert all(v.format(b=b) not in text for v in credentials.values() if "secret" in v or "EAAA" in v)


async def test_external_commission_is_accrued_and_collected(suite):
    """Payments on the barber's own processors (one partly refunded) become its unbilled commission;
    `POST /run` with `force` collects it on the platform account; the books balance."""
    b = 975_000 + next(_ids)
    state, gateway = suite.state, suite.state["urls"]["gateway"]
    admin, barber = tokens(state, b)
    pc = "/api/v1/platform-collections"
    async with aiohttp.ClientSession(base_url=gateway) as http:
        await call(http, "PUT", f"{HP}/config/{b}", admin, {
            "payment_mode": "decentralized", "preferred_processor": "square", "fallback_enabled": False,
            "commission_rate": "0.15"})
        status, connection = await call(http, "POST", f"{EX}/connections", barber, {
            "processor": "square", "account_id": f"sq-coll-{b}",
            "credentials": {"access_token": f"EAAA-coll-{b}", "location_id": f"LCOLL{b}"}})
        assert status == 201 and connection["status"] == "active"

        async def external_route():
            s, body = await call(http, "POST", f"{HP}/route", barber, {"appointment_id": 1, "amount": "80.00"})
            return body if s == 200 and body["payment_type"] == "external" else None

        await eventually(external_route, timeout=20)
        owed = Decimal(0)
        paid = []
        for i, amount in enumerate(("80.00", "120.00", "33.33")):
            status, body = await call(http, "POST", f"{HP}/process", barber, {
                "appointment_id": 10 + i, "amount": amount, "payment_method": "cnon:card-nonce-ok"})
            assert status == 200 and body["status"] == "completed", body
            paid.append(body)
            owed += Decimal(body["commission_amount"])
        # Half of the 120.00 is refunded: half of its 18.00 commission is given back.
        status, _ = await call(http, "POST", f"{HP}/transactions/{paid[1]['transaction_id']}/refund", barber,
                               {"amount": "60.00"})
        assert status == 200
        owed -= Decimal("9.00")

        async def accrued():
            _, balance = await call(http, "GET", f"{pc}/balance/{b}", admin)
            return balance if Decimal(balance["accrued_total"]) == owed else None

        await eventually(accrued, timeout=20)
        status, _ = await call(http, "PUT", f"{pc}/payment-method", barber, {"payment_method": "pm_card_visa"})
        assert status == 200
        status, run = await call(http, "POST", f"{pc}/run", admin, {"barber_id": b, "force": True})
        assert status == 200 and [c["amount"] for c in run["created"]] == [f"{owed:.2f}"], run

        async def collected():
            _, balance = await call(http, "GET", f"{pc}/balance/{b}", admin)
            return balance if balance["collected_total"] == f"{owed:.2f}" else None

        balance = await eventually(collected, timeout=20)
        parts = ("collected_total", "pending_collections", "failed_collections", "overdue_collections",
                 "unbilled_commission")
        assert sum(Decimal(balance[k]) for k in parts) == Decimal(balance["accrued_total"]) == owed
