"""PayPal through its REST API with aiohttp, behind the processor interface.

PayPal's server SDK is synchronous and fixed to PayPal's hosts, so this speaks the documented
REST API directly: OAuth2 client credentials, Orders v2, Payments v2, Transaction Search and
Webhooks. One adapter per PayPal REST app (a barber's own account); the API base is configurable
so tests and the sandbox talk to the local simulator (`sandbox/paypal_sim.py`).

**What `payment_method` is.** A PayPal payment needs the payer's approval, which they give on
PayPal's pages, not to us. The approval the platform keeps is a vaulted billing agreement (a
reference transaction the payer agreed to), so `PaymentRequest.payment_method` is that token:

1. `POST /v2/checkout/orders` with `intent: CAPTURE`, the amount,
   `purchase_units[0].reference_id` and `custom_id` = `request.reference` (how `find_payment`
   finds it again, through Transaction Search's `custom_field`) and
   `payment_source.token = {"id": payment_method, "type": "BILLING_AGREEMENT"}`;
   `PayPal-Request-Id: <idempotency_key>:create`.
2. PayPal answers the order APPROVED (the token stands for the payer's approval), then
   `POST /v2/checkout/orders/{id}/capture` with `PayPal-Request-Id: <idempotency_key>:capture`.
   An order PayPal already completed in step 1 (some token kinds are captured at once) is not
   captured again.

Both request ids derive from the one stored key, so a retry after a lost answer replays both steps
and never charges twice. The result's `processor_payment_id` is the **capture id** (what refunds,
lookups and Transaction Search use); the order id is in `raw["order_id"]`. Declines:
a 422 with `INSTRUMENT_DECLINED` (or another payer/instrument issue, `DECLINE_ISSUES`) raises
`PaymentDeclined` with the order id, a capture in status DECLINED or FAILED raises it with the
capture id; the code is PayPal's issue or `status_details.reason`. An order left needing the
payer (PAYER_ACTION_REQUIRED, CREATED, VOIDED) cannot be captured off-session and is declined
with that status as the code. In the sandbox, `paypal-approved` is captured and `paypal-declined`
is declined (`sandbox/paypal_sim.py` lists the other test values).

`platform_fee` and `destination` map to PayPal's partner fields
(`payment_instruction.platform_fees`, `payee.merchant_id`); `off_session`, `customer` and
`metadata` have no PayPal counterpart on an order and are not sent.

Errors (as `shared.processors.base` says): connection refused / DNS / connect timeout ->
`ProcessorUnavailable`; no answer in time -> `ProcessorTimeout`; connection broken after sending
or 5xx -> `OutcomeUnknown`; 401/403 -> `InvalidCredentials` (after one token refresh on a 401 for
an expired or revoked token); 429 -> `ProcessorUnavailable`; other 4xx -> `ProcessorRequestError`
with PayPal's `details[].issue` (or `name`) as code. No credential or token ever reaches an
exception message, a repr or `raw`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

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
from shared.processors.paypal import transformers as tf

LIVE_API_BASE = "https://api-m.paypal.com"
SANDBOX_API_BASE = "https://api-m.sandbox.paypal.com"
DEFAULT_API_BASE = SANDBOX_API_BASE
# A token is used until this long before PayPal says it expires (at most half its lifetime), so a
# request never leaves with a token that expires on the way.
TOKEN_REFRESH_MARGIN = 60.0
# PayPal refuses Transaction Search windows longer than 31 days; longer ones are walked in pieces.
SEARCH_WINDOW = timedelta(days=31)
SEARCH_PAGE_SIZE = 500
# 422 issues that are the payer's or the instrument's refusal (final), not our request's fault.
DECLINE_ISSUES = frozenset({
    "INSTRUMENT_DECLINED", "PAYER_CANNOT_PAY", "TRANSACTION_REFUSED", "PAYEE_BLOCKED_TRANSACTION",
    "PAYER_ACCOUNT_RESTRICTED", "PAYER_ACCOUNT_LOCKED_OR_CLOSED", "AGREEMENT_ALREADY_CANCELLED",
    "BILLING_AGREEMENT_NOT_FOUND", "MAX_NUMBER_OF_PAYMENT_ATTEMPTS_EXCEEDED", "CARD_EXPIRED",
    "REDIRECT_PAYER_FOR_ALTERNATE_FUNDING", "COMPLIANCE_VIOLATION", "TRANSACTION_LIMIT_EXCEEDED",
})
# The same PayPal-Request-Id is still being processed: it may yet succeed; or it was used with
# another body, so that first request reached PayPal and may have been done. Neither is a refusal.
IN_PROGRESS_ISSUES = frozenset({"PREVIOUS_REQUEST_IN_PROGRESS"})
USED_ISSUES = frozenset({"PAYPAL_REQUEST_ID_PREVIOUSLY_USED"})
WEBHOOK_HEADERS = ("paypal-transmission-id", "paypal-transmission-time", "paypal-transmission-sig",
                   "paypal-cert-url", "paypal-auth-algo")
_REPRESENTATION = {"Prefer": "return=representation"}
_DESCRIPTION_MAX = 127


@dataclass(frozen=True)
class PayPalCredentials:
    """A PayPal REST app's client id and secret. The id is not secret but is shown only as a
    hint too, so a repr never identifies the app beyond what a log needs."""

    client_id: str
    client_secret: Secret = field(repr=False)

    @property
    def hint(self) -> str:
        return f"…{self.client_id[-4:]}" if len(self.client_id) > 8 else "…"

    def __repr__(self) -> str:
        return f"PayPalCredentials(client_id={self.hint}, client_secret={self.client_secret!r})"

    __str__ = __repr__


class PayPalProcessor:
    name: ProcessorName = "paypal"
    # Transaction Search shows a capture hours after it happened: a payment missing from a listing
    # is not proof that it did not happen until this has passed.
    LISTING_LAG = timedelta(hours=3)

    def __init__(self, credentials: PayPalCredentials, *, api_base: str = DEFAULT_API_BASE,
                 timeout: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._credentials = credentials
        self._api_base = api_base.rstrip("/")
        self._timeout = timeout
        self._clock = clock  # injectable so token expiry is testable without waiting
        self._http: aiohttp.ClientSession | None = None
        self._token: Secret | None = None
        self._token_fresh_until = 0.0
        self._token_lock: asyncio.Lock | None = None
        self._app_id: str | None = None

    def __repr__(self) -> str:
        return f"PayPalProcessor({self._credentials!r}, {self._api_base})"

    __str__ = __repr__

    def _session(self) -> aiohttp.ClientSession:
        # Created lazily, inside the running loop: the session belongs to it.
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._token = None

    # ---- the interface ----------------------------------------------------------------------

    async def check_credentials(self) -> AccountInfo:
        """Getting a fresh token is the check: PayPal refuses a bad client id or secret there."""
        await self._access_token(refresh=True)
        return AccountInfo(account_id=self._app_id or f"client {self._credentials.hint}")

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        unit: dict[str, Any] = {
            "reference_id": request.reference,
            "custom_id": request.reference,
            "amount": tf.to_money(request.amount, request.currency),
        }
        if request.description:
            unit["description"] = request.description[:_DESCRIPTION_MAX]
        if request.destination:
            unit["payee"] = {"merchant_id": request.destination}
        if request.platform_fee is not None:
            unit["payment_instruction"] = {"platform_fees": [
                {"amount": tf.to_money(request.platform_fee, request.currency)}]}
        order = await self._call("POST", "/v2/checkout/orders", operation="create_payment", body={
            "intent": "CAPTURE",
            "purchase_units": [unit],
            "payment_source": {"token": {"id": request.payment_method, "type": "BILLING_AGREEMENT"}},
        }, request_id=f"{request.idempotency_key}:create", declines=True)
        status = order.get("status")
        tf.order_status(status)  # an unknown order status is an error, not a guess
        if status == "APPROVED":
            order = await self._call("POST", f"/v2/checkout/orders/{order['id']}/capture",
                                     operation="capture_payment", body={},
                                     request_id=f"{request.idempotency_key}:capture", declines=True,
                                     order_id=order["id"])
            tf.order_status(order.get("status"))
        captures = tf.order_captures(order)
        if not captures:
            raise PaymentDeclined(f"PayPal order {order['id']} is {order.get('status')}: it needs the "
                                  "payer and cannot be captured", code=order.get("status"),
                                  processor_payment_id=order["id"], raw=order)
        capture = captures[-1]
        units = order.get("purchase_units") or [{}]
        result = tf.payment_result(capture, order_id=order["id"],
                                   reference=units[0].get("custom_id") or request.reference)
        if result.status == "failed":
            raise PaymentDeclined(result.failure_message or "PayPal declined the capture",
                                  code=result.failure_code, processor_payment_id=capture["id"],
                                  raw=result.raw)
        return result

    async def retrieve_payment(self, processor_payment_id: str) -> PaymentResult:
        capture = await self._call("GET", f"/v2/payments/captures/{_id(processor_payment_id)}",
                                   operation="retrieve_payment")
        return tf.payment_result(capture)

    async def refund(self, request: RefundRequest) -> RefundResult:
        # The reference travels as custom_id, which the refund (and the order listing it) returns.
        # reverse_platform_fee has no PayPal switch: partner fees are returned in proportion.
        capture_id = _id(request.processor_payment_id)
        refund = await self._call("POST", f"/v2/payments/captures/{capture_id}/refund", operation="refund", body={
            "amount": tf.to_money(request.amount, request.currency),
            "custom_id": request.reference,
        }, request_id=request.idempotency_key)
        return tf.refund_result(refund, capture_id=capture_id)

    async def retrieve_refund(self, processor_refund_id: str) -> RefundResult:
        refund = await self._call("GET", f"/v2/payments/refunds/{_id(processor_refund_id)}",
                                  operation="retrieve_refund")
        return tf.refund_result(refund)

    async def list_refunds(self, processor_payment_id: str) -> list[RefundResult]:
        """PayPal lists no refunds per capture, but the capture's order lists its purchase units'
        refunds (immediately, unlike Transaction Search, which lags)."""
        capture_id = _id(processor_payment_id)
        capture = await self._call("GET", f"/v2/payments/captures/{capture_id}", operation="retrieve_payment")
        order_id = tf.order_id_of_capture(capture)
        if not order_id:
            raise ProcessorRequestError(f"PayPal capture {capture_id} names no order", code="no_order")
        order = await self._call("GET", f"/v2/checkout/orders/{_id(order_id)}", operation="retrieve_order")
        results = []
        for refund in tf.order_refunds(order):
            of = tf.last_segment(tf.link(refund, "up"), "captures")
            if of not in (None, capture_id):
                continue  # another capture of the same order
            if "custom_id" not in refund or "status" not in refund:  # a summary: fetch the refund
                refund = await self._call("GET", f"/v2/payments/refunds/{_id(refund['id'])}",
                                          operation="retrieve_refund")
            results.append(tf.refund_result(refund, capture_id=capture_id))
        return results

    async def list_payments(self, since: datetime, until: datetime) -> list[PaymentResult]:
        """Payments created in [since, until) through Transaction Search (whole seconds, windows of
        at most 31 days, every page). Naive datetimes are taken as UTC."""
        since, until = _utc(since), _utc(until)
        found: dict[str, PaymentResult] = {}
        for payment in tf.transaction_payments(await self._search(since, until, "list_payments")):
            if payment.created_at is not None and since <= payment.created_at < until:
                found.setdefault(payment.processor_payment_id, payment)  # windows share an edge
        return sorted(found.values(), key=lambda p: p.created_at or since)

    async def list_refunds_between(self, since: datetime, until: datetime) -> list[RefundResult]:
        """Refunds (T11xx rows) created in [since, until), through Transaction Search (which lags)."""
        since, until = _utc(since), _utc(until)
        found: dict[str, RefundResult] = {}
        for refund, created in tf.transaction_refunds(await self._search(since, until, "list_refunds")):
            if created is not None and since <= created < until:
                found.setdefault(refund.processor_refund_id, refund)
        return list(found.values())

    async def _search(self, since: datetime, until: datetime, operation: str) -> list[dict[str, Any]]:
        """Every Transaction Search row in [since, until): windows of at most 31 days, every page."""
        start = since.replace(microsecond=0)
        end_limit = until if until.microsecond == 0 else until.replace(microsecond=0) + timedelta(seconds=1)
        rows: list[dict[str, Any]] = []
        while start < end_limit:
            end = min(start + SEARCH_WINDOW, end_limit)
            page, pages = 1, 1
            while page <= pages:
                listing = await self._call("GET", "/v1/reporting/transactions", operation=operation, params={
                    "start_date": _rfc3339(start), "end_date": _rfc3339(end), "fields": "all",
                    "page_size": str(SEARCH_PAGE_SIZE), "page": str(page)})
                rows.extend(listing.get("transaction_details") or ())
                pages = int(listing.get("total_pages") or 1)
                page += 1
            start = end
        return rows

    async def register_webhook(self, url: str) -> WebhookRegistration:
        """For PayPal the webhook id is what verification needs, so it is the 'secret' kept. A URL
        PayPal already has (a registration whose answer was lost) is looked up, not an error."""
        try:
            webhook = await self._call("POST", "/v1/notifications/webhooks", operation="register_webhook", body={
                "url": url, "event_types": [{"name": name} for name in tf.WEBHOOK_EVENT_TYPES]})
        except ProcessorRequestError as exc:
            if exc.code != "WEBHOOK_URL_ALREADY_EXISTS":
                raise
            listing = await self._call("GET", "/v1/notifications/webhooks", operation="list_webhooks")
            matches = [w for w in listing.get("webhooks") or () if w.get("url") == url]
            if not matches:
                raise
            webhook = matches[0]
        return WebhookRegistration(endpoint_id=webhook["id"], secret=Secret(webhook["id"]))

    async def verify_webhook(self, body: bytes, headers: Mapping[str, str], *, secret: Secret,
                             url: str) -> None:
        """PayPal's postback check: the transmission headers and the event go to
        `/v1/notifications/verify-webhook-signature` with our webhook id (`secret`); anything but
        SUCCESS is `InvalidSignature`. The event is sent as the exact bytes received (spliced into
        the request, not re-serialised), so what PayPal checks is what arrived. An outage of that
        call raises its own error (the receiver answers 5xx and PayPal retries the delivery)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        missing = [name for name in WEBHOOK_HEADERS if not lowered.get(name)]
        if missing:
            raise InvalidSignature(f"PayPal webhook without {', '.join(missing)}")
        try:
            text = body.decode("utf-8")
            if not isinstance(json.loads(text), dict):
                raise ValueError("not an object")
        except ValueError:
            raise InvalidSignature("PayPal webhook body is not a JSON event") from None
        fields = {
            "auth_algo": lowered["paypal-auth-algo"],
            "cert_url": lowered["paypal-cert-url"],
            "transmission_id": lowered["paypal-transmission-id"],
            "transmission_sig": lowered["paypal-transmission-sig"],
            "transmission_time": lowered["paypal-transmission-time"],
            "webhook_id": secret.reveal(),
        }
        payload = (json.dumps(fields)[:-1] + ', "webhook_event": ' + text + "}").encode()
        try:
            answer = await self._call("POST", "/v1/notifications/verify-webhook-signature", operation="verify_webhook",
                                      data=payload)
        except ProcessorRequestError as exc:  # PayPal refused the headers themselves as malformed
            raise InvalidSignature(f"PayPal refused to verify the webhook: {exc.code}") from None
        status = answer.get("verification_status")
        if status != "SUCCESS":
            raise InvalidSignature(f"PayPal webhook signature verification: {status}")

    def parse_webhook(self, body: bytes) -> WebhookEvent:
        try:
            event = json.loads(body)
            return tf.webhook_event(event)
        except ProcessorRequestError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProcessorRequestError(f"not a PayPal webhook event: {type(exc).__name__}: {exc}") from None

    # ---- plumbing -----------------------------------------------------------------------------

    async def _access_token(self, *, refresh: bool = False, stale: Secret | None = None) -> Secret:
        """The cached token, or a new one. `stale` is a token PayPal just refused: it is replaced
        once, even when several requests noticed at the same time."""
        if self._token_lock is None:
            self._token_lock = asyncio.Lock()
        async with self._token_lock:
            token = self._token
            usable = token is not None and self._clock() < self._token_fresh_until
            if usable and not refresh and (stale is None or token != stale):
                return token  # type: ignore[return-value]
            answer = await self._fetch_token()
            lifetime = float(answer.get("expires_in") or 0)
            self._token = Secret(answer["access_token"])
            self._token_fresh_until = self._clock() + lifetime - min(TOKEN_REFRESH_MARGIN, lifetime / 2)
            self._app_id = answer.get("app_id") or self._app_id
            return self._token

    async def _fetch_token(self) -> dict[str, Any]:
        pair = f"{self._credentials.client_id}:{self._credentials.client_secret.reveal()}"
        basic = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        with timed(self.name, "access_token"):
            status, body = await self._send("POST", "/v1/oauth2/token", headers=basic,
                                            data={"grant_type": "client_credentials"})
            if status in (400, 401, 403) and body.get("error") in ("invalid_client", "unauthorized_client",
                                                                    "access_denied", None):
                raise InvalidCredentials(f"PayPal refused the client id/secret ({body.get('error')})",
                                         code=body.get("error"), raw=body)
            if status >= 300 or not body.get("access_token"):
                raise self._error(status, body, declines=False)
            return body

    async def _call(self, method: str, path: str, *, operation: str = "other",
                    body: dict[str, Any] | None = None, data: bytes | None = None,
                    params: dict[str, str] | None = None, request_id: str | None = None,
                    declines: bool = False, order_id: str | None = None) -> dict[str, Any]:
        """One API call with a bearer token, timed as `operation` (a fixed name: paths carry ids);
        a 401 for an expired or revoked token gets one new token and one retry (safe: PayPal did
        nothing, and writes carry their request id)."""
        headers = dict(_REPRESENTATION)
        if request_id is not None:
            headers["PayPal-Request-Id"] = request_id
        if data is not None:
            headers["Content-Type"] = "application/json"
        token = await self._access_token()  # timed on its own when it has to be fetched
        with timed(self.name, operation):
            for attempt in (1, 2):
                headers["Authorization"] = f"Bearer {token.reveal()}"
                status, answer = await self._send(method, path, headers=headers, json_body=body,
                                                  data=data, params=params)
                if status == 401 and attempt == 1 and _token_refused(answer):
                    token = await self._access_token(stale=token)
                    continue
                if 200 <= status < 300:
                    return answer
                raise self._error(status, answer, declines=declines, order_id=order_id)
            raise AssertionError("unreachable")

    async def _send(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                    json_body: dict[str, Any] | None = None, data: Any = None,
                    params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """Status and JSON body of one HTTP exchange, with network failures mapped. Exceptions are
        raised `from None`: aiohttp's carry the request's headers, and so the token."""
        try:
            async with self._session().request(method, self._api_base + path, headers=headers,
                                               json=json_body, data=data, params=params) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # No connection was made (refused, DNS, connect timeout): nothing was sent.
            raise ProcessorUnavailable(f"PayPal could not be reached: {type(exc).__name__}") from None
        except TimeoutError:
            raise ProcessorTimeout("PayPal did not answer in time") from None
        except (aiohttp.ClientError, OSError) as exc:
            # Sent, then the connection broke: PayPal may or may not have processed it.
            raise OutcomeUnknown(f"the connection to PayPal broke after sending: {type(exc).__name__}") \
                from None
        if not raw.strip():
            return status, {}
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            if 200 <= status < 300:
                raise OutcomeUnknown(f"PayPal answered {status} with a body that is not a JSON object")
            return status, {"message": f"HTTP {status} without a JSON error body"}
        return status, answer

    def _error(self, status: int, body: dict[str, Any], *, declines: bool,
               order_id: str | None = None) -> ProcessorError:
        issue = tf.error_issue(body)
        text = tf.error_text(body)
        if status in (401, 403):
            return InvalidCredentials(f"PayPal refused the credentials ({status}): {text}", code=issue,
                                      raw=body)
        if status == 429:  # refused before doing anything
            return ProcessorUnavailable(f"PayPal rate limited the request: {text}", code=issue, raw=body)
        if status >= 500:  # PayPal may have done part of it
            return OutcomeUnknown(f"PayPal failed ({status}): {text}", code=issue, raw=body)
        if status == 422 and issue in IN_PROGRESS_ISSUES:
            return OutcomeUnknown(f"PayPal is still processing this request: {text}", code=issue, raw=body)
        if status == 422 and issue in USED_ISSUES:
            return OutcomeUnknown(f"PayPal has this request id from a request with another body: {text}",
                                  code=issue, raw=body)
        if declines and status == 422 and issue in DECLINE_ISSUES:
            return PaymentDeclined(f"PayPal declined the payment: {text}", code=issue,
                                   processor_payment_id=order_id, raw=body)
        if 300 <= status < 400 or status < 200:
            return OutcomeUnknown(f"PayPal answered an unexpected HTTP {status}", code=issue, raw=body)
        if status == 404:
            return NotFound(f"PayPal has no such resource: {text}", code=issue, raw=body)
        return ProcessorRequestError(f"PayPal refused the request ({status}): {text}", code=issue, raw=body)


def _token_refused(body: dict[str, Any]) -> bool:
    """A 401 about the token (expired, revoked), as opposed to one about the app itself."""
    return body.get("error") == "invalid_token" or body.get("name") == "AUTHENTICATION_FAILURE"


def _id(value: str) -> str:
    """An id going into a URL path: PayPal's ids are alphanumeric, so anything else is refused
    here rather than allowed to change the path."""
    if not value or not value.replace("-", "").replace("_", "").isalnum() or not value.isascii():
        raise ProcessorRequestError(f"not a PayPal id: {value[:40]!r}", code="invalid_id")
    return value


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
