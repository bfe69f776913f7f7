"""The external service as a real process, against the Stripe simulator as a real process that
delivers signed webhooks to it: connections (sealed credentials, credential checks, webhook
registration, isolation), charges and refunds for the router, webhooks (signatures, duplicates,
order), reconciliation, key rotation, and credentials never leaking into logs.
"""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import datetime
from decimal import Decimal

import aiohttp
import msgspec
import pytest
import sqlalchemy as sa
import stripe
from cryptography.fernet import Fernet

from services.external import tables as et
from tests.conftest import ENCRYPTION_KEY, JWT_SECRET
from tests.integration.external_support import (  # noqa: F401 (fixtures)
    BASE,
    PROCESSORS,
    SERVICE,
    call,
    charge_body,
    connect,
    connect_stripe,
    events,
    external_log,
    external_url,
    http,
    router_url,
    rows,
    sdk,
    stripe_key,
    transaction,
    wait_applied,
    webhook_events_of,
)
from tests.integration.router_support import admin, barber, sim_call
from tests.support import eventually

_ids = itertools.count(1)


def next_barber() -> int:
    return 900_000 + next(_ids)


@pytest.mark.parametrize("processor", sorted(PROCESSORS))
async def test_each_processor_connects_charges_once_refunds_and_declines(http, db, processor):
    """Charged once on the barber's simulated account and recorded once, though the processor's
    own webhook for it arrives too; refunds move the status; a decline is a 402 with its reason."""
    b = next_barber()
    connection = await connect(http, b, processor)
    assert (connection["status"], connection["webhook_secret_set"]) == ("active", True), connection
    ok, declined = PROCESSORS[processor][1:]
    status, tx = await call(http, "POST", "/internal/v1/charges", SERVICE,
                            charge_body(b, connection["id"], "90.00", method=ok))
    assert status == 200 and tx["status"] == "completed" and tx["external_transaction_id"], tx

    async def webhook_applied():
        return [e for e in await webhook_events_of(db, connection["id"]) if e["understood"]]

    await eventually(webhook_applied, timeout=15)
    stored = await rows(db, sa.select(et.transactions).where(et.transactions.c.barber_id == b))
    assert len(stored) == 1 and stored[0]["status"] == "completed"
    status, part = await call(http, "POST", "/internal/v1/refunds", SERVICE,
                              {"transaction_id": tx["id"], "refund_id": str(uuid.uuid4()), "amount": "40.00"})
    assert status == 200 and part["transaction"]["status"] == "partially_refunded", part
    status, rest = await call(http, "POST", "/internal/v1/refunds", SERVICE,
                              {"transaction_id": tx["id"], "refund_id": str(uuid.uuid4())})
    assert status == 200 and (rest["transaction"]["status"], rest["refund_amount"]) == ("refunded", "50.00"), rest
    for event_type, count in REFUND_NOTICES[processor]:  # the refunds' own notices arrive too
        await wait_applied(db, connection["id"], event_type, count)
    statuses = [e["status"] for e in await events(db, "transaction.recorded", "transaction_id", tx["id"])]
    assert statuses == ["completed", "partially_refunded", "refunded"]
    status, failed = await call(http, "POST", "/internal/v1/charges", SERVICE,
                                charge_body(b, connection["id"], "10.00", method=declined))
    assert status == 402 and failed["code"] == "payment_declined" and failed["detail"], failed


# ---- connections -----------------------------------------------------------------------------------

async def test_a_stripe_connection_is_checked_registered_and_never_shows_its_key(http, db, stripe_sim):
    b = next_barber()
    body = await connect_stripe(http, b)
    assert (body["status"], body["usable"], body["webhook_secret_set"]) == ("active", True, True)
    assert body["credentials_hint"] == "…ount" and stripe_key(b) not in str(body)
    assert body["webhook_url"].endswith(f"/api/v1/webhooks/stripe/{body['id']}")
    state = await sim_call(stripe_sim, "GET", "/_sim/state")
    endpoints = [e for a in state["accounts"] for e in a["webhook_endpoints"] if e["url"] == body["webhook_url"]]
    assert len(endpoints) == 1  # registered with the barber's own Stripe account
    stored = (await rows(db, sa.select(et.connections).where(et.connections.c.id == body["id"])))[0]
    assert stripe_key(b) not in stored["credentials"] and stored["webhook_secret"].startswith("gAAAA")
    assert [e["status"] for e in await events(db, "connection.changed", "connection_id", body["id"])] == [
        "pending", "active"]
    status, listed = await call(http, "GET", f"{BASE}/connections", barber(b))
    assert status == 200 and [c["id"] for c in listed["items"]] == [body["id"]]
    status, again = await call(http, "POST", f"{BASE}/connections", barber(b), {
        "processor": "stripe", "account_id": f"acct_own_{b}", "credentials": {"secret_key": stripe_key(b)}})
    assert (status, again["code"]) == (409, "connection_exists")


async def test_refused_credentials_leave_the_connection_out_with_the_reason(http, db):
    b = next_barber()
    status, body = await call(http, "POST", f"{BASE}/connections", barber(b), {
        "processor": "stripe", "account_id": "acct_x", "credentials": {"secret_key": "sk_test_invalid_key_1234"}})
    assert status == 201 and body["status"] == "error" and not body["usable"]
    assert "refused the credentials" in body["status_reason"]
    # New credentials are checked again.
    status, fixed = await call(http, "PATCH", f"{BASE}/connections/{body['id']}", barber(b),
                               {"credentials": {"secret_key": stripe_key(b)}})
    assert status == 200 and fixed["status"] == "active"


@pytest.mark.parametrize(("payload", "field"), [
    ({"processor": "stripe", "account_id": "a", "credentials": {}}, "secret_key"),
    ({"processor": "stripe", "account_id": "a", "credentials": {"secret_key": "k" * 600}}, "secret_key"),
    ({"processor": "square", "account_id": "a", "credentials": {"access_token": "t"}}, "location_id"),
    ({"processor": "paypal", "account_id": "a", "credentials": {"client_id": "c"}}, "client_secret"),
    ({"processor": "venmo", "account_id": "a", "credentials": {}}, "processor"),
    ({"processor": "stripe", "account_id": "a", "credentials": {"secret_key": "sk_test_1"},
      "default_currency": "XYZ"}, "default_currency"),
    ({"processor": "stripe", "account_id": "a", "credentials": {"secret_key": "sk_test_1"},
      "processing_fees": {"percent": "120"}}, "processing_fees"),
    ({"processor": "stripe", "account_id": "", "credentials": {"secret_key": "sk_test_1"}}, "account_id"),
])
async def test_bad_connection_bodies_are_422_naming_the_field(http, db, payload, field):
    b = next_barber()
    status, body = await call(http, "POST", f"{BASE}/connections", barber(b), payload)
    assert status == 422 and field in body["detail"], body
    assert await rows(db, sa.select(et.connections).where(et.connections.c.barber_id == b)) == []


async def test_a_barber_sees_and_changes_only_its_own_connections(http):
    owner, other = next_barber(), next_barber()
    connection = await connect_stripe(http, owner)
    for method, path, json in [("GET", f"{BASE}/connections/{connection['id']}", None),
                               ("PATCH", f"{BASE}/connections/{connection['id']}", {"account_name": "mine now"}),
                               ("DELETE", f"{BASE}/connections/{connection['id']}", None)]:
        status, _ = await call(http, method, path, barber(other), json)
        assert status == 404, (method, path)
    status, _ = await call(http, "GET", f"{BASE}/connections?barber_id={owner}", barber(other))
    assert status == 403
    status, _ = await call(http, "POST", "/internal/v1/charges", barber(owner), charge_body(owner, connection["id"]))
    assert status == 403  # the internal API takes service tokens only
    status, seen = await call(http, "GET", f"{BASE}/connections/{connection['id']}", admin())
    assert status == 200 and seen["barber_id"] == owner


async def test_disconnect_publishes_the_connection_as_unusable(http, db):
    b = next_barber()
    connection = await connect_stripe(http, b)
    status, body = await call(http, "DELETE", f"{BASE}/connections/{connection['id']}", barber(b))
    assert status == 200 and body["status"] == "disconnected" and not body["usable"]
    assert [e["status"] for e in await events(db, "connection.changed", "connection_id", connection["id"])][-1] == \
        "disconnected"
    status, refused = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"]))
    assert (status, refused["code"], refused["nothing_happened"]) == (409, "connection_unusable", True)


# ---- charges and refunds for the router -----------------------------------------------------------

async def test_a_charge_is_recorded_once_though_the_answer_and_the_webhook_race(http, db, stripe_sim):
    b = next_barber()
    connection = await connect_stripe(http, b)
    await sim_call(stripe_sim, "POST", "/_sim/webhooks/duplicate", {"enabled": True})
    try:
        request = charge_body(b, connection["id"], "80.00")
        status, tx = await call(http, "POST", "/internal/v1/charges", SERVICE, request)
        assert status == 200 and tx["status"] == "completed", tx
        # The same route again (a retry) answers the same transaction and charges nothing more.
        status, again = await call(http, "POST", "/internal/v1/charges", SERVICE, request)
        assert again["id"] == tx["id"]

        async def deliveries_done():
            state = await sim_call(stripe_sim, "GET", "/_sim/deliveries")
            mine = [d for d in state["data"] if d["url"] == connection["webhook_url"]
                    and d["type"] == "payment_intent.succeeded"]
            return len(mine) == 2 and all(d["status"] == 200 for d in mine)  # the same event, twice

        await eventually(deliveries_done, timeout=15)
    finally:
        await sim_call(stripe_sim, "POST", "/_sim/webhooks/duplicate", {"enabled": False})
    intents = [pi for pi in (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
               if pi["metadata"].get("route_id") == request["route_id"]]
    assert len(intents) == 1 and intents[0]["amount"] == 8000
    stored = await rows(db, sa.select(et.transactions).where(et.transactions.c.barber_id == b))
    assert len(stored) == 1 and stored[0]["external_transaction_id"] == intents[0]["id"]
    recorded = await events(db, "transaction.recorded", "transaction_id", tx["id"])
    assert [(e["status"], e["payment_type"], e["commission_amount"]) for e in recorded] == [
        ("completed", "external", "8.00")]
    async def counted():  # the seed's counters are recounted by a job (every STATS_INTERVAL seconds)
        return (await call(http, "GET", f"{BASE}/connections/{connection['id']}", barber(b)))[1][
            "total_transactions"] == 1

    await eventually(counted, timeout=10)


async def test_a_decline_is_a_recorded_failure_and_402(http, db):
    b = next_barber()
    connection = await connect_stripe(http, b)
    status, body = await call(http, "POST", "/internal/v1/charges", SERVICE,
                              charge_body(b, connection["id"], method="pm_card_chargeDeclined"))
    assert status == 402 and body["code"] == "payment_declined" and body["decline_code"] == "generic_decline"
    stored = (await rows(db, sa.select(et.transactions).where(et.transactions.c.id == uuid.UUID(
        body["transaction_id"]))))[0]
    assert (stored["status"], stored["failure_code"]) == ("failed", "generic_decline")
    assert [e["status"] for e in await events(db, "transaction.recorded", "transaction_id",
                                              body["transaction_id"])] == ["failed"]


async def test_partial_and_full_refunds_move_the_status_and_emit(http, db, stripe_sim):
    b = next_barber()
    connection = await connect_stripe(http, b)
    _, tx = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"], "100.00"))
    refund_one = {"transaction_id": tx["id"], "refund_id": str(uuid.uuid4()), "amount": "30.00"}
    status, first = await call(http, "POST", "/internal/v1/refunds", SERVICE, refund_one)
    assert status == 200 and (first["refund_status"], first["transaction"]["status"],
                              first["transaction"]["refunded_amount"]) == ("succeeded", "partially_refunded", "30.00")
    status, replay = await call(http, "POST", "/internal/v1/refunds", SERVICE, refund_one)  # a retry
    assert replay["refund_id"] == first["refund_id"] and replay["transaction"]["refunded_amount"] == "30.00"
    status, rest = await call(http, "POST", "/internal/v1/refunds", SERVICE,
                              {"transaction_id": tx["id"], "refund_id": str(uuid.uuid4())})
    assert status == 200 and (rest["refund_amount"], rest["transaction"]["status"]) == ("70.00", "refunded")
    refunds = [r for r in (await sim_call(stripe_sim, "GET", "/_sim/state"))["accounts"]
               for r in r["refunds"] if r["payment_intent"] == tx["external_transaction_id"]]
    assert sorted(r["amount"] for r in refunds) == [3000, 7000]

    async def settled():
        found = await events(db, "transaction.recorded", "transaction_id", tx["id"])
        return [(e["status"], e["refunded_amount"]) for e in found]

    await eventually(lambda: _at_least(settled(), 3), timeout=10)
    for event_type, count in REFUND_NOTICES["stripe"]:  # the refunds' own notices arrive too: they change nothing
        await wait_applied(db, connection["id"], event_type, count)
    assert await settled() == [("completed", "0.00"), ("partially_refunded", "30.00"), ("refunded", "100.00")]


async def _at_least(awaitable, n: int) -> bool:
    return len(await awaitable) >= n


# The notices each simulator sends for two refunds of one payment (what a test waits to be taken
# before it says nothing more happened).
REFUND_NOTICES = {"stripe": [("refund.created", 2), ("charge.refunded", 2)], "square": [("refund.created", 2)],
                  "paypal": [("PAYMENT.CAPTURE.REFUNDED", 2)]}


# ---- webhooks -----------------------------------------------------------------------------------------

async def test_forged_missing_and_stale_signatures_are_400_and_store_nothing(http, db):
    b = next_barber()
    connection = await connect_stripe(http, b, webhook_secret="whsec_known_secret_for_tests")
    path = f"/api/v1/webhooks/stripe/{connection['id']}"
    event = msgspec.json.encode({"id": f"evt_forged_{b}", "type": "payment_intent.succeeded", "created": 1,
                                 "data": {"object": {"id": "pi_x", "object": "payment_intent", "amount": 100,
                                                     "currency": "usd", "status": "succeeded", "metadata": {}}}})
    now = int(time.time())
    good = stripe.WebhookSignature._compute_signature(f"{now}.{event.decode()}", "whsec_known_secret_for_tests")
    for headers in ({}, {"Stripe-Signature": f"t={now},v1={'0' * 64}"},
                    {"Stripe-Signature": f"t={now},v1={stripe.WebhookSignature._compute_signature(f'{now}.' + event.decode(), 'whsec_other')}"},
                    {"Stripe-Signature": f"t={now - 600},v1="
                     f"{stripe.WebhookSignature._compute_signature(f'{now - 600}.' + event.decode(), 'whsec_known_secret_for_tests')}"},
                    {"Stripe-Signature": "garbage"}):
        async with http.post(path, data=event, headers={"Content-Type": "application/json", **headers}) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == "invalid_signature", headers
    assert await rows(db, sa.select(et.webhook_events).where(et.webhook_events.c.connection_id == connection["id"])) == []
    assert await rows(db, sa.select(et.transactions).where(et.transactions.c.barber_id == b)) == []
    # The same bytes, signed right, are taken (and an unknown connection is a 404).
    async with http.post(path, data=event, headers={"Stripe-Signature": f"t={now},v1={good}"}) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post(f"/api/v1/webhooks/stripe/{10**8}", data=event,
                         headers={"Stripe-Signature": f"t={now},v1={good}"}) as resp:
        assert resp.status == 404


async def test_forged_and_missing_square_and_paypal_signatures_are_400_and_store_nothing(http, db):
    from shared.processors.square import signature_for

    b = next_barber()
    square = await connect(http, b, "square", webhook_secret="square-signature-key-for-tests")
    event = msgspec.json.encode({"merchant_id": "M1", "type": "payment.updated", "event_id": f"sq-forged-{b}",
                                 "created_at": "2026-11-26T00:00:00Z", "data": {"type": "payment", "id": "P1",
                                 "object": {"payment": {"id": "P1", "status": "COMPLETED", "amount_money": {
                                     "amount": 100, "currency": "USD"}, "created_at": "2026-11-26T00:00:00Z"}}}})
    path = f"/api/v1/webhooks/square/{square['id']}"
    wrong_url = signature_for(event, signature_key="square-signature-key-for-tests",
                              notification_url="http://elsewhere/api/v1/webhooks/square/1")
    forged = signature_for(event, signature_key="another-key", notification_url=square["webhook_url"])
    for headers in ({}, {"x-square-hmacsha256-signature": forged},
                    {"x-square-hmacsha256-signature": wrong_url}, {"x-square-hmacsha256-signature": "AAAA"}):
        async with http.post(path, data=event, headers=headers) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == "invalid_signature", headers
    good = signature_for(event, signature_key="square-signature-key-for-tests", notification_url=square["webhook_url"])
    async with http.post(path, data=event, headers={"x-square-hmacsha256-signature": good}) as resp:
        assert resp.status == 200
    paypal = await connect(http, b, "paypal")  # its webhook id, registered with the simulator
    event = msgspec.json.encode({"id": f"WH-forged-{b}", "event_type": "PAYMENT.CAPTURE.COMPLETED",
                                 "create_time": "2026-11-26T00:00:00Z", "resource": {"id": "CAP1"}})
    headers = {"paypal-transmission-id": str(uuid.uuid4()), "paypal-transmission-time": "2026-11-26T00:00:00Z",
               "paypal-transmission-sig": "Zm9yZ2Vk", "paypal-auth-algo": "SHA256withRSA",
               "paypal-cert-url": "http://127.0.0.1:1/certs/forged"}
    for sent in (headers, {k: v for k, v in headers.items() if k != "paypal-transmission-sig"}, {}):
        async with http.post(f"/api/v1/webhooks/paypal/{paypal['id']}", data=event, headers=sent) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == "invalid_signature", sent
    stored = await webhook_events_of(db, square["id"]) + await webhook_events_of(db, paypal["id"])
    assert [e["event_id"] for e in stored] == [f"sq-forged-{b}"]  # only the one signed right


async def test_payments_taken_outside_us_arrive_by_webhook_even_out_of_order(http, db, stripe_sim):
    """The barber charges and refunds on its own Stripe; the notices arrive in reverse order
    (the refund before the payment). Recorded once, with the refund, as the processor says."""
    b = next_barber()
    await connect_stripe(http, b)
    await sim_call(stripe_sim, "POST", "/_sim/webhooks/reorder", {"enabled": True})
    client = sdk(stripe_sim, stripe_key(b))
    try:
        intent = await client.v1.payment_intents.create_async(params={
            "amount": 4000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
        await client.v1.refunds.create_async(params={"payment_intent": intent.id, "amount": 1500})
        await sim_call(stripe_sim, "POST", "/_sim/webhooks/flush", {})
    finally:
        await sim_call(stripe_sim, "POST", "/_sim/webhooks/reorder", {"enabled": False})

    async def recorded():
        found = await rows(db, sa.select(et.transactions).where(et.transactions.c.external_transaction_id == intent.id))
        return found[0] if found and found[0]["refunded_amount"] == Decimal("15.0000") else None

    row = await eventually(recorded, timeout=15)
    assert (row["status"], row["amount"], row["origin"], row["barber_id"]) == (
        "partially_refunded", Decimal("40.0000"), "webhook", b)
    assert row["commission_amount"] == Decimal("8.0000")  # the platform default 20 % (no config seen)
    statuses = [e["status"] for e in await events(db, "transaction.recorded", "transaction_id", str(row["id"]))]
    assert statuses[-1] == "partially_refunded" and statuses.count("partially_refunded") == 1
    # Operators see each notice once, with what came of it.
    status, notices = await call(http, "GET", f"{BASE}/webhook-events?limit=500", admin())
    assert status == 200
    mine = [n for n in notices["items"] if n["barber_id"] == b]
    assert sorted(n["event_type"] for n in mine) == sorted({n["event_type"] for n in mine})  # no repeats
    assert "charge.refunded" in {n["event_type"] for n in mine}, mine
    assert all(n["processor"] == "stripe" and n["outcome"] for n in mine), mine
    status, _ = await call(http, "GET", f"{BASE}/webhook-events", barber(b))
    assert status == 403
    status, listed = await call(http, "GET", f"{BASE}/connections?barber_id={b}", admin())
    # At least the newest listed (a late redelivery may have arrived since the list was read).
    [heard] = [c["last_webhook_at"] for c in listed["items"]]
    assert heard is not None and datetime.fromisoformat(heard) >= max(datetime.fromisoformat(n["received_at"]) for n in mine)


# ---- reconciliation -------------------------------------------------------------------------------

async def test_reconciliation_finds_a_missing_payment_and_a_mismatched_amount(http, db, stripe_sim):
    b = next_barber()
    # A secret given up front: no webhook endpoint is registered, so nothing tells us of payments.
    connection = await connect_stripe(http, b, webhook_secret="whsec_silent")
    client = sdk(stripe_sim, stripe_key(b))
    missing = await client.v1.payment_intents.create_async(params={
        "amount": 2500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    _, ours = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"], "60.00"))
    async with db.begin() as conn:  # our record drifts from the processor's
        await conn.execute(sa.update(et.transactions).where(et.transactions.c.id == uuid.UUID(ours["id"]))
                           .values(amount=Decimal("61.00")))
    status, report = await call(http, "POST", f"{BASE}/reconcile", admin(), {"connection_id": connection["id"]})
    assert status == 200, report
    verdicts = {f["external_transaction_id"]: f["verdict"] for f in report["findings"]}
    assert verdicts == {missing.id: "missing_local", ours["external_transaction_id"]: "mismatch"}
    assert (report["missing_local"], report["mismatch"]) == (1, 1)
    learned = (await rows(db, sa.select(et.transactions).where(
        et.transactions.c.external_transaction_id == missing.id)))[0]
    assert (learned["status"], learned["amount"], learned["reconciliation_status"], learned["origin"]) == (
        "completed", Decimal("25.0000"), "missing_local", "reconciliation")
    assert [e["status"] for e in await events(db, "transaction.recorded", "transaction_id", str(learned["id"]))] == [
        "completed"]
    drifted = await transaction(db, ours["id"])  # marked with the rows that needed nothing merged
    assert (drifted["reconciliation_status"], drifted["amount"]) == ("mismatch", Decimal("61.0000"))
    status, again = await call(http, "POST", f"{BASE}/reconcile", admin(), {"connection_id": connection["id"]})
    assert {f["external_transaction_id"] for f in again["findings"]} == {ours["external_transaction_id"]}
    relearned = await transaction(db, str(learned["id"]))
    assert relearned["reconciliation_status"] == "matched" and relearned["reconciled_at"] > learned["reconciled_at"]
    status, _ = await call(http, "POST", f"{BASE}/reconcile", barber(b), {})
    assert status == 403
    # Both runs are kept, newest first, each with its window and what it found, as of when it ran.
    status, runs = await call(http, "GET", f"{BASE}/reconciliation-runs?connection_id={connection['id']}&limit=2",
                              admin())
    assert status == 200 and [r["id"] for r in runs["items"]] == [again["run_id"], report["run_id"]]
    kept = runs["items"][1]
    assert (kept["trigger"], kept["connection_id"], kept["missing_local"], kept["mismatch"]) == (
        "operator", connection["id"], 1, 1)
    assert {f["external_transaction_id"]: f["verdict"] for f in kept["findings"]} == verdicts
    assert kept["since"] < kept["until"] <= kept["as_of"] <= kept["finished_at"]
    status, _ = await call(http, "GET", f"{BASE}/reconciliation-runs", barber(b))
    assert status == 403


async def test_one_connection_that_cannot_be_opened_does_not_stop_reconciling_the_others(http, db, stripe_sim):
    """A connection sealed under a key this replica does not have (a key dropped too early) is
    reported as failed; every other connection is still reconciled in the same run."""
    b = next_barber()
    broken = await connect_stripe(http, b, webhook_secret="whsec_broken")
    fine = await connect_stripe(http, b + 100_000, webhook_secret="whsec_fine")
    missing = await sdk(stripe_sim, stripe_key(b + 100_000)).v1.payment_intents.create_async(params={
        "amount": 1800, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    foreign = Fernet(Fernet.generate_key()).encrypt(b'{"secret_key": "sk_test_x"}').decode()
    async with db.begin() as conn:
        await conn.execute(sa.update(et.connections).where(et.connections.c.id == broken["id"])
                           .values(credentials=foreign))
    status, report = await call(http, "POST", f"{BASE}/reconcile", admin(), {})
    assert status == 200, report
    assert str(broken["id"]) in report["failed_connections"]
    assert "CONNECTION_ENCRYPTION_KEYS" in report["failed_connections"][str(broken["id"])]
    assert missing.id in {f["external_transaction_id"] for f in report["findings"]}
    learned = await rows(db, sa.select(et.transactions).where(et.transactions.c.external_transaction_id == missing.id))
    assert [(r["connection_id"], r["amount"]) for r in learned] == [(fine["id"], Decimal("18.0000"))]
    async with db.begin() as conn:  # a disconnected connection is not reconciled: out of the other tests' way
        await conn.execute(sa.update(et.connections).where(et.connections.c.id == broken["id"])
                           .values(status="disconnected"))


# ---- secrets ---------------------------------------------------------------------------------------------

async def test_credentials_never_reach_a_response_or_a_log_line(http, external_log):
    b = next_barber()
    secrets = [ENCRYPTION_KEY, JWT_SECRET]
    for processor in PROCESSORS:
        connection = await connect(http, b, processor)
        secrets += [v for k, v in PROCESSORS[processor][0](b).items() if k != "location_id"]
        assert not [s for s in secrets if s in str(connection)]
    status, refused = await call(http, "POST", f"{BASE}/connections", barber(b), {
        "processor": "stripe", "account_id": "acct_bad", "credentials": {"secret_key": f"sk_test_invalid_{b}_zz"}})
    assert status == 201 and refused["status"] == "error"
    secrets.append(f"sk_test_invalid_{b}_zz")
    assert not [s for s in secrets if s in str(refused)]  # nor in the error it reports
    text = external_log.read_text()
    assert "connection_checked" in text  # the service does log (at info)
    assert [s for s in secrets if s in text] == []


async def test_rotated_keys_still_open_every_connection(http, db, make_settings, database_url, stripe_sim,
                                                       square_sim, paypal_sim):
    from litestar.testing import AsyncTestClient

    from services.external.app import create_app
    from services.external.settings import ExternalSettings
    from tools.rotate_keys import rotate

    b = next_barber()
    connections = {processor: await connect(http, b, processor) for processor in PROCESSORS}
    # One sealed under a key already dropped: left as it is and named, the others still rotate.
    lost = await connect_stripe(http, b)
    async with db.begin() as conn:
        await conn.execute(sa.update(et.connections).where(et.connections.c.id == lost["id"]).values(
            credentials=Fernet(Fernet.generate_key()).encrypt(b"{}").decode(), status="disconnected"))
    new_key = Fernet.generate_key().decode()
    rotation = await rotate(database_url, [new_key, ENCRYPTION_KEY])
    assert rotation.rotated >= 3 and lost["id"] in rotation.unopenable
    assert not {c["id"] for c in connections.values()} & set(rotation.unopenable)
    # A replica that knows only the new key charges through every rotated connection.
    settings = make_settings(ExternalSettings, connection_encryption_keys=new_key, log_level="error",
                             stripe_api_base=stripe_sim, square_api_base=square_sim, paypal_api_base=paypal_sim)
    async with AsyncTestClient(create_app(settings)) as only_new:
        for processor, connection in connections.items():
            response = await only_new.post("/internal/v1/charges", headers=SERVICE, json=charge_body(
                b, connection["id"], "12.00", method=PROCESSORS[processor][1]))
            assert response.status_code == 200 and response.json()["status"] == "completed", response.text
    assert (await rotate(database_url, [ENCRYPTION_KEY, new_key])).rotated >= 3  # and back, for the other tests


# ---- through the router -----------------------------------------------------------------------------

async def test_an_external_route_is_paid_and_refunded_through_the_router(http, db, router_url, stripe_sim):
    b = next_barber()
    hp = "/api/v1/hybrid-payments"
    async with aiohttp.ClientSession(base_url=router_url) as router:
        status, _ = await call(router, "PUT", f"{hp}/config/{b}", admin(), {
            "payment_mode": "decentralized", "preferred_processor": "stripe", "commission_rate": "0.10",
            "fallback_enabled": False})
        assert status == 200
        connection = await connect_stripe(http, b)

        async def routed_external():  # the router learns of the connection from connection.changed
            s, body = await call(router, "POST", f"{hp}/route", barber(b), {"appointment_id": 3, "amount": "40.00"})
            return body if s == 200 and body["payment_type"] == "external" else None

        route = await eventually(routed_external, timeout=15)
        assert (route["processor"], route["connection_id"]) == ("stripe", connection["id"])
        key = {**barber(b), "Idempotency-Key": f"ext-pay-{b}"}
        status, paid = await call(router, "POST", f"{hp}/process", key,
                                  {"route_id": route["route_id"], "payment_method": "pm_card_visa"})
        assert status == 200 and (paid["payment_type"], paid["status"], paid["commission_amount"]) == (
            "external", "completed", "4.00"), paid
        status, replay = await call(router, "POST", f"{hp}/process", key,
                                    {"route_id": route["route_id"], "payment_method": "pm_card_visa"})
        assert replay == paid
        status, looked = await call(router, "GET", f"{hp}/transactions/{paid['transaction_id']}", barber(b))
        assert status == 200 and looked["payment_type"] == "external" and looked["route_id"] == route["route_id"]
        status, _ = await call(router, "GET", f"{hp}/transactions/{paid['transaction_id']}", barber(b + 1))
        assert status == 404
        status, refunded = await call(router, "POST", f"{hp}/transactions/{paid['transaction_id']}/refund",
                                      {**barber(b), "Idempotency-Key": f"ext-refund-{b}"}, {"amount": "15.00"})
        assert status == 200 and (refunded["refund_status"], refunded["status"], refunded["refunded_amount"]) == (
            "succeeded", "partially_refunded", "15.00"), refunded
    intents = [pi for pi in (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
               if pi["metadata"].get("route_id") == route["route_id"]]
    assert len(intents) == 1 and intents[0]["application_fee_amount"] is None  # the barber's own account


async def silent_external_route(router, http, b: int, amount: str) -> dict:
    """Barber `b` decentralized on its own Stripe with fallback on, connected with an explicit
    webhook secret (no endpoint registered: only our own calls learn what happened), and a route
    for `amount` once the router has heard of the connection."""
    hp = "/api/v1/hybrid-payments"
    status, _ = await call(router, "PUT", f"{hp}/config/{b}", admin(), {
        "payment_mode": "decentralized", "preferred_processor": "stripe", "commission_rate": "0.10",
        "fallback_enabled": True, "connect_account_id": f"acct_{b}"})
    assert status == 200
    await connect_stripe(http, b, webhook_secret=f"whsec_silent_{b}")

    async def routed_external():
        s, body = await call(router, "POST", f"{hp}/route", barber(b), {"appointment_id": 4, "amount": amount})
        return body if s == 200 and body["payment_type"] == "external" else None

    return await eventually(routed_external, timeout=15)


async def test_a_payment_whose_outcome_is_unknown_never_falls_back_to_the_platform(http, db, router_url, stripe_sim):
    """The barber's Stripe takes the charge but answers too late; the retry is refused (rate
    limited) before reaching it. That refusal says nothing about the first send, so the attempt
    stays pending and the router must not pay the route again on the platform, though the barber
    has fallback on. The next retry settles the one charge."""
    b = next_barber()
    hp = "/api/v1/hybrid-payments"
    async with aiohttp.ClientSession(base_url=router_url) as router:
        route = await silent_external_route(router, http, b, "60.00")
        # The first scheduled reconciliation (seconds after start) would find the charge by itself
        # and settle it; let it pass, so that only our own calls can.
        await eventually(lambda: _job_ran(http, "external-reconciliation"), timeout=15)
        key = {**barber(b), "Idempotency-Key": f"unknown-{b}"}
        body = {"route_id": route["route_id"], "payment_method": "pm_card_visa"}
        await sim_call(stripe_sim, "POST", "/_sim/faults", {"mode": "timeout", "delay_ms": 3500, "count": 1,
                                                            "path_prefix": "/v1/payment_intents"})
        status, late = await call(router, "POST", f"{hp}/process", key, body)
        assert (status, late["code"]) == (504, "processor_timeout"), late
        await sim_call(stripe_sim, "POST", "/_sim/faults", {"mode": "error", "status": 429, "count": 1,
                                                            "path_prefix": "/v1/payment_intents"})
        status, refused = await call(router, "POST", f"{hp}/process", key, body)
        assert (status, refused.get("code")) == (503, "processor_unavailable"), (status, refused)
        assert refused["transaction_id"] == late["transaction_id"] and refused["nothing_happened"] is False
        stored = await rows(db, sa.select(et.transactions).where(et.transactions.c.route_id == uuid.UUID(
            route["route_id"])))
        assert [r["status"] for r in stored] == ["pending"]
        status, paid = await call(router, "POST", f"{hp}/process", key, body)
        assert status == 200 and (paid["payment_type"], paid["status"], paid["fallback_used"]) == (
            "external", "completed", False), paid
        assert paid["transaction_id"] == late["transaction_id"]
    intents = [pi for pi in (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
               if pi["metadata"].get("route_id") == route["route_id"]]
    assert [(pi["amount"], pi["application_fee_amount"]) for pi in intents] == [(6000, None)]  # once, not on us
    assert [e["status"] for e in await events(db, "transaction.recorded", "transaction_id", paid["transaction_id"])] \
        == ["completed"]


async def test_a_route_being_paid_externally_is_not_paid_again_concurrently(http, db, router_url, stripe_sim):
    """While one request is paying a route on the barber's Stripe (slowly), a second one for the
    same route is told to wait (409) rather than racing it (or falling back beside it); then the
    route is paid once."""
    import asyncio

    b = next_barber()
    hp = "/api/v1/hybrid-payments"
    async with aiohttp.ClientSession(base_url=router_url) as router:
        route = await silent_external_route(router, http, b, "35.00")
        body = {"route_id": route["route_id"], "payment_method": "pm_card_visa"}
        await sim_call(stripe_sim, "POST", "/_sim/faults", {"mode": "slow", "delay_ms": 1500, "count": 1,
                                                            "path_prefix": "/v1/payment_intents"})
        first = asyncio.create_task(call(router, "POST", f"{hp}/process", barber(b), body))
        await asyncio.sleep(0.5)
        status, second = await call(router, "POST", f"{hp}/process", barber(b), body)
        assert (status, second.get("code")) == (409, "payment_in_progress"), (status, second)
        status, paid = await first
        assert status == 200 and (paid["payment_type"], paid["status"]) == ("external", "completed"), paid
        status, again = await call(router, "POST", f"{hp}/process", barber(b), body)
        assert status == 200 and again["transaction_id"] == paid["transaction_id"]
    intents = [pi for pi in (await sim_call(stripe_sim, "GET", "/_sim/payment_intents"))["data"]
               if pi["metadata"].get("route_id") == route["route_id"]]
    assert len(intents) == 1


async def _job_ran(http, job: str) -> bool:
    async with http.get("/metrics") as resp:
        text = await resp.text()
    return f'scheduled_job_runs_total{{job_name="{job}",' in text  # ran (whatever came of it)


async def test_a_declined_payment_the_client_completes_later_is_recorded_completed(http, db, stripe_sim):
    """A Stripe PaymentIntent declined at first can still be paid with another card. Its webhook
    is the processor's word: the failed transaction becomes completed, and says so once."""
    b = next_barber()
    connection = await connect_stripe(http, b)
    status, declined = await call(http, "POST", "/internal/v1/charges", SERVICE,
                                  charge_body(b, connection["id"], "45.00", method="pm_card_chargeDeclined"))
    assert status == 402, declined
    stored = (await rows(db, sa.select(et.transactions).where(
        et.transactions.c.id == uuid.UUID(declined["transaction_id"]))))[0]
    assert stored["status"] == "failed" and stored["external_transaction_id"].startswith("pi_")
    client = sdk(stripe_sim, stripe_key(b))
    intent = await client.v1.payment_intents.confirm_async(stored["external_transaction_id"],
                                                           params={"payment_method": "pm_card_visa"})
    assert intent.status == "succeeded"

    async def completed():
        found = await rows(db, sa.select(et.transactions).where(et.transactions.c.id == stored["id"]))
        return found[0] if found[0]["status"] == "completed" else None

    row = await eventually(completed, timeout=15)
    assert (row["amount"], row["commission_amount"]) == (Decimal("45.0000"), Decimal("4.5000"))
    await wait_applied(db, connection["id"], "payment_intent.payment_failed")  # both notices taken: nothing more
    await wait_applied(db, connection["id"], "payment_intent.succeeded")
    assert [e["status"] for e in await events(db, "transaction.recorded", "transaction_id",
                                              declined["transaction_id"])] == ["failed", "completed"]


async def test_notices_about_another_connections_payment_move_nothing(http, db):
    """A barber knows its own webhook secret, so it can sign anything to its own endpoint. Notices
    that name another barber's payment (by processor id, or by our reference) are answered but
    move nothing: no refund, no failure, no event."""
    victim, forger = next_barber(), next_barber()
    victims = await connect_stripe(http, victim)
    _, paid = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(victim, victims["id"], "90.00"))
    assert paid["status"] == "completed"
    secret = "whsec_forger_knows_this"
    forgers = await connect_stripe(http, forger, webhook_secret=secret)
    pi = paid["external_transaction_id"]
    notices = [
        {"type": "refund.created", "data": {"object": {
            "id": f"re_forged_{forger}", "object": "refund", "payment_intent": pi, "amount": 9000,
            "currency": "usd", "status": "succeeded", "metadata": {}}}},
        {"type": "payment_intent.payment_failed", "data": {"object": {
            "id": pi, "object": "payment_intent", "amount": 9000, "currency": "usd",
            "status": "requires_payment_method", "metadata": {"transaction_id": paid["id"]}}}},
        {"type": "payment_intent.canceled", "data": {"object": {
            "id": f"pi_forged_{forger}", "object": "payment_intent", "amount": 9000, "currency": "usd",
            "status": "canceled", "metadata": {"transaction_id": paid["id"]}}}},
    ]
    for n, notice in enumerate(notices):
        event = msgspec.json.encode({"id": f"evt_forged_{forger}_{n}", "created": int(time.time()), **notice})
        now = int(time.time())
        signature = stripe.WebhookSignature._compute_signature(f"{now}.{event.decode()}", secret)
        async with http.post(f"/api/v1/webhooks/stripe/{forgers['id']}", data=event,
                             headers={"Stripe-Signature": f"t={now},v1={signature}"}) as resp:
            assert resp.status == 200, await resp.text()
    row = (await rows(db, sa.select(et.transactions).where(et.transactions.c.id == uuid.UUID(paid["id"]))))[0]
    assert (row["status"], row["refunded_amount"], row["connection_id"]) == (
        "completed", Decimal("0.0000"), victims["id"])
    assert await rows(db, sa.select(et.refunds).where(et.refunds.c.transaction_id == row["id"])) == []
    assert [e["status"] for e in await events(db, "transaction.recorded", "transaction_id", paid["id"])] == [
        "completed"]


# ---- unsettled attempts, limits, switches ---------------------------------------------------------

async def test_the_sweeper_settles_attempts_nobody_came_back_for(http, db, stripe_sim):
    b = next_barber()
    # An explicit secret: no webhook endpoint, so only the sweeper can learn what happened.
    connection = await connect_stripe(http, b, webhook_secret="whsec_sweeper_only")
    await sim_call(stripe_sim, "POST", "/_sim/faults", {"mode": "timeout", "delay_ms": 3500, "count": 1,
                                                        "path_prefix": "/v1/payment_intents"})
    status, late = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"], "33.00"))
    assert (status, late["code"], late["nothing_happened"]) == (504, "processor_timeout", False), late
    await sim_call(stripe_sim, "POST", "/_sim/faults", {"mode": "error", "count": 1,
                                                        "path_prefix": "/v1/payment_intents"})
    status, lost = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"], "44.00"))
    assert (status, lost["code"]) == (502, "processor_outcome_unknown"), lost
    by_id = {late["transaction_id"]: "completed", lost["transaction_id"]: "failed"}

    async def settled():
        found = await rows(db, sa.select(et.transactions).where(et.transactions.c.barber_id == b))
        return found if {str(r["id"]): r["status"] for r in found} == by_id else None

    found = {str(r["id"]): r for r in await eventually(settled, timeout=30)}
    assert found[lost["transaction_id"]]["failure_code"] == "not_found_at_processor"
    assert [e["status"] for e in await events(db, "transaction.recorded", "transaction_id",
                                              late["transaction_id"])] == ["completed"]
    # The lost one never reached the processor: it is no payment, so nobody is told of one.
    assert await events(db, "transaction.recorded", "transaction_id", lost["transaction_id"]) == []


async def test_a_webhook_body_over_the_limit_is_413(http):
    b = next_barber()
    connection = await connect_stripe(http, b, webhook_secret="whsec_size")
    async with http.post(f"/api/v1/webhooks/stripe/{connection['id']}", data=b"{" + b" " * 300_000 + b"}",
                         headers={"Stripe-Signature": "t=1,v1=00"}) as resp:
        assert resp.status == 413 and resp.content_type == "application/problem+json"


async def test_a_switched_off_processor_takes_no_connections_and_publishes_its_own_unusable(
        http, db, make_settings, stripe_sim):
    """Last in this module: it republishes every Stripe connection (and restores them after)."""
    from datetime import UTC, datetime

    from litestar.testing import AsyncTestClient

    from services.external.app import create_app
    from services.external.settings import ExternalSettings

    b = next_barber()
    connection = await connect_stripe(http, b)
    off = make_settings(ExternalSettings, external_stripe_enabled=False, stripe_api_base=stripe_sim, log_level="error")
    async with AsyncTestClient(create_app(off)) as client:
        refused = await client.post(f"{BASE}/connections", headers=barber(b), json={
            "processor": "stripe", "account_id": "acct_more", "credentials": {"secret_key": stripe_key(b)}})
        assert refused.status_code == 422 and refused.json()["code"] == "processor_disabled"
        shown = (await client.get(f"{BASE}/connections/{connection['id']}", headers=barber(b))).json()
        assert (shown["status"], shown["usable"]) == ("active", False)
        external = client.app.state.external
        import asyncio

        assert await asyncio.to_thread(client.blocking_portal.call, external.connections.republish,
                                       datetime.now(UTC)) >= 1
        charge = await client.post("/internal/v1/charges", headers=SERVICE, json=charge_body(b, connection["id"]))
        assert charge.status_code == 409 and "switched off" in charge.json()["detail"]
    assert [e["status"] for e in await events(db, "connection.changed", "connection_id", connection["id"])][-1] == \
        "disabled"
    on = make_settings(ExternalSettings, stripe_api_base=stripe_sim, log_level="error")
    async with AsyncTestClient(create_app(on)) as client:
        import asyncio

        await asyncio.to_thread(client.blocking_portal.call, client.app.state.external.connections.republish,
                                datetime.now(UTC))
    assert [e["status"] for e in await events(db, "connection.changed", "connection_id", connection["id"])][-1] == \
        "active"
