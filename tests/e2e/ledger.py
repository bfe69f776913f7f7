"""The end-to-end tests' own ledger: barbers set up and paid through the gateway, and what each was
charged, kept in integer cents from what the gateway answered (never from the suite's own sums)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp

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
    # Declined requests that had to be retried (their replica died before answering): the processor
    # may have declined the card twice, and each decline is a failed attempt on record.
    declines_maybe_twice: int = 0
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


# What a client sees while a replica dies under it: the gateway's 502 (the connection broke) or 504,
# a 503 from a service whose dependency did, and 409 while the dead request's Idempotency-Key claim
# is still held (until IDEMPOTENCY_CLAIM_TIMEOUT) or its route's payment lease is (EXTERNAL_TIMEOUT
# + 5 s). A client retries those with the same key.
RETRIED = {502, 503, 504}
RETRIED_CONFLICTS = {"idempotency_in_progress", "payment_in_progress"}


class RetryingCall:
    """`call`, retried with the same headers (so the same Idempotency-Key) while the answer says the
    request did not finish: what a well-behaved client does when a replica dies mid-request.
    `attempts` is how many tries the last call took (one per barber: barbers pay concurrently)."""

    def __init__(self, give_up_after: float = 90.0) -> None:
        self.give_up_after = give_up_after
        self.attempts = 0

    async def __call__(self, http, method: str, url: str, headers: dict, body=None, params=None) -> tuple[int, dict]:
        loop = asyncio.get_running_loop()
        deadline, history = loop.time() + self.give_up_after, []
        while True:
            try:
                status, body_ = await call(http, method, url, headers, body, params)
            except (aiohttp.ClientError, TimeoutError):
                status, body_ = 599, {"code": "client_error"}
            history.append((round(loop.time() - deadline + self.give_up_after, 1), status, body_.get("code")))
            self.attempts = len(history)
            transient = status in RETRIED or status == 599 or (
                status == 409 and body_.get("code") in RETRIED_CONFLICTS)
            if not transient:
                return status, body_
            if loop.time() > deadline:
                raise AssertionError(f"{method} {url} did not finish in {self.give_up_after:.0f} s: {history}")
            await asyncio.sleep(0.5)


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


async def pay(http, b: Barber, secret: str, *, call=call) -> None:
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
            if getattr(call, "attempts", 1) > 1:
                b.books.declines_maybe_twice += 1
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


# ---- what the other services must show for a barber's books ------------------------------------

async def analytics_shows(http, admin: dict, b: Barber, days: dict) -> None:
    expected = {"completed_count": b.books.completed, "gross_volume": money(b.books.gross),
                "refunded_amount": money(b.books.refunded), "commission": money(b.books.commission_kept),
                "transaction_count": b.books.payments, "failed_count": b.books.failed}
    extra_declines = range(b.books.declines_maybe_twice + 1)

    async def shown():
        status, board = await call(http, "GET", f"{AN}/dashboard", admin,
                                   params={"barber_id": b.id, **days})
        assert status == 200, board
        got = {k: board["totals"][k] for k in expected}
        extra = got["failed_count"] - b.books.failed
        if extra in extra_declines:  # declines retried after their replica died may count twice
            got = {**got, "failed_count": b.books.failed, "transaction_count": got["transaction_count"] - extra}
        return board if got == expected else None

    try:
        board = await eventually(shown, timeout=60, interval=0.5)
    except AssertionError:
        status, board = await call(http, "GET", f"{AN}/dashboard", admin,
                                   params={"barber_id": b.id, **days})
        raise AssertionError(f"barber {b.id} ({b.mode}): expected {expected}, analytics shows {board['totals']}")
    # And split by how each was paid.
    by_type = board["by_payment_type"]
    assert cents(by_type["external"]["commission"]) == b.books.external_commission_kept
    assert cents(by_type["centralized"]["commission"]) == b.books.commission_kept - b.books.external_commission_kept


async def collections_accrued(http, admin: dict, b: Barber) -> None:
    async def accrued():
        status, balance = await call(http, "GET", f"{PC}/balance/{b.id}", admin)
        assert status == 200, balance
        return balance if cents(balance["accrued_total"]) == b.books.external_commission_kept else None

    try:
        await eventually(accrued, timeout=60, interval=0.5)
    except AssertionError:
        balance = (await call(http, "GET", f"{PC}/balance/{b.id}", admin))[1]
        raise AssertionError(f"barber {b.id}: accrued {balance}, expected {money(b.books.external_commission_kept)}")


async def collect(http, admin: dict, b: Barber, days: dict) -> None:
    status, _ = await call(http, "PUT", f"{PC}/payment-method/{b.id}", admin, {"payment_method": "pm_card_visa"})
    assert status == 200
    status, run = await call(http, "POST", f"{PC}/run", admin, {"barber_id": b.id, "force": True})
    assert status == 200, run
    owed = b.books.external_commission_kept
    billed = sum(cents(c["amount"]) for c in run["created"])
    assert billed == (owed if owed >= 2500 else 0), (b.id, run)  # at or above MINIMUM_COLLECTION_AMOUNT (25.00)

    async def settled():
        status, balance = await call(http, "GET", f"{PC}/balance/{b.id}", admin)
        return balance if cents(balance["collected_total"]) == billed else None

    balance = await eventually(settled, timeout=60, interval=0.5)
    parts = ("collected_total", "pending_collections", "failed_collections", "overdue_collections",
             "unbilled_commission")
    assert sum(cents(balance[k]) for k in parts) == cents(balance["accrued_total"]) == owed
    assert cents(balance["unbilled_commission"]) == owed - billed

    async def analytics_collected():
        status, board = await call(http, "GET", f"{AN}/dashboard", admin,
                                   params={"barber_id": b.id, **days})
        return board if (cents(board["commission_collected"]), cents(board["commission_outstanding"])) == (
            billed, owed - billed) else None

    await eventually(analytics_collected, timeout=60, interval=0.5)
