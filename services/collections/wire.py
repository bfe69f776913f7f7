"""The collections service's wire types: request structs validated at the edge, responses as sent."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

BarberId = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
CollectionStatus = Literal["pending", "collected", "failed", "overdue"]


class CollectionOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    barber_id: int
    amount: str
    currency: str
    status: CollectionStatus
    collection_type: str
    transaction_ids: list[str]
    commission_rate: str | None
    due_date: date
    attempts: int
    next_attempt_at: datetime | None
    collection_method: str | None
    payment_intent_id: str | None
    collected_at: datetime | None
    failed_reason: str | None
    created_at: datetime


class CollectionPage(msgspec.Struct, kw_only=True):
    items: list[CollectionOut]
    next_cursor: str | None


class BalanceOut(msgspec.Struct, kw_only=True):
    """One barber's commission in one currency: `accrued_total` = `collected_total` +
    `pending_collections` + `failed_collections` + `overdue_collections` + `unbilled_commission`."""

    barber_id: int
    currency: str
    unbilled_commission: str
    pending_collections: str
    collected_total: str
    failed_collections: str
    overdue_collections: str
    accrued_total: str


class RunIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Aggregate now. `barber_id`: only that barber, whatever its automatic-collection setting;
    `force`: ignore the frequency window (never the minimum)."""

    barber_id: BarberId | None = None
    force: bool = False


class RunOut(msgspec.Struct, kw_only=True):
    created: list[CollectionOut]
    accruals_billed: int


class PaymentMethodIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A Stripe payment method saved for off-session charges (from the platform's checkout, e.g. a
    SetupIntent), and its customer; in the sandbox a test method such as `pm_card_visa` does."""

    payment_method: Annotated[str, msgspec.Meta(pattern=r"^pm_[A-Za-z0-9_]{1,100}$")]
    customer: Annotated[str, msgspec.Meta(pattern=r"^cus_[A-Za-z0-9]{1,100}$")] | None = None


class PaymentMethodOut(msgspec.Struct, kw_only=True):
    barber_id: int
    payment_method: str | None
    customer: str | None
    connect_account_id: str | None
    # How the next collection will be charged: payment_method, connect_debit, or none (it will fail).
    collection_method: Literal["payment_method", "connect_debit", "none"]
    updated_at: datetime | None
