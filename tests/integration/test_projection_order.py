"""The consumers' own code, on real Postgres, against deliveries in any order: analytics'
`Projections.apply_transactions` / `apply_transaction_recorded` and collections'
`AccrualService.apply_transaction_recorded`, each batch in a `UnitOfWork` built as the services
build theirs, fed `transaction.recorded` events shuffled, split into batches and redelivered.
The rollup rows and accrual rows they leave are checked against sums this module computes itself
from each transaction's newest state, in integer cents.

The events go straight to the handlers, without the consumer's claim on event ids: a redelivery
then reaches the handler, so what makes it harmless here is the handlers' sequence guard alone
(the claim is covered in test_outbox_and_consumers.py).

Each example has barbers, transaction ids and (for analytics' all-barbers rows) UTC days of its
own, so examples never see each other's rows in the one database of the run.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from services.analytics import tables as at
from services.analytics.projections import Projections
from services.collections import tables as ct
from services.collections.accruals import AccrualService
from shared.config import normalise_database_url
from shared.db import PlatformTables, session_factory
from shared.events import ConfigChanged, TransactionRecorded, new_event
from shared.outbox import UnitOfWork

STATUSES = ["pending", "completed", "failed", "canceled", "partially_refunded", "refunded"]
SETTLED = ("completed", "partially_refunded", "refunded")
MEASURES = ("transaction_count", "completed_count", "failed_count", "gross_volume", "refunded_amount", "commission",
            "processor_fees", "barber_net")
# Barber ids and days no other module uses; each example takes fresh ones.
_examples = itertools.count()
FIRST_BARBER = 950_000
FIRST_DAY = date(2041, 1, 1)
EXAMPLE_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
async def engine(database_url):
    engine = create_async_engine(normalise_database_url(database_url))
    yield engine
    await engine.dispose()


def units_of_work(engine, metadata):
    """A factory of units of work on a service's schema, as `ServiceRuntime.uow` makes them
    (no relay: these handlers emit nothing)."""
    sessions, tables = session_factory(engine), PlatformTables(metadata)
    return lambda: UnitOfWork(sessions, tables)


def cents(n: int) -> Decimal:
    return Decimal(n).scaleb(-2)


def as_cents(value: Decimal) -> int:
    assert value == value.quantize(Decimal("0.01")), value  # every figure is whole cents
    return int(value * 100)


def half_up_div(num: int, den: int) -> int:
    return (2 * num + den) // (2 * den)


def kept_commission(s: dict) -> int:
    """What the platform keeps of a settled payment's commission after refunds, in cents."""
    if s["refunded"] >= s["amount"]:
        return 0
    return s["commission"] - half_up_div(s["commission"] * s["refunded"], s["amount"])


@st.composite
def histories(draw, *, barbers: int, external_share: float = 0.5):
    """Transactions, each its states in the producer's order (the last is the truth); a state may
    move the payment to another day, and a refund may shrink (one that failed later)."""
    txs = []
    for _ in range(draw(st.integers(1, 5))):
        amount = draw(st.integers(1, 100_000))
        payment_type = "external" if draw(st.floats(0, 1)) < external_share else "centralized"
        tx = dict(barber=draw(st.integers(0, barbers - 1)), payment_type=payment_type,
                  processor="stripe" if payment_type == "centralized" else draw(
                      st.sampled_from(["stripe", "square", "paypal"])),
                  amount=amount, commission=draw(st.integers(0, amount)), fee=draw(st.integers(0, 500)),
                  source=draw(st.sampled_from(["live", "legacy"])))
        states = []
        for _ in range(draw(st.integers(1, 4))):
            status = draw(st.sampled_from(STATUSES))
            refunded = {"refunded": amount, "partially_refunded": draw(st.integers(1, amount))}.get(status, 0)
            states.append(dict(tx, status=status, refunded=refunded, day=draw(st.integers(0, 2)),
                               hour=draw(st.integers(0, 23))))
        txs.append(states)
    return txs


@st.composite
def deliveries(draw, txs):
    """(transaction, sequence) pairs: every state once, some again, shuffled, cut into batches."""
    sent = [(t, seq) for t, states in enumerate(txs) for seq in range(1, len(states) + 1)]
    again = draw(st.lists(st.sampled_from(sent), max_size=len(sent)))
    order = draw(st.permutations(sent + again))
    cuts = draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)))
    batches: list[list[tuple[int, int]]] = []
    for item, cut in zip(order, cuts):
        if cut or not batches:
            batches.append([])
        batches[-1].append(item)
    return batches


def events_of(txs: list[list[dict]], ids: list[str], barbers: list[int], first_day: date) -> dict:
    """One event per state (a redelivery is the same event again); `occurred_at` grows with the
    sequence, as the producer writes them."""
    events = {}
    for t, states in enumerate(txs):
        for seq, s in enumerate(states, start=1):
            day = first_day + timedelta(days=s["day"])
            events[(t, seq)] = new_event(TransactionRecorded(
                transaction_id=ids[t], barber_id=barbers[s["barber"]], appointment_id=None, client_id=None,
                payment_type=s["payment_type"], processor=s["processor"],
                connection_id=None if s["payment_type"] == "centralized" else 1, external_transaction_id=None,
                amount=cents(s["amount"]), refunded_amount=cents(s["refunded"]), currency="USD", status=s["status"],
                commission_rate=Decimal("0.20"), commission_amount=cents(s["commission"]),
                processor_fee=cents(s["fee"]),
                processed_at=datetime(day.year, day.month, day.day, s["hour"], tzinfo=UTC),
                sequence=seq, source=s["source"]),
                now=datetime(2041, 1, 1, tzinfo=UTC) + timedelta(minutes=seq))
    return events


def fresh_example(n_barbers: int) -> tuple[int, list[int], date]:
    n = next(_examples)
    return n, [FIRST_BARBER + 10 * n + b for b in range(n_barbers)], FIRST_DAY + timedelta(days=3 * n)


# ---- analytics: facts and daily rollups -------------------------------------------------------------------

def expected_rollups(txs: list[list[dict]], barbers: list[int], first_day: date) -> dict[tuple, tuple[int, ...]]:
    """Per rollup row (day, barber or 0, payment type, processor, currency, source): the newest
    states' figures in cents, summed from scratch."""
    out: dict[tuple, list[int]] = {}
    for states in txs:
        s = states[-1]
        settled = s["status"] in SETTLED
        kept = kept_commission(s) if settled else 0
        fee_on_barber = s["fee"] if s["payment_type"] == "external" else 0
        row = [1, int(settled), int(s["status"] == "failed"), s["amount"] * settled, s["refunded"] * settled, kept,
               s["fee"] * settled, (s["amount"] - s["refunded"] - kept - fee_on_barber) * settled]
        day = first_day + timedelta(days=s["day"])
        for barber in (barbers[s["barber"]], 0):
            key = (day, barber, s["payment_type"], s["processor"], "USD", s["source"])
            out[key] = [a + b for a, b in zip(out.get(key, [0] * 8), row)]
    return {k: tuple(v) for k, v in out.items() if any(v)}


@pytest.fixture(scope="module")
def analytics_uow(engine):
    return units_of_work(engine, at.metadata)


@EXAMPLE_SETTINGS
@given(st.data())
async def test_rollups_are_the_sum_of_the_newest_states_whatever_the_delivery(analytics_uow, data):
    txs = data.draw(histories(barbers=3), label="transactions")
    batches = data.draw(deliveries(txs), label="batches")
    n, barbers, first_day = fresh_example(3)
    ids = [f"order-an-{n}-{t}" for t in range(len(txs))]
    events = events_of(txs, ids, barbers, first_day)
    projections = Projections()
    for batch in batches:
        async with analytics_uow() as uow:
            if len(batch) == 1:
                await projections.apply_transaction_recorded(uow, events[batch[0]])
            else:
                await projections.apply_transactions(uow, [events[item] for item in batch])
            await uow.commit()

    dp, tf = at.daily_payments, at.transaction_facts
    days = [first_day + timedelta(days=d) for d in range(3)]
    async with analytics_uow() as uow:
        rows = (await uow.session.execute(sa.select(dp).where(
            sa.or_(dp.c.barber_id.in_(barbers), sa.and_(dp.c.barber_id == 0, dp.c.day.in_(days)))))).mappings()
        got = {(r["day"], r["barber_id"], r["payment_type"], r["processor"], r["currency"], r["source"]):
               tuple(r[m] if m.endswith("_count") else as_cents(r[m]) for m in MEASURES) for r in rows}
        facts = {tx: (seq, status) for tx, seq, status in (await uow.session.execute(
            sa.select(tf.c.transaction_id, tf.c.sequence, tf.c.status).where(tf.c.transaction_id.in_(ids)))).all()}
    assert {k: v for k, v in got.items() if any(v)} == expected_rollups(txs, barbers, first_day)
    assert facts == {ids[t]: (len(states), states[-1]["status"]) for t, states in enumerate(txs)}


# ---- collections: commission accruals ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def collections_uow(engine):
    return units_of_work(engine, ct.metadata)


def owed_cents(s: dict) -> tuple[int, int]:
    """(commission accrued, commission reversed) of an external payment's state, in cents."""
    if s["payment_type"] != "external" or s["status"] not in SETTLED:
        return 0, 0
    return s["commission"], s["commission"] - kept_commission(s)


@EXAMPLE_SETTINGS
@given(st.data())
async def test_accruals_add_up_to_what_the_newest_state_owes_whatever_the_delivery(collections_uow, data):
    txs = data.draw(histories(barbers=2, external_share=0.8), label="transactions")
    batches = data.draw(deliveries(txs), label="batches")
    n, barbers, first_day = fresh_example(2)
    ids = [f"order-co-{n}-{t}" for t in range(len(txs))]
    events = events_of(txs, ids, barbers, first_day)
    accruals = AccrualService()
    for batch in batches:
        async with collections_uow() as uow:
            if len(batch) == 1:
                await accruals.apply_transaction_recorded(uow, events[batch[0]])
            else:
                await accruals.apply_transactions_recorded(uow, [events[item] for item in batch])
            await uow.commit()

    ac, ts = ct.accruals, ct.transaction_states
    async with collections_uow() as uow:
        rows = (await uow.session.execute(sa.select(ac).where(ac.c.transaction_id.in_(ids)))).mappings().all()
        states = {r["transaction_id"]: r for r in (await uow.session.execute(
            sa.select(ts).where(ts.c.transaction_id.in_(ids)))).mappings()}
    net: dict[str, int] = {}
    for r in rows:
        assert (r["kind"] == "commission") == (r["amount"] > 0), r  # the kind follows the sign
        assert r["currency"] == "USD" and r["collection_id"] is None
        net[r["transaction_id"]] = net.get(r["transaction_id"], 0) + as_cents(r["amount"])
    expected_net, expected_states = {}, {}
    for t, history in enumerate(txs):
        final = history[-1]
        if final["payment_type"] != "external":
            continue  # centralized: its commission was the application fee; nothing is kept for it
        accrued, reversed_ = owed_cents(final)
        if accrued - reversed_:
            expected_net[ids[t]] = accrued - reversed_
        expected_states[ids[t]] = (len(history), final["status"], accrued, reversed_)
    assert {tx: c for tx, c in net.items() if c} == expected_net
    assert {tx: (s["sequence"], s["status"], as_cents(s["commission_accrued"]), as_cents(s["commission_reversed"]))
            for tx, s in states.items()} == expected_states
    # Every row is its payment's barber's.
    barber_of = {ids[t]: barbers[history[-1]["barber"]] for t, history in enumerate(txs)}
    assert all(r["barber_id"] == barber_of[r["transaction_id"]] for r in rows)


async def test_a_batch_of_payments_heard_of_first_takes_no_row_locks(collections_uow, monkeypatch):
    """The usual batch (new external payments, each once) is written in one statement: no event of it
    locks its transaction's state row by row. A payment whose state exists still does, and every
    payment owes what it should."""
    from services.collections import store

    n, barbers, first_day = fresh_example(1)
    txs = [[dict(barber=0, payment_type="external", processor="square", amount=1000 + t, commission=100 + t, fee=0,
                 source="live", status="completed", refunded=0, day=0, hour=t)] for t in range(20)]
    txs[0].append(dict(txs[0][0], status="refunded", refunded=1000))  # its second state comes in a later batch
    ids = [f"order-first-{n}-{t}" for t in range(len(txs))]
    events = events_of(txs, ids, barbers, first_day)
    locked: list[str] = []
    lock = store.lock_transaction_state

    async def counting_lock(session, transaction_id):
        locked.append(transaction_id)
        return await lock(session, transaction_id)

    monkeypatch.setattr(store, "lock_transaction_state", counting_lock)
    accruals = AccrualService()

    async def deliver(batch: list[tuple[int, int]]) -> None:
        async with collections_uow() as uow:
            await accruals.apply_transactions_recorded(uow, [events[item] for item in batch])
            await uow.commit()

    await deliver([(t, 1) for t in range(len(txs))])
    assert locked == []
    await deliver([(0, 2), (1, 1)])  # a refund of a payment on record, and a redelivery
    assert set(locked) == {ids[0], ids[1]}

    ac = ct.accruals
    async with collections_uow() as uow:
        rows = (await uow.session.execute(sa.select(ac.c.transaction_id, ac.c.amount)
                                          .where(ac.c.transaction_id.in_(ids)))).all()
    net: dict[str, int] = {}
    for tx, amount in rows:
        net[tx] = net.get(tx, 0) + as_cents(amount)
    assert net == {ids[0]: 0, **{ids[t]: 100 + t for t in range(1, len(txs))}}


def config_event(barber_id: int, version: int):
    """A barber's config at `version`: its rate and frequency tell the versions apart."""
    return new_event(ConfigChanged(
        barber_id=barber_id, payment_mode="decentralized", preferred_processor="square", fallback_enabled=True,
        min_external_amount=None, max_platform_amount=None, split_threshold=None,
        commission_rate=f"0.{version:02d}", commission_collection_frequency=("daily", "weekly", "monthly")[version % 3],
        auto_collection_enabled=version % 2 == 0, webhook_notifications=True, email_notifications=True,
        analytics_enabled=True, connect_account_id=f"acct_{barber_id}_{version}", version=version))


@EXAMPLE_SETTINGS
@given(st.data())
async def test_each_barbers_settings_are_its_newest_config_whatever_the_delivery(collections_uow, data):
    versions = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=4), label="versions per barber")
    n, barbers, _ = fresh_example(len(versions))
    sent = [(b, v) for b, top in enumerate(versions) for v in range(1, top + 1)]
    order = data.draw(st.permutations(sent + data.draw(st.lists(st.sampled_from(sent)), label="again")))
    cuts = data.draw(st.lists(st.integers(1, 5), min_size=len(order), max_size=len(order)), label="batch sizes")
    events = {(b, v): config_event(barbers[b], v) for b, v in sent}
    accruals, i = AccrualService(), 0
    for size in cuts:
        if i >= len(order):
            break
        async with collections_uow() as uow:
            await accruals.apply_configs_changed(uow, [events[item] for item in order[i:i + size]])
            await uow.commit()
        i += size
    bs = ct.barber_settings
    async with collections_uow() as uow:
        got = {r.barber_id: (r.config_version, r.commission_rate, r.commission_collection_frequency,
                             r.auto_collection_enabled, r.connect_account_id)
               for r in (await uow.session.execute(sa.select(bs).where(bs.c.barber_id.in_(barbers)))).all()}
    assert got == {barbers[b]: (top, Decimal(f"0.{top:02d}"), ("daily", "weekly", "monthly")[top % 3], top % 2 == 0,
                                f"acct_{barbers[b]}_{top}") for b, top in enumerate(versions)}


def test_events_are_the_producers_states():
    """The helper that builds the events keeps each state's figures and sequence (a sanity check
    of this module's own plumbing, so a failure above is the consumers' and not the fixture's)."""
    txs = [[dict(barber=0, payment_type="external", processor="square", amount=1000, commission=150, fee=30,
                 source="live", status="completed", refunded=0, day=1, hour=9),
            dict(barber=0, payment_type="external", processor="square", amount=1000, commission=150, fee=30,
                 source="live", status="partially_refunded", refunded=400, day=1, hour=9)]]
    events = events_of(txs, ["tx"], [7], date(2041, 1, 1))
    second = events[(0, 2)].decode(TransactionRecorded)
    assert (second.sequence, second.refunded_amount, second.barber_id, second.processed_at) == (
        2, Decimal("4.00"), 7, datetime(2041, 1, 2, 9, tzinfo=UTC))
    assert events[(0, 1)].occurred_at < events[(0, 2)].occurred_at
    assert kept_commission(txs[0][1]) == 150 - 60 and owed_cents(txs[0][1]) == (150, 60)
