"""Square through the official SDK's async client (`square.AsyncSquare`), behind the processor
interface.

One adapter per Square seller account and location: a barber's own account (external payments).
The API base is configurable so tests and the sandbox talk to the local simulator. Every call
goes through the SDK's client (its base URL, auth and `Square-Version` headers, its httpx transport).

What differs from Stripe, and why:
- `platform_fee` / `destination` (and `reverse_platform_fee` on refunds) are not sent: a barber's
  own Square account keeps the whole payment; the platform collects its commission separately.
  `metadata` and `off_session` have no Square equivalent and are not sent either.
- Our payment reference is Square's `reference_id`; a refund's reference travels in its `reason`
  (see `transformers`).
- Square limits idempotency keys to 45 characters. A longer key is sent as a fixed digest of it,
  so the same key still always reaches Square as the same value.
- `list_refunds` reads the payment's `refund_ids` and retrieves each refund: Square's
  ListPaymentRefunds cannot filter by payment.
- The SDK retries 429/408/409/5xx by itself; that is turned off (`max_retries=0`) because retries
  are ours, with our idempotency keys, and errors must reach us as they happened.
- Reads on the webhook path (GetPayment, GetRefund) are sent through the SDK's own HTTP client and
  their JSON read as it came: the SDK would build a pydantic model of every field (resolving type
  hints per call) that `_wire` then turns straight back into JSON, which was half the CPU of a
  Square webhook under load (tests/load/README.md). Errors are raised as the SDK raises them.
- A 409 (Square's answer while another request with the same key is still running) is
  `OutcomeUnknown`, not a request error: the first request may yet succeed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx
from square import AsyncSquare
from square.core.api_error import ApiError
from square.core.request_options import RequestOptions
from square.environment import SquareEnvironment
from square.utils.webhooks_helper import verify_signature

from shared.money import MoneyError, normalise_currency, to_minor_units
from shared.processors.base import (
    AccountInfo,
    InvalidCredentials,
    InvalidSignature,
    NotFound,
    OutcomeUnknown,
    PaymentDeclined,
    PaymentRequest,
    PaymentResult,
    ProcessorError,
    ProcessorName,
    ProcessorRequestError,
    ProcessorTimeout,
    ProcessorUnavailable,
    RefundRequest,
    RefundResult,
    Secret,
    WebhookEvent,
    WebhookRegistration,
    timed,
)
from shared.processors.square import transformers as tf

DEFAULT_API_BASE = SquareEnvironment.PRODUCTION.value
SANDBOX_API_BASE = SquareEnvironment.SANDBOX.value
SIGNATURE_HEADER = "x-square-hmacsha256-signature"
WEBHOOK_SUBSCRIPTION_NAME = "hybrid-payments"
_PAGE = 100
# Ids go into URL paths unescaped by the SDK, so anything but Square's id alphabet is refused here.
_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_NO_RETRIES: RequestOptions = {"max_retries": 0}
T = TypeVar("T")


@dataclass(frozen=True, repr=False)
class SquareCredentials:
    """A seller's access token and the location that takes the payments. The token is a `Secret`,
    and the repr is written out (not generated) so a field added later cannot leak by default."""

    access_token: Secret
    location_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.access_token, Secret):
            raise TypeError("access_token must be a Secret")

    @property
    def hint(self) -> str:
        return self.access_token.hint

    def __repr__(self) -> str:
        return f"SquareCredentials(access_token={self.access_token!r}, location_id={self.location_id!r})"

    __str__ = __repr__


class SquareProcessor:
    name: ProcessorName = "square"

    def __init__(self, credentials: SquareCredentials, *, api_base: str = DEFAULT_API_BASE,
                 timeout: float = 10.0) -> None:
        self._credentials = credentials
        self._api_base = api_base.rstrip("/")
        self._timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self._client: AsyncSquare | None = None

    def __repr__(self) -> str:
        return (f"SquareProcessor({self._credentials.hint}, {self._credentials.location_id}, "
                f"{self._api_base})")

    __str__ = __repr__

    def _square(self) -> AsyncSquare:
        # Built lazily, inside the running loop. The token is handed over as a callable, so the
        # SDK keeps no copy of it; our own httpx client is what `close` shuts.
        if self._client is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(self._timeout), follow_redirects=False)
            self._client = AsyncSquare(token=self._credentials.access_token.reveal, base_url=self._api_base,
                                       timeout=self._timeout, httpx_client=self._http)
        return self._client

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = self._client = None

    # ---- the interface ----------------------------------------------------------------------

    async def check_credentials(self) -> AccountInfo:
        location_id = self._credentials.location_id
        if not isinstance(location_id, str) or not _ID.fullmatch(location_id):
            raise InvalidCredentials(f"{location_id!r} is not a Square location id")
        try:
            response = await self._call("check_credentials",
                                        lambda c: c.locations.get(location_id, request_options=_NO_RETRIES))
        except ProcessorRequestError as exc:
            if exc.code == "NOT_FOUND":
                raise InvalidCredentials(
                    f"Square has no location {location_id!r} for this access token", code="NOT_FOUND"
                ) from None
            raise
        location = _wire(response).get("location") or {}
        status = location.get("status")
        if status not in (None, "ACTIVE"):
            raise InvalidCredentials(f"Square location {location_id!r} is {status}, not ACTIVE",
                                     code="LOCATION_INACTIVE")
        currency = location.get("currency")
        return AccountInfo(account_id=location.get("merchant_id") or location.get("id") or location_id,
                           default_currency=currency.upper() if isinstance(currency, str) else None)

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        currency = _currency(request.currency)
        if not request.payment_method:
            raise ProcessorRequestError("a Square payment needs a source (card nonce or card on file id)")
        reference = request.reference
        if not reference or len(reference) > tf.REFERENCE_ID_MAX:
            raise ProcessorRequestError(
                f"payment reference must be 1 to {tf.REFERENCE_ID_MAX} characters (Square's reference_id)")
        params: dict[str, Any] = {
            "source_id": request.payment_method,
            "idempotency_key": square_idempotency_key(request.idempotency_key),
            "amount_money": {"amount": _minor(request.amount, currency), "currency": currency},
            "location_id": self._credentials.location_id,
            "reference_id": reference,
            "autocomplete": True,  # capture at once: our payments are final when they succeed
        }
        if request.description:
            params["note"] = request.description[:tf.NOTE_MAX]  # a label; Square refuses longer ones
        if request.customer:
            params["customer_id"] = request.customer
        response = await self._call("create_payment",
                                    lambda c: c.payments.create(**params, request_options=_NO_RETRIES), declines=True)
        payment = _wire(response).get("payment")
        if not payment:
            raise OutcomeUnknown("Square answered CreatePayment without a payment")
        result = tf.payment_result(payment)
        if result.status == "failed":  # declined, though answered 200: still a decline
            raise PaymentDeclined(result.failure_message or "Square declined the payment",
                                  code=result.failure_code, processor_payment_id=result.processor_payment_id,
                                  raw={"payment": payment})
        return result

    async def retrieve_payment(self, processor_payment_id: str) -> PaymentResult:
        return tf.payment_result(await self._payment(processor_payment_id))

    async def refund(self, request: RefundRequest) -> RefundResult:
        currency = _currency(request.currency)
        payment_id = _checked_id(request.processor_payment_id, "payment")
        params: dict[str, Any] = {
            "idempotency_key": square_idempotency_key(request.idempotency_key),
            "payment_id": payment_id,
            "amount_money": {"amount": _minor(request.amount, currency), "currency": currency},
            "reason": tf.refund_reason(request.reference),
        }
        # reverse_platform_fee: a seller's own account took no platform fee, so there is none to reverse.
        response = await self._call("refund",
                                    lambda c: c.refunds.refund_payment(**params, request_options=_NO_RETRIES))
        refund = _wire(response).get("refund")
        if not refund:
            raise OutcomeUnknown("Square answered RefundPayment without a refund")
        return tf.refund_result(refund)

    async def retrieve_refund(self, processor_refund_id: str) -> RefundResult:
        refund_id = _checked_id(processor_refund_id, "refund")
        answer = await self._call("retrieve_refund", lambda c: _get(c, f"v2/refunds/{refund_id}"))
        return tf.refund_result(answer.get("refund") or {})

    async def list_refunds(self, processor_payment_id: str) -> list[RefundResult]:
        payment = await self._payment(processor_payment_id)
        return [await self.retrieve_refund(refund_id) for refund_id in payment.get("refund_ids") or []]

    async def list_payments(self, since: datetime, until: datetime) -> list[PaymentResult]:
        rows = await self._pages("list_payments", "payments", lambda c, cursor: c.payments.list(
            **self._window(since, until), cursor=cursor, request_options=_NO_RETRIES))
        results = [tf.payment_result(row) for row in rows]
        # [since, until): Square's end_time bound is not documented as exclusive, ours is.
        low, high = tf.parse_time(tf.rfc3339(since)), tf.parse_time(tf.rfc3339(until))
        return [r for r in results if r.created_at is not None and low <= r.created_at < high]

    async def list_refunds_between(self, since: datetime, until: datetime) -> list[RefundResult]:
        rows = await self._pages("list_refunds", "refunds", lambda c, cursor: c.refunds.list(
            **self._window(since, until), cursor=cursor, request_options=_NO_RETRIES))
        low, high = tf.parse_time(tf.rfc3339(since)), tf.parse_time(tf.rfc3339(until))
        return [tf.refund_result(row) for row in rows
                if low <= tf.parse_time(row.get("created_at"), "refund created_at") < high]

    def _window(self, since: datetime, until: datetime) -> dict[str, Any]:
        return {"begin_time": tf.rfc3339(since), "end_time": tf.rfc3339(until), "sort_order": "ASC",
                "location_id": self._credentials.location_id, "limit": _PAGE}

    async def _pages(self, operation: str, member: str, fetch) -> list[dict[str, Any]]:
        """Every page of a Square list. Pages are followed by hand: the SDK's pager stops at the first
        empty page even when Square hands back a cursor, which Square allows ("fewer results than the
        limit")."""
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            pager = await self._call(operation, lambda c, cursor=cursor: fetch(c, cursor))
            page = _wire(pager.response)
            rows.extend(page.get(member) or [])
            cursor = page.get("cursor") or None
            if cursor is None:
                return rows

    async def register_webhook(self, url: str) -> WebhookRegistration:
        subscription = {"name": WEBHOOK_SUBSCRIPTION_NAME, "enabled": True,
                        "event_types": list(tf.WEBHOOK_EVENT_TYPES), "notification_url": url}
        response = await self._call("register_webhook", lambda c: c.webhooks.subscriptions.create(
            subscription=subscription, idempotency_key=str(uuid.uuid4()), request_options=_NO_RETRIES))
        created = _wire(response).get("subscription") or {}
        if not created.get("id") or not created.get("signature_key"):
            raise OutcomeUnknown("Square answered CreateWebhookSubscription without an id and signature key")
        return WebhookRegistration(endpoint_id=created["id"], secret=Secret(created["signature_key"]))

    async def verify_webhook(self, body: bytes, headers: Mapping[str, str], *, secret: Secret,
                             url: str) -> None:
        signature = _header(headers, SIGNATURE_HEADER)
        if not signature:
            raise InvalidSignature(f"{SIGNATURE_HEADER} is missing")
        if not secret.reveal() or not url:
            raise InvalidSignature("no signature key or notification URL to verify against")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidSignature("the body is not UTF-8, so Square did not sign it") from None
        # Square signs notification URL + body with the subscription's signature key
        # (base64 HMAC-SHA256); the SDK's helper compares in constant time.
        if not verify_signature(request_body=text, signature_header=signature,
                                signature_key=secret.reveal(), notification_url=url):
            raise InvalidSignature(f"{SIGNATURE_HEADER} does not match this body and URL")

    def parse_webhook(self, body: bytes) -> WebhookEvent:
        try:
            event = _json_object(body)
            return tf.webhook_event(event)
        except ProcessorRequestError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProcessorRequestError(f"not a Square event: {type(exc).__name__}: {exc}") from None

    # ---- plumbing -----------------------------------------------------------------------------

    async def _payment(self, processor_payment_id: str) -> dict[str, Any]:
        payment_id = _checked_id(processor_payment_id, "payment")
        answer = await self._call("retrieve_payment", lambda c: _get(c, f"v2/payments/{payment_id}"))
        payment = answer.get("payment")
        if not payment:
            raise ProcessorRequestError(f"Square answered GetPayment without payment {payment_id}")
        return payment

    async def _call(self, operation: str, request: Callable[[AsyncSquare], Awaitable[T]], *,
                    declines: bool = False) -> T:
        """Run one SDK call, timed as `operation`, and turn every failure into the interface's
        errors. Messages are built from Square's error codes and exception type names only, so no
        header value (the token) can end up in one."""
        with timed(self.name, operation):
            return await self._mapped(request, declines)

    async def _mapped(self, request: Callable[[AsyncSquare], Awaitable[T]], declines: bool) -> T:
        try:
            return await request(self._square())
        except ApiError as exc:
            raise self._api_error(exc, declines) from None
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # No connection (or none free) in time: the request was never sent.
            raise ProcessorUnavailable(f"Square could not be reached in time: {type(exc).__name__}") from None
        except httpx.TimeoutException:
            raise ProcessorTimeout("Square did not answer in time") from None
        except (httpx.ConnectError, httpx.UnsupportedProtocol, httpx.ProxyError,
                httpx.LocalProtocolError) as exc:
            # Refused, DNS, no route, or a request we could not even write: nothing reached Square.
            raise ProcessorUnavailable(f"Square could not be reached: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            # Sent, then the connection broke (or Square closed it unanswered): it may have been done.
            raise OutcomeUnknown(
                f"the connection to Square broke after sending: {type(exc).__name__}") from None

    def _api_error(self, exc: ApiError, declines: bool) -> ProcessorError:
        status = exc.status_code or 0
        body = exc.body if isinstance(exc.body, dict) else {}
        errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
        first = errors[0] if errors else {}
        code = first.get("code") if isinstance(first.get("code"), str) else None
        detail = self._redact(str(first.get("detail") or code or f"HTTP {status}"))
        if declines and 400 <= status < 500:
            decline = next((e for e in errors if e.get("category") == "PAYMENT_METHOD_ERROR"), None)
            if decline is not None:
                payment = body.get("payment") if isinstance(body.get("payment"), dict) else {}
                return PaymentDeclined(self._redact(str(decline.get("detail") or decline.get("code"))),
                                       code=decline.get("code"), processor_payment_id=payment.get("id"),
                                       raw=body)
        if status in (401, 403):
            return InvalidCredentials(f"Square refused the access token: {detail}", code=code, raw=body)
        if status == 429:  # refused before doing anything
            return ProcessorUnavailable(f"Square rate limited the request: {detail}", code=code, raw=body)
        if status == 409:  # the same idempotency key is still being processed
            return OutcomeUnknown(f"Square is still processing a request with this key: {detail}",
                                  code=code, raw=body)
        if code == "IDEMPOTENCY_KEY_REUSED":
            # Used before with other data: that first request reached Square and may have been done.
            return OutcomeUnknown(f"Square has this key from a request with other data: {detail}",
                                  code=code, raw=body)
        if status >= 500 or status < 400:
            # A 5xx may have done part of the work; a 2xx we could not read was done. Unknown both.
            return OutcomeUnknown(f"Square failed (HTTP {status}): {detail}", code=code, raw=body)
        kind = NotFound if status == 404 else ProcessorRequestError
        return kind(f"Square refused the request (HTTP {status}): {detail}", code=code, raw=body)

    def _redact(self, text: str) -> str:
        token = self._credentials.access_token.reveal()
        return text.replace(token, "…") if token else text


def square_idempotency_key(key: str) -> str:
    """Our key as Square takes it (1 to 45 characters): longer keys become a fixed digest, so a
    retry with the same key still sends the same value."""
    if not key:
        raise ProcessorRequestError("an idempotency key is required")
    if len(key) <= tf.IDEMPOTENCY_KEY_MAX:
        return key
    return "hp-" + hashlib.sha256(key.encode()).hexdigest()[:tf.IDEMPOTENCY_KEY_MAX - 3]


async def _get(client: AsyncSquare, path: str) -> dict[str, Any]:
    """GET `path` through the SDK's own HTTP client (as its `payments.get` / `refunds.get` do) and
    return Square's JSON as sent, raising `ApiError` for a non-2xx answer as the SDK does."""
    response = await client._client_wrapper.httpx_client.request(path, method="GET", request_options=_NO_RETRIES)
    try:
        body = response.json()
    except json.JSONDecodeError:
        raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=response.text) \
            from None
    if not 200 <= response.status_code < 300:
        raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=body)
    if not isinstance(body, dict):
        raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=response.text)
    return body


def _wire(model: Any) -> dict[str, Any]:
    """An SDK response model back to Square's JSON (the fields Square sent, unknown ones kept)."""
    return model.dict() if model is not None else {}


def _currency(currency: str) -> str:
    try:
        return normalise_currency(currency)
    except MoneyError as exc:
        raise ProcessorRequestError(str(exc)) from None


def _minor(amount: Any, currency: str) -> int:
    try:
        return to_minor_units(amount, currency)
    except (MoneyError, AttributeError) as exc:
        raise ProcessorRequestError(f"amount {amount!r}: {exc}") from None


def _checked_id(value: str, kind: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ProcessorRequestError(f"{value!r} is not a Square {kind} id", code="invalid_id")
    return value


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever case the mapping keeps it in."""
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
    return value


def _json_object(body: bytes) -> dict[str, Any]:
    event = json.loads(body)
    if not isinstance(event, dict):
        raise ValueError("the body is not a JSON object")
    return event


def signature_for(body: bytes, *, signature_key: str, notification_url: str) -> str:
    """What Square puts in x-square-hmacsha256-signature: base64 HMAC-SHA256 of URL + body."""
    mac = hmac.new(signature_key.encode(), notification_url.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(mac).decode()
