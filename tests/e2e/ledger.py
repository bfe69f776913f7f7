"""The end-to-end tests' own ledger: barbers set up and paid through the gateway, and what each was
charged, kept in integer cents from what the gateway answered (never from the suite's own sums)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from shared.auth import issue_token
from tests.support import eventually

HP = "/api/v1/hybrid-payments"
EX = "/api/v1/external-payments"
PC = "/api/v1/platform-collections"
AN = "/api/v1/unified-payment-analytics"

CREDENTIALS = {
    "stripe": {"secret_key": "sk_test_conserve_{b}"},
    "square": {"access_token": "EAAAconserve-{b}", "location_id": "LCONSERVE{b}"},
    "paypal": {"client_id": "AconserveClient{b}", "client_secret": "EPaypal-conserve-{b}"},
}
GOOD = {"stripe": "pm_card_visa", "square": "cnon:card-nonce-ok", "paypal": "paypal-approved"}
DECLINED = {"stripe": "pm_card_chargeDeclined", "square": "cnon:card-nonce-declined", "paypal": "paypal-declined"}


def cents(text: str) -> int:
    return int(Decimal(text) * 100)


def money(n: int) -> str:
    return f"{Decimal(n).scaleb(-2):.2f}"


@dataclass
class Books:
    """What one barber was charged, as the gateway answered: the test's own ledger."""

    payments: int = 0
    completed: int = 0
    failed: int = 0
    gross: int = 0
    refunded: int = 0
    commission_kept: int = 0
    external_commission_kept: int = 0
    open: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # id -> (amount, commission, type)

    def kept(self, amount: int, commission: int, refunded: int) -> int:
        reversed_ = commission if refunded == amount else (2 * commission * refunded + amount) // (2 * amount)
        return commission - reversed_


@dataclass
class Barber:
    id: int
    mode: str
    processor: str | None  # its own processor (None: centralized only)
    rate: str
    plan: list[tuple[str, bool, str | None]]  # (amount, approved, refund: None | "all" | amount)
    books: Books = field(default_factory=Books)


async def call(http, method: str, url: str, headers: dict, body=None, params=None) -> tuple[int, dict]:
    async with http.request(method, url, headers=headers, json=body, params=params) as resp:
        return resp.status, await resp.json(content_type=None)


async def set_up(http, admin: dict, b: Barber, secret: str) -> None:
    config = {"payment_mode": b.mode, "commission_rate": b.rate, "fallback_enabled": False,
              "connect_account_id": f"acct_1Conserve{b.id}", "preferred_processor": b.processor}
    if b.mode == "hybrid":
        config["split_threshold"] = "50.00"
    status, body = await call(http, "PUT", f"{HP}/config/{b.id}", admin, config)
    assert status == 200, body
    if b.processor is None:
        return
    own = {"Authorization": f"Bearer {issue_token(secret, b.id, 'barber')}"}
    status, connection = await call(http, "POST", f"{EX}/connections", own, {
        "processor": b.processor, "account_id": f"{b.processor}-conserve-{b.id}",
        "credentials": {k: v.format(b=b.id) for k, v in CREDENTIALS[b.processor].items()}})
    assert status == 201 and connection["status"] == "active", connection

    async def routes_external():  # the router hears of the connection through connection.changed
        s, route = await call(http, "POST", f"{HP}/route", own, {"appointment_id": 1, "amount": "500.00"})
        return s == 200 and route["payment_type"] == "external"

    await eventually(routes_external, timeout=30)


async def pay(http, b: Barber, secret: str) -> None:
    own = {"Authorization": f"Bearer {issue_token(secret, b.id, 'barber')}"}
    for n, (amount, approved, refund) in enumerate(b.plan):
        external = b.mode == "decentralized" or (b.mode == "hybrid" and Decimal(amount) >= 50)
        processor = b.processor if external else "stripe"
        method = (GOOD if approved else DECLINED)[processor]
        status, paid = await call(http, "POST", f"{HP}/process", {**own, "Idempotency-Key": f"cons-{b.id}-{n}"},
                                  {"appointment_id": 100 + n, "amount": amount, "payment_method": method,
                                   "client_id": 1 + n % 2})
        b.books.payments += 1
        if not approved:
            assert status == 402 and paid["code"] == "payment_declined", paid
            b.books.failed += 1
            b.books.open[paid["transaction_id"]] = (cents(amount), 0, "declined")
            continue
        assert status == 200 and paid["status"] == "completed", paid
        assert paid["payment_type"] == ("external" if external else "centralized"), paid
        commission = cents(paid["commission_amount"])
        assert commission == (cents(amount) * int(Decimal(b.rate) * 1000) + 500) // 1000  # half-up, by hand
        refunded = 0
        if refund is not None:
            body = {} if refund == "all" else {"amount": refund}
            status, back = await call(http, "POST", f"{HP}/transactions/{paid['transaction_id']}/refund",
                                      {**own, "Idempotency-Key": f"cons-r-{b.id}-{n}"}, body)
            assert status == 200 and back["refund_status"] == "succeeded", back
            refunded = cents(amount) if refund == "all" else cents(refund)
        kept = b.books.kept(cents(amount), commission, refunded)
        b.books.completed += 1
        b.books.gross += cents(amount)
        b.books.refunded += refunded
        b.books.commission_kept += kept
        if external:
            b.books.external_commission_kept += kept
        b.books.open[paid["transaction_id"]] = (cents(amount), commission, paid["payment_type"])
