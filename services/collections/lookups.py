"""What the collections service shows: collections, balances, how a barber is charged, and the
gauges of collections by status (from the tables, so every replica exports the same)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import get_args

from services.collections import store
from services.collections.mapping import collection_out
from services.collections.wire import (
    BalanceOut,
    CollectionPage,
    CollectionStatus,
    PaymentMethodIn,
    PaymentMethodOut,
)
from shared.errors import ProblemError
from shared.money import MoneyError, format_amount, normalise_currency
from shared.observability import COLLECTIONS, COLLECTIONS_AMOUNT
from shared.pagination import page_of
from shared.service import ServiceRuntime


class LookupService:
    def __init__(self, runtime: ServiceRuntime, clock: Callable[[], datetime]) -> None:
        self.rt = runtime
        self.clock = clock

    async def list(self, *, barber_id: int | None, status: str | None, currency: str | None,
                   since: datetime | None, until: datetime | None, cursor: str | None, limit: int) -> CollectionPage:
        async with self.rt.uow() as uow:
            rows = await store.list_collections(uow.session, barber_id=barber_id, status=status, currency=currency,
                                                since=since, until=until, cursor=cursor, limit=limit)
        page, next_cursor = page_of(rows, limit, lambda r: (r.created_at, r.id))
        return CollectionPage(items=[collection_out(r) for r in page], next_cursor=next_cursor)

    async def balance(self, barber_id: int, currency: str) -> BalanceOut:
        try:
            currency = normalise_currency(currency)
        except MoneyError as exc:
            raise ProblemError(422, "validation_error", f"currency: {exc}", field="currency") from None
        async with self.rt.uow() as uow:
            totals = await store.balance(uow.session, barber_id, currency)
        by_status = totals.by_status

        def money(value: Decimal) -> str:
            return format_amount(value, currency)

        return BalanceOut(
            barber_id=barber_id, currency=currency, unbilled_commission=money(totals.unbilled),
            pending_collections=money(by_status.get("pending", Decimal(0))),
            collected_total=money(by_status.get("collected", Decimal(0))),
            failed_collections=money(by_status.get("failed", Decimal(0))),
            overdue_collections=money(by_status.get("overdue", Decimal(0))),
            accrued_total=money(totals.accrued),
        )

    async def payment_method(self, barber_id: int) -> PaymentMethodOut:
        async with self.rt.uow() as uow:
            method = await store.load_payment_method(uow.session, barber_id)
            barber = await store.load_settings(uow.session, barber_id)
        connect = barber.connect_account_id if barber else None
        return PaymentMethodOut(
            barber_id=barber_id, payment_method=method.stripe_payment_method_id if method else None,
            customer=method.stripe_customer_id if method else None, connect_account_id=connect,
            collection_method="payment_method" if method else "connect_debit" if connect else "none",
            updated_at=method.updated_at if method else None,
        )

    async def set_payment_method(self, barber_id: int, body: PaymentMethodIn) -> PaymentMethodOut:
        async with self.rt.uow() as uow:
            await store.upsert_payment_method(uow.session, dict(
                barber_id=barber_id, stripe_payment_method_id=body.payment_method, stripe_customer_id=body.customer,
                updated_at=self.clock()))
            await uow.commit()
        return await self.payment_method(barber_id)

    async def refresh_metrics(self, now: datetime) -> None:
        async with self.rt.uow() as uow:
            rows = await store.totals_by_status(uow.session)
        found = {(row.status, row.currency): row for row in rows}
        for currency in {row.currency for row in rows}:
            for status in get_args(CollectionStatus):  # a status with none left reads 0, not its last count
                row = found.get((status, currency))
                COLLECTIONS.labels(status, currency).set(row.n if row else 0)
                COLLECTIONS_AMOUNT.labels(status, currency).set(float(row.amount) if row else 0.0)
