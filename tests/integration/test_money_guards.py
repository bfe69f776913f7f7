"""The database itself guards the ledgers' sums (as django-hordak does), whatever code writes to it:
deferred constraint triggers refuse, at commit, a collection whose amount is not its accruals', a
payment whose refunded amount is not its succeeded refunds', and a transaction whose accruals add up
to less than nothing. Each test writes the inconsistency directly, as a bug would, and expects the
commit to be refused; the consistent write next to it goes through."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from services.collections import tables as ct
from services.external import tables as et
from services.router import tables as rt

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
_ids = itertools.count(1)


def next_barber() -> int:
    return 1_600_000 + next(_ids)


async def refused(db, *statements) -> str:
    """Run the statements in one transaction; return the message the commit was refused with."""
    with pytest.raises(DBAPIError) as info:
        async with db.begin() as conn:
            for statement in statements:
                await conn.execute(statement)
    return str(info.value.orig)


async def accepted(db, *statements) -> None:
    async with db.begin() as conn:
        for statement in statements:
            await conn.execute(statement)


# ---- collections: a collection is exactly its accruals; a transaction never owes less than nothing -------

def accrual(b: int, tx: str, amount: str, collection_id=None, kind="commission"):
    return dict(barber_id=b, transaction_id=tx, currency="USD", kind=kind, amount=Decimal(amount), accrued_at=NOW,
                event_id=uuid.uuid4(), collection_id=collection_id, created_at=NOW)


def collection(b: int, collection_id, amount: str):
    return sa.insert(ct.collections).values(
        id=collection_id, barber_id=b, amount=Decimal(amount), currency="USD", collection_type="commission",
        status="pending", external_transaction_ids=[], due_date=date(2026, 12, 11), attempts=0, period_end=NOW,
        created_at=NOW, updated_at=NOW, version=1)


async def test_a_collection_whose_amount_is_not_its_accruals_is_refused(db):
    b, cid = next_barber(), uuid.uuid4()
    message = await refused(db, collection(b, cid, "30.00"),
                            sa.insert(ct.accruals).values(**accrual(b, f"t{b}", "25.00", cid)))
    assert "collection" in message and "accruals" in message
    await accepted(db, collection(b, cid, "25.00"), sa.insert(ct.accruals).values(**accrual(b, f"t{b}", "25.00", cid)))
    # Moving an accrual out of it afterwards is refused too.
    message = await refused(db, sa.update(ct.accruals).where(ct.accruals.c.collection_id == cid)
                            .values(collection_id=None))
    assert "collection" in message


async def test_a_transaction_whose_accruals_add_up_below_zero_is_refused(db):
    b = next_barber()
    tx = f"t{b}"
    await accepted(db, sa.insert(ct.accruals).values(**accrual(b, tx, "10.00")))
    message = await refused(db, sa.insert(ct.accruals).values(**accrual(b, tx, "-10.01", kind="reversal")))
    assert "below zero" in message
    await accepted(db, sa.insert(ct.accruals).values(**accrual(b, tx, "-10.00", kind="reversal")))


# ---- refunded amounts are the succeeded refunds -------------------------------------------------------

async def test_an_external_payment_refunded_without_its_refunds_is_refused(db):
    b, tid = next_barber(), uuid.uuid4()
    async with db.begin() as conn:
        connection_id = await conn.scalar(sa.insert(et.connections).values(
            barber_id=b, processor_type="stripe", account_id=f"acct_guard_{b}", status="active", connection_data={},
            credentials="x", supports_payments=True, supports_refunds=True, supports_recurring=False,
            default_currency="USD", total_transactions=0, total_volume=0, connected_at=NOW, created_at=NOW,
            updated_at=NOW, version=1).returning(et.connections.c.id))
        await conn.execute(sa.insert(et.transactions).values(
            id=tid, connection_id=connection_id, processor_type="stripe", external_transaction_id=f"pi_guard_{b}",
            amount=Decimal("50"), refunded_amount=Decimal(0), currency="USD", status="completed", barber_id=b,
            processor_fees=Decimal(0), commission_rate=Decimal("0.1"), commission_amount=Decimal(5), origin="api",
            created_at=NOW, updated_at=NOW, version=1))
    raise_refunded = sa.update(et.transactions).where(et.transactions.c.id == tid).values(
        refunded_amount=Decimal("20"), status="partially_refunded")
    message = await refused(db, raise_refunded)
    assert "refunded_amount" in message
    refund = sa.insert(et.refunds).values(
        id=uuid.uuid4(), transaction_id=tid, processor_type="stripe", processor_payment_id=f"pi_guard_{b}",
        processor_refund_id=f"re_guard_{b}", amount=Decimal("20"), currency="USD", status="succeeded",
        created_at=NOW, updated_at=NOW)
    assert "refunded_amount" in await refused(db, refund)  # a succeeded refund the payment does not count
    await accepted(db, refund, raise_refunded)


async def test_a_platform_payment_refunded_without_its_refunds_is_refused(db):
    b, route_id, pid = next_barber(), uuid.uuid4(), uuid.uuid4()
    await accepted(
        db, sa.insert(rt.routing_decisions).values(
            route_id=route_id, barber_id=b, appointment_id=1, amount=Decimal("40"), currency="USD",
            payment_type="centralized", processor="stripe", commission_rate=Decimal("0.1"),
            commission_amount=Decimal(4), estimated_processor_fee=Decimal("1.46"), barber_net=Decimal(36),
            reason="mode_centralized", fallback_used=False, decided_at=NOW),
        sa.insert(rt.platform_payments).values(
            id=pid, route_id=route_id, barber_id=b, appointment_id=1, amount=Decimal("40"), currency="USD",
            commission_rate=Decimal("0.1"), commission_amount=Decimal(4), processor_fee=Decimal("1.46"),
            refunded_amount=Decimal(0), destination_account=f"acct_{b}", payment_method="pm_card_visa",
            status="completed", processor_idempotency_key=f"hp-pay-guard-{pid}", stripe_payment_intent_id=f"pi_g{pid}", processed_at=NOW,
            created_at=NOW, updated_at=NOW,
            version=1))
    raise_refunded = sa.update(rt.platform_payments).where(rt.platform_payments.c.id == pid).values(
        refunded_amount=Decimal("40"), status="refunded")
    assert "refunded_amount" in await refused(db, raise_refunded)
    refund = sa.insert(rt.platform_refunds).values(
        id=uuid.uuid4(), payment_id=pid, amount=Decimal("40"), status="succeeded",
        processor_idempotency_key=f"hp-refund-guard-{pid}", created_at=NOW, updated_at=NOW)
    assert "refunded_amount" in await refused(db, refund)
    await accepted(db, refund, raise_refunded)
