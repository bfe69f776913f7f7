"""Money integrity of the external service (issue 14), each defect reproduced against the service as
a real process, the simulators as real processes and a real Postgres:

1. a barber-signed refund notice moved money: notices are re-fetched, only the processor's word counts
4. webhook dedupe ignored the connection: two barbers on one account each hear their own payment,
   and a payment nobody started on a shared account is attributed to nobody
5. a connection's account could be swapped by new credentials
6. a wrongly failed attempt that completed beside its retry wedged the webhook and reconciliation
9. reconciliation invented payments (abandoned intents, PayPal declines under the order id)
10. a refund heard before its payment attached by (processor, payment id) alone
12. sweepers starved behind rows whose look-ups fail
13. `charge.refunded` was registered but ignored
14. a payment first heard without a time was dated 1970
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import sqlalchemy as sa

from services.external import tables as et
from tests.integration.external_support import (  # noqa: F401 (fixtures)
    BASE,
    SERVICE,
    call,
    charge_body,
    connect,
    connect_stripe,
    events,
    external_log,
    external_url,
    http,
    post_stripe_notice,
    rows,
    sdk,
    stripe_key,
    transaction,
    wait_applied,
)
from tests.integration.router_support import admin, barber
from tests.support import eventually

_ids = itertools.count(1)


def next_barber() -> int:
    return 1_400_000 + next(_ids)


# ---- 1: a signed body is a claim, not a fact ---------------------------------------------------------

async def test_a_refund_notice_the_barber_signed_itself_moves_no_money(http, db):
    """The barber holds its own signing secret: it signs `refund.updated {succeeded, full}` for a
    completed payment. No money went back at the processor, so nothing moves: no refund, no
    status change, no event (collections would otherwise reverse the whole commission)."""
    b = next_barber()
    secret = f"whsec_barber_knows_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    status, paid = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"], "90.00"))
    assert status == 200 and paid["status"] == "completed", paid
    status, ack = await post_stripe_notice(http, connection["id"], secret, {
        "id": f"evt_fake_refund_{b}", "type": "refund.updated", "data": {"object": {
            "id": f"re_fake_{b}", "object": "refund", "payment_intent": paid["external_transaction_id"],
            "amount": 9000, "currency": "usd", "status": "succeeded", "metadata": {}}}})
    assert status == 200, ack
    row = await transaction(db, paid["id"])
    assert (row["status"], row["refunded_amount"]) == ("completed", Decimal("0.0000"))
    assert await rows(db, sa.select(et.refunds).where(et.refunds.c.transaction_id == row["id"])) == []
    assert [e["status"] for e in await events(db, "transaction.recorded", "transaction_id", paid["id"])] == [
        "completed"]


async def test_a_real_refund_is_applied_as_the_processor_says_whatever_the_notice_claims(http, db, stripe_sim):
    """A real partial refund, announced by a notice that claims it was a full one: the processor's
    amount is what counts."""
    b = next_barber()
    secret = f"whsec_claims_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    _, paid = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"], "80.00"))
    refund = await sdk(stripe_sim, stripe_key(b)).v1.refunds.create_async(params={
        "payment_intent": paid["external_transaction_id"], "amount": 2000})
    status, _ = await post_stripe_notice(http, connection["id"], secret, {
        "id": f"evt_real_refund_{b}", "type": "refund.created", "data": {"object": {
            "id": refund.id, "object": "refund", "payment_intent": paid["external_transaction_id"],
            "amount": 8000, "currency": "usd", "status": "succeeded", "metadata": {}}}})
    assert status == 200
    row = await transaction(db, paid["id"])
    assert (row["status"], row["refunded_amount"]) == ("partially_refunded", Decimal("20.0000"))


async def our_pending_refund(db, paid: dict, connection: dict, *, since: datetime,
                             refund_id: uuid.UUID | None = None) -> uuid.UUID:
    """Our refund of 70.00 of `paid`, pending since `since` (its processor call not answered yet)."""
    ours = refund_id or uuid.uuid4()
    async with db.begin() as conn:
        await conn.execute(sa.insert(et.refunds).values(
            id=ours, transaction_id=uuid.UUID(paid["id"]), processor_type="stripe", connection_id=connection["id"],
            processor_payment_id=paid["external_transaction_id"], processor_refund_id=None,
            amount=Decimal("70.00"), currency="USD", status="pending", processor_idempotency_key=f"hp-ref-{ours}",
            created_at=since, updated_at=since, check_failures=0))
    return ours


async def test_a_refund_carrying_our_pending_refunds_reference_does_not_settle_it(http, db, stripe_sim):
    """Our own refund of 70.00 is pending (its processor call not yet answered); its id, the reference
    the processor keeps with it, is no secret. The barber makes a real 0.01 refund in their own
    account carrying that reference and announces it: it is a refund of its own (0.01), and ours
    stays pending at 70.00, not settled by another refund's word (collections would reverse the
    commission on 70.00)."""
    b = next_barber()
    secret = f"whsec_borrowed_reference_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    _, paid = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"], "80.00"))
    ours = await our_pending_refund(db, paid, connection, since=datetime.now(UTC))
    tiny = await sdk(stripe_sim, stripe_key(b)).v1.refunds.create_async(params={
        "payment_intent": paid["external_transaction_id"], "amount": 1, "metadata": {"hp_reference": str(ours)}})
    status, ack = await post_stripe_notice(http, connection["id"], secret, {
        "id": f"evt_borrowed_{b}", "type": "refund.created", "data": {"object": tiny.to_dict()}})
    assert status == 200, ack
    kept = {r["id"]: r for r in await rows(db, sa.select(et.refunds).where(
        et.refunds.c.transaction_id == uuid.UUID(paid["id"])))}
    assert (kept[ours]["status"], kept[ours]["processor_refund_id"]) == ("pending", None)
    [theirs] = [r for r in kept.values() if r["id"] != ours]
    assert (theirs["processor_refund_id"], theirs["amount"], theirs["status"]) == (tiny.id, Decimal("0.0100"),
                                                                                     "succeeded")
    row = await transaction(db, paid["id"])
    assert (row["status"], row["refunded_amount"]) == ("partially_refunded", Decimal("0.0100"))


async def test_the_sweeper_does_not_take_a_refund_bearing_our_reference_for_ours(http, db, stripe_sim):
    """The same borrowed reference, met by the sweeper: our pending refund of 70.00 never reached
    Stripe, and the only refund carrying its id is the barber's 0.01. Taken for ours, the sweeper
    recorded the barber's refund and left ours pending, to be looked up again on every pass for good;
    found by amount too, ours is not at Stripe and is settled failed."""
    b = next_barber()
    connection = await connect_stripe(http, b, webhook_secret=f"whsec_sweep_borrowed_{b}")
    _, paid = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"], "80.00"))
    ours = uuid.uuid4()
    tiny = await sdk(stripe_sim, stripe_key(b)).v1.refunds.create_async(params={
        "payment_intent": paid["external_transaction_id"], "amount": 1, "metadata": {"hp_reference": str(ours)}})
    # Untouched long enough for the sweeper.
    await our_pending_refund(db, paid, connection, since=datetime.now(UTC) - timedelta(hours=1), refund_id=ours)

    async def settled():
        [row] = await rows(db, sa.select(et.refunds).where(et.refunds.c.id == ours))
        return row if row["status"] != "pending" else None

    row = await eventually(settled, timeout=15)
    assert (row["status"], row["processor_refund_id"]) == ("failed", None)  # not the barber's
    assert tiny.id.startswith("re_")


# ---- 13: every registered event type is handled -------------------------------------------------------

async def test_a_refund_made_in_the_barbers_stripe_dashboard_is_recorded(http, db, stripe_sim):
    """Stripe announces a dashboard refund with `charge.refunded` (registered with every barber's
    account). It is re-fetched and recorded: the payment is refunded and its commission reversed."""
    b = next_barber()
    secret = f"whsec_dashboard_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    _, paid = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"], "60.00"))
    client = sdk(stripe_sim, stripe_key(b))
    await client.v1.refunds.create_async(params={"payment_intent": paid["external_transaction_id"]})
    intent = await client.v1.payment_intents.retrieve_async(paid["external_transaction_id"])
    charge = await client.v1.charges.retrieve_async(intent.latest_charge)
    status, ack = await post_stripe_notice(http, connection["id"], secret, {
        "id": f"evt_charge_refunded_{b}", "type": "charge.refunded", "data": {"object": charge.to_dict()}})
    assert status == 200 and not ack["ignored"], ack
    row = await transaction(db, paid["id"])
    assert (row["status"], row["refunded_amount"]) == ("refunded", Decimal("60.0000"))
    recorded = await events(db, "transaction.recorded", "transaction_id", paid["id"])
    assert [(e["status"], e["refunded_amount"]) for e in recorded] == [("completed", "0.00"), ("refunded", "60.00")]


# ---- 14: no 1970 ------------------------------------------------------------------------------------

async def test_a_payment_first_heard_from_a_notice_without_a_time_is_dated_by_the_processor(http, db, stripe_sim):
    b = next_barber()
    secret = f"whsec_timeless_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    intent = await sdk(stripe_sim, stripe_key(b)).v1.payment_intents.create_async(params={
        "amount": 3100, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    body = intent.to_dict()
    del body["created"]
    status, _ = await post_stripe_notice(http, connection["id"], secret, {
        "id": f"evt_timeless_{b}", "type": "payment_intent.succeeded", "data": {"object": body}})
    assert status == 200
    [row] = await rows(db, sa.select(et.transactions).where(et.transactions.c.external_transaction_id == intent.id))
    assert abs(row["processed_at"] - datetime.fromtimestamp(intent.created, UTC)) < timedelta(seconds=1)
    [event] = await events(db, "transaction.recorded", "transaction_id", str(row["id"]))
    assert event["processed_at"].startswith(str(datetime.now(UTC).year))


# ---- 4: dedupe per connection, attribution never by who heard first ------------------------------------

async def test_two_barbers_on_one_account_each_hear_their_own_payment(http, db, stripe_sim):
    """Barbers 1 and 2 connect the same Stripe account. Barber 2's payment completes later; the
    notice reaches barber 1's endpoint first. It must still settle barber 2's payment (before, the
    first endpoint claimed the event id, moved nothing, and barber 2's delivery was a duplicate)."""
    one, two = next_barber(), next_barber()
    shared_key = f"sk_test_shop_{one}_shared"
    first = await connect_stripe(http, one, key=shared_key, webhook_secret=f"whsec_one_{one}")
    second = await connect_stripe(http, two, key=shared_key, webhook_secret=f"whsec_two_{two}")
    status, pending = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(
        two, second["id"], "70.00", method="pm_card_authenticationRequired"))
    assert status == 200 and pending["status"] == "pending", pending
    intent = await sdk(stripe_sim, shared_key).v1.payment_intents.confirm_async(
        pending["external_transaction_id"], params={"payment_method": "pm_card_visa"})
    notice = {"id": f"evt_shared_{two}", "type": "payment_intent.succeeded", "data": {"object": intent.to_dict()}}
    for connection, secret in ((first, f"whsec_one_{one}"), (second, f"whsec_two_{two}")):
        status, ack = await post_stripe_notice(http, connection["id"], secret, notice)
        assert status == 200 and not ack["duplicate"], ack
    row = await transaction(db, pending["id"])
    assert (row["status"], row["barber_id"], row["connection_id"]) == ("completed", two, second["id"])
    assert [e["status"] for e in await events(db, "transaction.recorded", "transaction_id", pending["id"])] == [
        "completed"]


async def test_a_payment_nobody_started_on_a_shared_account_is_attributed_to_nobody(http, db, stripe_sim):
    """Taken on the shared account's dashboard: whichever endpoint hears it first must not get it.
    It waits, unattributed, for an operator (who can attribute it to one connection)."""
    one, two = next_barber(), next_barber()
    shared_key = f"sk_test_shop_{one}_dashboard"
    first = await connect_stripe(http, one, key=shared_key, webhook_secret=f"whsec_d1_{one}")
    second = await connect_stripe(http, two, key=shared_key, webhook_secret=f"whsec_d2_{two}")
    intent = await sdk(stripe_sim, shared_key).v1.payment_intents.create_async(params={
        "amount": 5500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    status, _ = await post_stripe_notice(http, first["id"], f"whsec_d1_{one}", {
        "id": f"evt_dash_{one}", "type": "payment_intent.succeeded", "data": {"object": intent.to_dict()}})
    assert status == 200
    assert await rows(db, sa.select(et.transactions).where(et.transactions.c.external_transaction_id == intent.id)) \
        == []
    status, waiting = await call(http, "GET", f"{BASE}/unattributed", admin())
    assert status == 200, waiting
    [found] = [u for u in waiting["items"] if u["external_transaction_id"] == intent.id]
    assert (found["amount"], sorted(found["connection_ids"])) == ("55.00", sorted([first["id"], second["id"]]))
    status, _ = await call(http, "GET", f"{BASE}/unattributed", barber(one))
    assert status == 403
    status, attributed = await call(http, "POST", f"{BASE}/unattributed/{found['id']}/attribute", admin(),
                                    {"connection_id": second["id"]})
    assert status == 200 and (attributed["barber_id"], attributed["status"]) == (two, "completed"), attributed
    status, again = await call(http, "POST", f"{BASE}/unattributed/{found['id']}/attribute", admin(),
                               {"connection_id": first["id"]})
    assert status == 409, again
    status, trail = await call(http, "GET", f"{BASE}/operations/audit?subject=unattributed:{found['id']}", admin())
    assert status == 200 and [(e["action"], e["after"]["attributed_to"]) for e in trail["items"]] == [
        ("unattributed.attribute", second["id"])]  # the refused second try wrote nothing


# ---- 5: an account is its connection's for good ------------------------------------------------------

async def test_credentials_of_another_account_are_refused_and_change_nothing(http, db):
    b = next_barber()
    connection = await connect_stripe(http, b)
    status, refused = await call(http, "PATCH", f"{BASE}/connections/{connection['id']}", barber(b),
                                 {"credentials": {"secret_key": f"sk_test_someone_else_{b}"}})
    assert status == 422 and refused["code"] == "account_mismatch" and refused["field"] == "credentials", refused
    stored = (await rows(db, sa.select(et.connections).where(et.connections.c.id == connection["id"])))[0]
    assert stored["status"] == "active" and stored["connection_data"]["credentials_hint"] == connection[
        "credentials_hint"]
    # The same account's credentials (re-entered) are taken.
    status, same = await call(http, "PATCH", f"{BASE}/connections/{connection['id']}", barber(b),
                              {"credentials": {"secret_key": stripe_key(b)}})
    assert status == 200 and same["status"] == "active", same


# ---- 6: a double charge is recorded as such, never a wedge ---------------------------------------------

async def test_a_failed_attempt_that_completes_beside_its_retry_is_flagged_and_wedges_nothing(http, db, stripe_sim):
    """Attempt A of a route was failed without its processor id (wrongly: it went through); a retry
    B paid the route. Reconciliation then finds A's payment at the processor: both are completed,
    A is flagged as a double charge to refund, and another missing payment of the same connection
    is still recorded in the same run (before, one transaction for all findings failed every run)."""
    b = next_barber()
    connection = await connect_stripe(http, b, webhook_secret=f"whsec_double_{b}")
    body = charge_body(b, connection["id"], "40.00", method="pm_card_authenticationRequired")
    _, a = await call(http, "POST", "/internal/v1/charges", SERVICE, body)
    assert a["status"] == "pending", a
    async with db.begin() as conn:  # wrongly failed, its processor id lost
        await conn.execute(sa.update(et.transactions).where(et.transactions.c.id == uuid.UUID(a["id"])).values(
            status="failed", external_transaction_id=None, failure_code="not_found_at_processor"))
    status, retried = await call(http, "POST", "/internal/v1/charges", SERVICE,
                                 {**body, "payment_method": "pm_card_visa"})
    assert status == 200 and retried["status"] == "completed" and retried["id"] != a["id"], retried
    client = sdk(stripe_sim, stripe_key(b))
    await client.v1.payment_intents.confirm_async(a["external_transaction_id"],
                                                  params={"payment_method": "pm_card_visa"})
    other = await client.v1.payment_intents.create_async(params={
        "amount": 1200, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    status, report = await call(http, "POST", f"{BASE}/reconcile", admin(), {"connection_id": connection["id"]})
    assert status == 200 and report["failed_connections"] == {}, report
    first, second = await transaction(db, a["id"]), await transaction(db, retried["id"])
    assert (first["status"], first["flagged"]) == ("completed", "double_charge")
    assert (second["status"], second["flagged"]) == ("completed", None)
    learned = await rows(db, sa.select(et.transactions).where(et.transactions.c.external_transaction_id == other.id))
    assert [r["amount"] for r in learned] == [Decimal("12.0000")]
    assert [e["status"] for e in await events(db, "transaction.recorded", "transaction_id", a["id"])][-1] == \
        "completed"
    # The same news by webhook now changes nothing more and is answered 200.
    status, _ = await post_stripe_notice(http, connection["id"], f"whsec_double_{b}", {
        "id": f"evt_double_{b}", "type": "payment_intent.succeeded", "data": {"object": {
            "id": a["external_transaction_id"], "object": "payment_intent"}}})
    assert status == 200


# ---- 9: reconciliation records money, not noise --------------------------------------------------------

async def test_reconciliation_invents_no_payment_from_an_abandoned_intent(http, db, stripe_sim):
    b = next_barber()
    connection = await connect_stripe(http, b, webhook_secret=f"whsec_abandoned_{b}")
    abandoned = await sdk(stripe_sim, stripe_key(b)).v1.payment_intents.create_async(params={
        "amount": 2200, "currency": "usd"})  # never confirmed: requires_payment_method, no error
    status, report = await call(http, "POST", f"{BASE}/reconcile", admin(), {"connection_id": connection["id"]})
    assert status == 200, report
    assert abandoned.id not in {f["external_transaction_id"] for f in report["findings"]}
    assert await rows(db, sa.select(et.transactions).where(
        et.transactions.c.external_transaction_id == abandoned.id)) == []


async def test_a_paypal_decline_is_no_mismatch_forever(http, db):
    b = next_barber()
    connection = await connect(http, b, "paypal", webhook_secret=f"WH-decline-{b}")
    status, declined = await call(http, "POST", "/internal/v1/charges", SERVICE,
                                  charge_body(b, connection["id"], "20.00", method="paypal-declined"))
    assert status == 402, declined
    status, report = await call(http, "POST", f"{BASE}/reconcile", admin(), {"connection_id": connection["id"]})
    assert status == 200, report
    assert declined["transaction_id"] not in {f["transaction_id"] for f in report["findings"]}, report


async def test_reconciliation_compares_refunded_amounts_too(http, db, stripe_sim):
    """A refund we never heard of (no webhook endpoint) is found by reconciliation and recorded as
    the processor says; the difference is reported."""
    b = next_barber()
    connection = await connect_stripe(http, b, webhook_secret=f"whsec_refund_recon_{b}")
    _, paid = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"], "50.00"))
    await sdk(stripe_sim, stripe_key(b)).v1.refunds.create_async(params={
        "payment_intent": paid["external_transaction_id"], "amount": 1500})
    status, report = await call(http, "POST", f"{BASE}/reconcile", admin(), {"connection_id": connection["id"]})
    assert status == 200, report
    [finding] = [f for f in report["findings"] if f["transaction_id"] == paid["id"]]
    assert finding["verdict"] == "mismatch" and "refunded" in finding["reason"], finding
    row = await transaction(db, paid["id"])
    assert (row["status"], row["refunded_amount"]) == ("partially_refunded", Decimal("15.0000"))


# ---- 10: early refunds stay with their account -------------------------------------------------------

async def test_a_refund_notice_heard_before_its_payment_cannot_refund_another_barbers_payment(http, db, stripe_sim):
    """A barber signs a refund notice naming a payment of another barber's account that we have not
    heard of yet. When that payment arrives (reconciliation), it must not be refunded by it."""
    victim, forger = next_barber(), next_barber()
    victims = await connect_stripe(http, victim, webhook_secret=f"whsec_victim_{victim}")
    secret = f"whsec_forger_{forger}"
    forgers = await connect_stripe(http, forger, webhook_secret=secret)
    intent = await sdk(stripe_sim, stripe_key(victim)).v1.payment_intents.create_async(params={
        "amount": 6400, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    status, _ = await post_stripe_notice(http, forgers["id"], secret, {
        "id": f"evt_early_{forger}", "type": "refund.created", "data": {"object": {
            "id": f"re_early_{forger}", "object": "refund", "payment_intent": intent.id, "amount": 6400,
            "currency": "usd", "status": "succeeded", "metadata": {}}}})
    assert status == 200
    status, report = await call(http, "POST", f"{BASE}/reconcile", admin(), {"connection_id": victims["id"]})
    assert status == 200, report
    [row] = await rows(db, sa.select(et.transactions).where(et.transactions.c.external_transaction_id == intent.id))
    assert (row["connection_id"], row["status"], row["refunded_amount"]) == (
        victims["id"], "completed", Decimal("0.0000"))


async def test_a_payment_notice_adopts_the_refunds_that_waited_for_it(http, db, stripe_sim):
    """A refund of the barber's payment was kept aside before the payment was on record (heard
    through this connection). The payment's own notice (the one-transaction path for a payment
    nobody recorded) must not bypass them: the payment is recorded with the refund adopted."""
    b = next_barber()
    secret = f"whsec_waiting_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    intent = await sdk(stripe_sim, stripe_key(b)).v1.payment_intents.create_async(params={
        "amount": 5000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    refund = await sdk(stripe_sim, stripe_key(b)).v1.refunds.create_async(params={
        "payment_intent": intent.id, "amount": 1500})
    now = datetime.now(UTC)
    async with db.begin() as conn:
        await conn.execute(sa.insert(et.refunds).values(
            id=uuid.uuid4(), transaction_id=None, processor_type="stripe", connection_id=connection["id"],
            processor_payment_id=intent.id, processor_refund_id=refund.id, amount=Decimal("15.00"), currency="USD",
            status="succeeded", created_at=now, updated_at=now))
    status, ack = await post_stripe_notice(http, connection["id"], secret, {
        "id": f"evt_waited_{b}", "type": "payment_intent.succeeded", "data": {"object": {
            "id": intent.id, "object": "payment_intent", "amount": 5000, "currency": "usd",
            "status": "succeeded", "metadata": {}}}})
    assert (status, ack["outcome"]) == (200, "applied"), ack
    [row] = await rows(db, sa.select(et.transactions).where(et.transactions.c.external_transaction_id == intent.id))
    assert (row["status"], row["refunded_amount"]) == ("partially_refunded", Decimal("15.0000"))
    [waited] = await rows(db, sa.select(et.refunds).where(et.refunds.c.processor_refund_id == refund.id))
    assert waited["transaction_id"] == row["id"]


async def test_a_fresh_payment_notice_writes_the_payment_its_claim_and_its_event_once(http, db, stripe_sim):
    """The usual notice (a payment the barber took, nobody recorded): one row with the barber's
    commission, the event id claimed once, one transaction.recorded; a redelivery changes nothing."""
    b = next_barber()
    secret = f"whsec_fresh_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    intent = await sdk(stripe_sim, stripe_key(b)).v1.payment_intents.create_async(params={
        "amount": 12345, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    notice = {"id": f"evt_fresh_{b}", "type": "payment_intent.succeeded", "data": {"object": {
        "id": intent.id, "object": "payment_intent", "amount": 1, "currency": "usd", "status": "succeeded",
        "metadata": {}}}}  # the body's amount is a claim: the processor's 123.45 is recorded
    acks = [await post_stripe_notice(http, connection["id"], secret, notice) for _ in range(2)]
    assert [(s, a["outcome"]) for s, a in acks] == [(200, "applied"), (200, "duplicate")]
    [row] = await rows(db, sa.select(et.transactions).where(et.transactions.c.external_transaction_id == intent.id))
    assert (row["status"], row["amount"], row["commission_amount"], row["origin"], row["version"]) == (
        "completed", Decimal("123.4500"), Decimal("24.6900"), "webhook", 1)
    claims = await rows(db, sa.select(et.webhook_events).where(et.webhook_events.c.event_id == notice["id"]))
    assert [(c["connection_id"], c["outcome"]) for c in claims] == [(connection["id"], "applied")]
    recorded = await events(db, "transaction.recorded", "transaction_id", str(row["id"]))
    assert [(e["status"], e["amount"], e["commission_amount"], e["sequence"]) for e in recorded] == [
        ("completed", "123.45", "24.69", 1)]


async def test_a_barber_whose_commission_rate_is_zero_owes_none_on_a_payment_it_took(http, db, stripe_sim):
    """A rate of 0 (set by an operator, heard through config.changed) is a rate, not a missing one:
    it was once replaced by the platform default."""
    b = next_barber()
    secret = f"whsec_zero_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    async with db.begin() as conn:
        await conn.execute(sa.insert(et.barber_rates).values(barber_id=b, commission_rate=Decimal(0),
                                                             config_version=1, updated_at=datetime.now(UTC)))
    intent = await sdk(stripe_sim, stripe_key(b)).v1.payment_intents.create_async(params={
        "amount": 4000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    status, ack = await post_stripe_notice(http, connection["id"], secret, {
        "id": f"evt_zero_{b}", "type": "payment_intent.succeeded", "data": {"object": {
            "id": intent.id, "object": "payment_intent", "status": "succeeded", "metadata": {}}}})
    assert (status, ack["outcome"]) == (200, "applied"), ack
    [row] = await rows(db, sa.select(et.transactions).where(et.transactions.c.external_transaction_id == intent.id))
    assert (row["commission_rate"], row["commission_amount"]) == (Decimal(0), Decimal(0))


# ---- 12: one row's trouble never starves the sweep ----------------------------------------------------

async def test_rows_whose_look_ups_fail_back_off_and_never_starve_the_others(http, db, make_settings, stripe_sim):
    """More attempts than a sweep takes sit on a connection whose secret no key opens; one good
    attempt is behind them. Each failed row backs off, so the next sweep reaches the good one."""
    from litestar.testing import AsyncTestClient

    from services.external.app import create_app
    from services.external.settings import ExternalSettings

    b = next_barber()
    broken = await connect_stripe(http, b, webhook_secret=f"whsec_starve_{b}")
    good = await connect_stripe(http, b + 50_000, webhook_secret=f"whsec_fed_{b}")
    status, waiting = await call(http, "POST", "/internal/v1/charges", SERVICE,
                                 charge_body(b + 50_000, good["id"], "30.00", method="pm_card_authenticationRequired"))
    assert waiting["status"] == "pending", waiting
    await sdk(stripe_sim, stripe_key(b + 50_000)).v1.payment_intents.confirm_async(
        waiting["external_transaction_id"], params={"payment_method": "pm_card_visa"})
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    async with db.begin() as conn:
        await conn.execute(sa.insert(et.transactions), [dict(
            id=uuid.uuid4(), connection_id=broken["id"], processor_type="stripe", amount=Decimal(10),
            refunded_amount=Decimal(0), currency="USD", status="pending", barber_id=b, processor_fees=Decimal(0),
            commission_rate=Decimal("0.1"), commission_amount=Decimal(1), origin="api",
            processor_idempotency_key=f"hp-starve-{b}-{n}", created_at=long_ago, updated_at=long_ago - timedelta(
                seconds=n), version=1) for n in range(1, 206)])
        await conn.execute(sa.update(et.transactions).where(et.transactions.c.id == uuid.UUID(waiting["id"]))
                           .values(updated_at=long_ago))
        await conn.execute(sa.update(et.connections).where(et.connections.c.id == broken["id"]).values(
            credentials="gAAAAA-not-openable-by-any-key"))
    settings = make_settings(ExternalSettings, stripe_api_base=stripe_sim, log_level="error", sweep_interval=3600.0,
                             reconcile_interval=3600.0)
    try:
        async with AsyncTestClient(create_app(settings)) as client:
            sweeper = client.app.state.external.sweeper
            now = datetime.now(UTC)
            for _ in range(3):
                await swept(client, sweeper, now)
        row = await transaction(db, waiting["id"])
        assert row["status"] == "completed"
    finally:
        async with db.begin() as conn:  # out of the other tests' way
            await conn.execute(sa.update(et.transactions).where(et.transactions.c.connection_id == broken["id"])
                               .values(status="failed", failure_code="test_cleanup"))


async def swept(client, sweeper, now):
    import asyncio

    await asyncio.to_thread(client.blocking_portal.call, sweeper.sweep_pending, now)


# ---- bad input that reached a 5xx (schemathesis) ------------------------------------------------------

async def test_a_signed_event_whose_names_cannot_be_kept_is_400_and_stores_nothing(http, db):
    """The barber can sign anything with its own secret: an id with a NUL (Postgres refuses it) or a
    Square object id no processor could have is a 400, never a 500 or a 503 asking to retry forever."""
    from shared.processors.square import signature_for

    b = next_barber()
    secret = f"whsec_nul_{b}"
    connection = await connect_stripe(http, b, webhook_secret=secret)
    status, problem = await post_stripe_notice(http, connection["id"], secret, {
        "id": "evt_\u0000", "type": "payment_intent.succeeded", "data": {"object": {
            "id": "pi_1", "object": "payment_intent"}}})
    assert (status, problem["code"]) == (400, "invalid_event"), problem
    square = await connect(http, b, "square", webhook_secret=f"sq-key-{b}")
    body = msgspec.json.encode({"event_id": f"sq-bad-{b}", "type": "payment.updated",
                                "created_at": "2026-12-01T00:00:00Z",
                                "data": {"object": {"payment": {"id": "b\u0080"}}}})
    signature = signature_for(body, signature_key=f"sq-key-{b}", notification_url=square["webhook_url"])
    async with http.post(f"/api/v1/webhooks/square/{square['id']}", data=body,
                         headers={"x-square-hmacsha256-signature": signature}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == "invalid_event"
    assert await rows(db, sa.select(et.webhook_events).where(
        et.webhook_events.c.connection_id.in_([connection["id"], square["id"]]))) == []


# ---- 8: an attempt that never reached its processor is no failed payment ---------------------------------

async def test_an_attempt_refused_before_reaching_the_processor_is_no_failed_payment(http, db, stripe_sim):
    """Rate limited before anything was done: nothing happened (the router may pay elsewhere), and
    no `transaction.recorded` tells analytics of a failed payment (it would count in success rates)."""
    from tests.integration.router_support import sim_call

    b = next_barber()
    connection = await connect_stripe(http, b, webhook_secret=f"whsec_refused_{b}")
    await sim_call(stripe_sim, "POST", "/_sim/faults", {"mode": "error", "status": 429, "count": 1,
                                                        "path_prefix": "/v1/payment_intents"})
    status, refused = await call(http, "POST", "/internal/v1/charges", SERVICE, charge_body(b, connection["id"]))
    assert (status, refused["code"], refused["nothing_happened"]) == (503, "processor_unavailable", True), refused
    assert (await transaction(db, refused["transaction_id"]))["status"] == "failed"
    assert await events(db, "transaction.recorded", "transaction_id", refused["transaction_id"]) == []
