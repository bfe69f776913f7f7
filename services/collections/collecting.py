"""Collections: aggregating unbilled accruals (`run`, on a schedule and `POST /run`), charging each
collection on the platform's Stripe account (`collection.due` -> an attempt), dunning, lookups.

Charging is crash-safe like the router's payments: the attempt (collection, attempt number) is
committed `pending` with its Stripe key (`hp-coll-<attempt id>`) before Stripe is called, and its
outcome, the collection's new state and `collection.settled` commit together, conditional on the
attempt still being pending. An attempt left pending (a crash, a timeout) is driven again by the
sweeper with the same key: Stripe answers with the charge it made, or makes it now (the money is
owed either way, and the key stops a second charge). A collected collection is never charged again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

import structlog

from services.collections import store
from services.collections.domain import after_failure, due_date, window_ends
from services.collections.mapping import collection_due, collection_out, collection_settled
from services.collections.settings import CollectionsSettings
from services.collections.wire import (
    BalanceOut,
    CollectionOut,
    CollectionPage,
    CollectionStatus,
    PaymentMethodIn,
    PaymentMethodOut,
    RunOut,
)
from shared.auth import Principal
from shared.errors import ProblemError, not_found
from shared.events import CollectionDue, Event
from shared.money import MoneyError, format_amount, normalise_currency
from shared.observability import COLLECTION_ATTEMPTS, COLLECTIONS, COLLECTIONS_AMOUNT
from shared.outbox import UnitOfWork
from shared.pagination import page_of
from shared.processors import base as p
from shared.scheduler import settle_each
from shared.service import ServiceRuntime

log = structlog.get_logger("collections")
Clock = Callable[[], datetime]


class CollectionService:
    def __init__(self, runtime: ServiceRuntime, settings: CollectionsSettings, processor: p.PaymentProcessor | None,
                 *, clock: Clock = lambda: datetime.now(UTC)) -> None:
        self.rt = runtime
        self.settings = settings
        self.processor = processor
        self.clock = clock
        self._drives: set[asyncio.Task] = set()

    # ---- aggregation ------------------------------------------------------------------------------

    async def run(self, *, barber_id: int | None = None, force: bool = False, now: datetime | None = None) -> RunOut:
        now = now or self.clock()
        s = self.settings
        async with self.rt.uow() as uow:
            rows = await store.bill_unbilled(
                uow.session, ends=window_ends(now), now=now, minimum=s.minimum_collection_amount,
                default_frequency=s.commission_collection_frequency, default_auto=s.auto_collection_enabled,
                force=force, barber_id=barber_id, due=due_date(now))
            billed = rows[0]["billed_count"] if rows else 0
            for row in rows:
                del row["billed_count"]
                uow.emit(collection_due(row, attempt=1))
            await uow.commit()
        if rows:
            log.info("collections_created", count=len(rows), accruals=billed)
        return RunOut(created=[collection_out(r) for r in rows], accruals_billed=billed)

    async def scheduled_run(self, now: datetime) -> None:
        await self.run(now=now)

    # ---- attempts -----------------------------------------------------------------------------------

    async def apply_collection_due(self, uow: UnitOfWork, event: Event) -> None:
        """Record the attempt this event asks for (once) and drive it after commit."""
        due = event.decode(CollectionDue)
        session = uow.session
        collection = await store.load_collection(session, uuid.UUID(due.collection_id), lock=True)
        if collection is None:
            raise ValueError(f"collection.due for an unknown collection {due.collection_id}")
        if collection["status"] == "collected":
            return  # paid already: never charged again
        attempt = await store.attempt_of(session, collection["id"], due.attempt)
        if attempt is None:
            attempt_id = uuid.uuid4()
            now = self.clock()
            attempt = await store.insert_attempt(session, dict(
                id=attempt_id, collection_id=collection["id"], attempt=due.attempt, status="pending",
                processor_idempotency_key=f"hp-coll-{attempt_id}", created_at=now,
                # Backdated: nobody drives it until after commit, and the sweeper may take it then.
                updated_at=now - timedelta(seconds=self.settings.pending_sweep_after)))
        if attempt is not None and attempt["status"] == "pending":
            uow.after_commit(lambda: self._spawn(attempt["id"]))

    def _spawn(self, attempt_id: uuid.UUID) -> None:
        task = asyncio.create_task(self.drive(attempt_id))
        self._drives.add(task)
        task.add_done_callback(self._drives.discard)

    async def drive(self, attempt_id: uuid.UUID) -> str:
        """Charge a pending attempt (again, with its own key) and record the outcome."""
        now = self.clock()
        async with self.rt.uow() as uow:
            attempt = await store.touch_pending_attempt(uow.session, attempt_id, now)
            if attempt is None:
                await uow.commit()
                return "settled"
            collection = await store.load_collection(uow.session, attempt["collection_id"])
            barber = await store.load_settings(uow.session, collection["barber_id"])
            method = await store.load_payment_method(uow.session, collection["barber_id"])
            await uow.commit()
        if collection["status"] == "collected":
            return await self._settle(attempt, collection, "failed", None, None, "already collected")
        connect = barber["connect_account_id"] if barber else None
        if method is not None:
            how, source, customer = "payment_method", method["stripe_payment_method_id"], method["stripe_customer_id"]
        elif connect:
            how, source, customer = "connect_debit", connect, None
        else:
            COLLECTION_ATTEMPTS.labels("no_payment_method").inc()
            return await self._settle(attempt, collection, "failed", None, None, "no_payment_method")
        if self.processor is None:
            return await self._settle(attempt, collection, "failed", how, None, "processor_not_configured")
        request = p.PaymentRequest(
            amount=collection["amount"], currency=collection["currency"], payment_method=source,
            idempotency_key=attempt["processor_idempotency_key"], reference=str(attempt["id"]),
            customer=customer, off_session=how == "payment_method",
            description=f"Platform commission, collection {collection['id']}",
            metadata={"collection_id": str(collection["id"]), "barber_id": str(collection["barber_id"]),
                      "attempt": str(attempt["attempt"])},
        )
        try:
            if how == "connect_debit":
                result = await self.processor.debit_connected_account(request)  # type: ignore[attr-defined]
            else:
                result = await self.processor.create_payment(request)
        except p.PaymentDeclined as declined:
            COLLECTION_ATTEMPTS.labels("declined").inc()
            return await self._settle(attempt, collection, "failed", how, declined.processor_payment_id,
                                      declined.code or declined.message)
        except p.OutcomeUnknown as exc:  # stays pending: the sweeper drives it again with the same key
            COLLECTION_ATTEMPTS.labels("unknown").inc()
            log.warning("collection_attempt_unknown", attempt_id=str(attempt_id), error=exc.message)
            return "pending"
        except (p.ProcessorUnavailable, p.ProcessorRequestError, p.InvalidCredentials) as exc:
            COLLECTION_ATTEMPTS.labels("error").inc()
            return await self._settle(attempt, collection, "failed", how, None, exc.code or exc.message)
        if result.status == "completed":
            COLLECTION_ATTEMPTS.labels("collected").inc()
            return await self._settle(attempt, collection, "succeeded", how, result.processor_payment_id, None)
        if result.status == "pending":
            return "pending"
        COLLECTION_ATTEMPTS.labels("failed").inc()
        return await self._settle(attempt, collection, "failed", how, result.processor_payment_id,
                                  result.failure_code or result.status)

    async def _settle(self, attempt: dict[str, Any], collection: dict[str, Any], outcome: str, method: str | None,
                      payment_intent_id: str | None, reason: str | None) -> str:
        now = self.clock()
        async with self.rt.uow() as uow:
            current = await store.load_collection(uow.session, collection["id"], lock=True)
            assert current is not None
            settled = await store.settle_attempt(uow.session, attempt["id"], dict(
                status=outcome, method=method, payment_intent_id=payment_intent_id, failure_reason=reason,
                updated_at=now))
            if settled is None:  # someone settled it first
                await uow.commit()
                return "settled"
            if current["status"] == "collected":
                await uow.commit()
                return "collected"
            if outcome == "succeeded":
                values = dict(status="collected", collected_at=now, payment_intent_id=payment_intent_id,
                              collection_method=method, failed_reason=None, next_attempt_at=None,
                              attempts=max(current["attempts"], attempt["attempt"]), updated_at=now)
            else:
                first_failed = current["first_failed_at"] or now
                after = after_failure(attempts=attempt["attempt"], first_failed_at=first_failed,
                                      retry_days=self.settings.retry_days)
                values = dict(status=after.status, failed_reason=reason, first_failed_at=first_failed,
                              next_attempt_at=after.next_attempt_at, collection_method=method,
                              attempts=max(current["attempts"], attempt["attempt"]), updated_at=now)
            row = await store.update_collection(uow.session, current["id"], values)
            uow.emit(collection_settled(row))
            await uow.commit()
        log.info("collection_settled", collection_id=str(row["id"]), status=row["status"], attempt=attempt["attempt"])
        return row["status"]

    async def dunning(self, now: datetime) -> int:
        """Failed collections whose next attempt is due: ask for it (`collection.due`)."""
        async with self.rt.uow() as uow:
            due = await store.retries_due(uow.session, now, limit=500)
            for row in due:
                row = await store.update_collection(uow.session, row["id"], {"next_attempt_at": None,
                                                                             "updated_at": now})
                uow.emit(collection_due(row, attempt=row["attempts"] + 1))
            await uow.commit()
        return len(due)

    async def retry(self, collection_id: uuid.UUID) -> CollectionOut:
        """An operator's "try again now" for a failed or overdue collection."""
        now = self.clock()
        async with self.rt.uow() as uow:
            row = await store.load_collection(uow.session, collection_id, lock=True)
            if row is None:
                raise not_found(f"collection {collection_id}")
            if row["status"] not in ("failed", "overdue"):
                raise ProblemError(409, "not_retryable", f"a {row['status']} collection is not retried")
            pending = await store.attempt_of(uow.session, row["id"], row["attempts"] + 1)
            if pending is None:
                row = await store.update_collection(uow.session, row["id"], {"next_attempt_at": None,
                                                                             "updated_at": now})
                uow.emit(collection_due(row, attempt=row["attempts"] + 1))
            await uow.commit()
        return collection_out(row)

    async def sweep_pending(self, now: datetime) -> int:
        untouched_since = now - timedelta(seconds=self.settings.pending_sweep_after)
        async with self.rt.uow() as uow:
            rows = await store.pending_attempts(uow.session, untouched_since, limit=200)
        outcomes = await settle_each(rows, lambda row: self.drive(row["id"]))
        if outcomes:
            log.info("collection_attempts_swept", **outcomes)
        return len(rows)

    async def close(self) -> None:
        if self._drives:
            await asyncio.wait(self._drives, timeout=5)

    # ---- lookups and settings ----------------------------------------------------------------------

    async def list(self, *, barber_id: int | None, status: str | None, currency: str | None,
                   since: datetime | None, until: datetime | None, cursor: str | None, limit: int) -> CollectionPage:
        async with self.rt.uow() as uow:
            rows = await store.list_collections(uow.session, barber_id=barber_id, status=status, currency=currency,
                                                since=since, until=until, cursor=cursor, limit=limit)
        page, next_cursor = page_of(rows, limit, lambda r: (r["created_at"], r["id"]))
        return CollectionPage(items=[collection_out(r) for r in page], next_cursor=next_cursor)

    async def balance(self, barber_id: int, currency: str) -> BalanceOut:
        try:
            currency = normalise_currency(currency)
        except MoneyError as exc:
            raise ProblemError(422, "validation_error", f"currency: {exc}", field="currency") from None
        async with self.rt.uow() as uow:
            totals = await store.balance(uow.session, barber_id, currency)
        by_status = totals["by_status"]

        def money(value: Decimal) -> str:
            return format_amount(value, currency)

        return BalanceOut(
            barber_id=barber_id, currency=currency, unbilled_commission=money(totals["unbilled"]),
            pending_collections=money(by_status.get("pending", Decimal(0))),
            collected_total=money(by_status.get("collected", Decimal(0))),
            failed_collections=money(by_status.get("failed", Decimal(0))),
            overdue_collections=money(by_status.get("overdue", Decimal(0))),
            accrued_total=money(totals["accrued"]),
        )

    async def payment_method(self, barber_id: int) -> PaymentMethodOut:
        async with self.rt.uow() as uow:
            method = await store.load_payment_method(uow.session, barber_id)
            barber = await store.load_settings(uow.session, barber_id)
        connect = barber["connect_account_id"] if barber else None
        return PaymentMethodOut(
            barber_id=barber_id, payment_method=method["stripe_payment_method_id"] if method else None,
            customer=method["stripe_customer_id"] if method else None, connect_account_id=connect,
            collection_method="payment_method" if method else "connect_debit" if connect else "none",
            updated_at=method["updated_at"] if method else None,
        )

    async def set_payment_method(self, principal: Principal, barber_id: int, body: PaymentMethodIn) -> PaymentMethodOut:
        async with self.rt.uow() as uow:
            await store.upsert_payment_method(uow.session, dict(
                barber_id=barber_id, stripe_payment_method_id=body.payment_method, stripe_customer_id=body.customer,
                updated_at=self.clock()))
            await uow.commit()
        return await self.payment_method(barber_id)

    async def refresh_metrics(self, now: datetime) -> None:
        async with self.rt.uow() as uow:
            rows = await store.totals_by_status(uow.session)
        found = {(row["status"], row["currency"]): row for row in rows}
        for currency in {row["currency"] for row in rows}:
            for status in get_args(CollectionStatus):  # a status with none left reads 0, not its last count
                row = found.get((status, currency))
                COLLECTIONS.labels(status, currency).set(row["n"] if row else 0)
                COLLECTIONS_AMOUNT.labels(status, currency).set(float(row["amount"]) if row else 0.0)
