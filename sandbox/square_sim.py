"""Local Square API simulator: a small aiohttp server that speaks Square's v2 wire protocol.

Tests and the dev sandbox point the official `squareup` SDK at it
(`AsyncSquare(token=..., base_url=url)`) instead of connect.squareup.com. It speaks Square's JSON
requests and objects, its error shape (`{"errors": [{"category", "code", "detail", "field"}]}`,
with the failed `payment` beside the errors of a decline), Bearer auth, `idempotency_key` in the
JSON body (the same key and body replays the first answer; the key with another body is 400
IDEMPOTENCY_KEY_REUSED; while the first request runs, 409 CONFLICT), cursor pagination, and signs
webhook events as Square does (`x-square-hmacsha256-signature` = base64 HMAC-SHA256 of the
notification URL + body with the subscription's signature key; the legacy SHA-1
`x-square-signature` too). Faults, idempotency records, webhook delivery, the common `/_sim`
controls and the runners come from `sandbox.common`.

Auth and accounts: any Bearer token is accepted except one containing `invalid` (401
UNAUTHORIZED). Each token is its own seller (merchant) with its own payments, refunds,
subscriptions and idempotency keys. Every seller has a main location whose id is derived from the
token (`GET /v2/locations` shows it); any other location id starting with `L` is accepted too and
comes into being when first used, so tests and `make run` can use fixed ids. Locations are in the
US and take USD.

Endpoints:
  GET    /v2/locations                      ListLocations
  GET    /v2/locations/{id}                 RetrieveLocation (404 NOT_FOUND unless it exists or
                                            starts with L)
  GET    /v2/merchants/me                   RetrieveMerchant
  POST   /v2/payments                       CreatePayment (autocomplete true -> COMPLETED, false
                                            -> APPROVED)
  GET    /v2/payments                       ListPayments (begin_time inclusive, end_time
                                            exclusive, sort_order, cursor, limit <= 100,
                                            location_id; the main location by default)
  GET    /v2/payments/{id}                  GetPayment
  POST   /v2/payments/{id}/complete         CompletePayment (APPROVED -> COMPLETED)
  POST   /v2/payments/{id}/cancel           CancelPayment (APPROVED -> CANCELED)
  POST   /v2/refunds                        RefundPayment (COMPLETED at once, or PENDING, below)
  GET    /v2/refunds                        ListPaymentRefunds
  GET    /v2/refunds/{id}                   GetPaymentRefund
  POST   /v2/webhooks/subscriptions         CreateWebhookSubscription (answers the signature_key)
  GET    /v2/webhooks/subscriptions         ListWebhookSubscriptions
  GET    /v2/webhooks/subscriptions/{id}    RetrieveWebhookSubscription
  DELETE /v2/webhooks/subscriptions/{id}    DeleteWebhookSubscription

Test payment sources (`source_id`), as in Square's sandbox:
  cnon:card-nonce-ok                    the payment completes (any other cnon:/ccof: value too)
  cnon:card-nonce-declined              400 PAYMENT_METHOD_ERROR GENERIC_DECLINE, FAILED payment
  cnon:card-nonce-rejected-cvv          ... CVV_FAILURE
  cnon:card-nonce-rejected-postalcode   ... ADDRESS_VERIFICATION_FAILURE
  cnon:card-nonce-rejected-expiration   ... INVALID_EXPIRATION
  cnon:card-nonce-pending-refund        simulator only: the payment completes, and its refunds
                                        start PENDING until the control below settles them
Anything else is 400 NOT_FOUND on `source_id`, like an unknown nonce.

Webhook events (to enabled subscriptions of the seller whose event types include them):
payment.created (APPROVED) then payment.updated (COMPLETED) for a payment; payment.created
(FAILED) for a decline; refund.created and payment.updated for a refund; refund.updated and
payment.updated when a refund settles.

Simulator-only controls (besides the common ones in `sandbox.common`: faults, webhook duplicate /
delay / reorder / flush, deliveries, state dump, reset):
  GET  /_sim/payments[?merchant=<merchant id>]   every payment, across sellers
  GET  /_sim/refunds[?merchant=<merchant id>]    every refund, across sellers
  POST /_sim/refunds/{id}/status  {"status": "COMPLETED"|"REJECTED"|"FAILED"}
       settles a PENDING refund as Square would later; REJECTED and FAILED give the amount back
       to the payment's refundable balance
  POST /_sim/rate_limit  {"count": n}   the next n /v2 requests answer 429 RATE_LIMITED

Deliberately not simulated: real nonce tokenization and single use, customers and cards on
file as objects, orders, tips, app fees, delayed capture timeouts, unlinked refunds, locations
outside the US, subscription updates and signature-key rotation, OAuth, API-version differences,
Square's 72-hour webhook retry schedule (a few quick retries here).
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from sandbox import common
from sandbox.common import STATE, Claim, IdempotencyStore, Running, SimState, Webhook, body_key, json_response

SQUARE_VERSION = "2026-09-16"
DEFAULT_PORT = 12112
log = logging.getLogger("square_sim")

NONCE_OK = "cnon:card-nonce-ok"
NONCE_DECLINED = "cnon:card-nonce-declined"
NONCE_PENDING_REFUND = "cnon:card-nonce-pending-refund"
# Square's declining sandbox nonces: source_id -> error code.
DECLINES = {
    NONCE_DECLINED: "GENERIC_DECLINE",
    "cnon:card-nonce-rejected-cvv": "CVV_FAILURE",
    "cnon:card-nonce-rejected-postalcode": "ADDRESS_VERIFICATION_FAILURE",
    "cnon:card-nonce-rejected-expiration": "INVALID_EXPIRATION",
}
REFUND_SETTLEMENTS = ("COMPLETED", "REJECTED", "FAILED")
CREATE_PAYMENT_FIELDS = {
    "source_id", "idempotency_key", "amount_money", "tip_money", "app_fee_money", "app_fee_allocations",
    "delay_duration", "delay_action", "autocomplete", "order_id", "customer_id", "location_id",
    "team_member_id", "reference_id", "verification_token", "accept_partial_authorization",
    "buyer_email_address", "buyer_phone_number", "billing_address", "shipping_address", "note",
    "statement_description_identifier", "cash_details", "external_details", "customer_details",
    "offline_payment_details",
}
REFUND_FIELDS = {
    "idempotency_key", "amount_money", "app_fee_money", "app_fee_allocations", "payment_id",
    "destination_id", "unlinked", "location_id", "customer_id", "reason", "payment_version_token",
    "team_member_id", "cash_details", "external_details",
}
SUBSCRIPTION_FIELDS = {"id", "name", "enabled", "event_types", "notification_url", "api_version",
                       "signature_key", "created_at", "updated_at"}
LIST_PAYMENTS_QUERY = {
    "begin_time", "end_time", "sort_order", "cursor", "location_id", "total", "last_4", "card_brand",
    "limit", "is_offline_payment", "offline_begin_time", "offline_end_time", "updated_at_begin_time",
    "updated_at_end_time", "sort_field",
}
LIST_REFUNDS_QUERY = {"begin_time", "end_time", "sort_order", "cursor", "location_id", "status",
                      "source_type", "limit", "updated_at_begin_time", "updated_at_end_time", "sort_field"}
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_LOCATION_ID = re.compile(r"L[A-Za-z0-9_-]{0,63}")
_EVENT_TYPE = re.compile(r"[a-z_]+(\.[a-z_]+)+")
_CATEGORY = {401: "AUTHENTICATION_ERROR", 403: "AUTHENTICATION_ERROR", 429: "RATE_LIMIT_ERROR"}
_FAULT_CODES = {502: "BAD_GATEWAY", 503: "SERVICE_UNAVAILABLE", 504: "GATEWAY_TIMEOUT"}


def new_id(length: int = 29) -> str:
    return common.random_token(length)


def now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime | None = None) -> str:
    """Square's RFC 3339 form: milliseconds and a Z."""
    return (moment or now()).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_stamp(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def sign(body: bytes, url: str, key: str, digest: str = "sha256") -> str:
    """Square's webhook signature: base64 HMAC of notification URL + body with the signature key."""
    return base64.b64encode(hmac.new(key.encode(), url.encode() + body, digest).digest()).decode()


# --- errors and parameters ----------------------------------------------------------------


class SquareError(Exception):
    """An error answered in Square's shape. `saved=False` marks failures before anything happened
    (bad parameters, unknown ids): no idempotent result is kept, so a corrected retry runs."""

    def __init__(self, status: int, code: str, detail: str, *, field: str | None = None,
                 category: str | None = None, saved: bool = False, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.saved = status, saved
        error = {"category": category or _CATEGORY.get(status) or
                 ("API_ERROR" if status >= 500 else "INVALID_REQUEST_ERROR"),
                 "code": code, "detail": detail}
        if field:
            error["field"] = field
        self.body = {"errors": [error], **extra}

    def response(self) -> web.Response:
        return json_response(self.body, self.status)


def bad(code: str, detail: str, field: str | None = None, *, status: int = 400,
        saved: bool = False) -> SquareError:
    return SquareError(status, code, detail, field=field, saved=saved)


def not_found(kind: str, obj_id: str, field: str | None = None) -> SquareError:
    return SquareError(404, "NOT_FOUND", f"Could not find {kind} with id: {obj_id}", field=field)


def check_known(body: Mapping[str, Any], allowed: set[str], *, query: bool = False) -> None:
    for name in body:
        if name not in allowed:
            if query:
                raise bad("UNKNOWN_QUERY_PARAMETER", f"Unknown query parameter `{name}`.", name)
            raise bad("UNKNOWN_BODY_PARAMETER", f"Unknown body parameter `{name}`.", name)


def p_str(body: Mapping[str, Any], name: str, *, required: bool = False, max_len: int | None = None,
          label: str = "") -> str | None:
    label = label or name
    raw = body.get(name)
    if raw is None:
        if required:
            raise bad("MISSING_REQUIRED_PARAMETER", "Field must be set", label)
        return None
    if not isinstance(raw, str):
        raise bad("EXPECTED_STRING", "Expected a string value", label)
    if required and raw == "":
        raise bad("VALUE_EMPTY", "Field must not be blank", label)
    if max_len is not None and len(raw) > max_len:
        raise bad("VALUE_TOO_LONG", f"Field must not be greater than {max_len} length", label)
    return raw


def p_bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    raw = body.get(name)
    if raw is None:
        return default
    if not isinstance(raw, bool):
        raise bad("EXPECTED_BOOLEAN", "Expected a boolean value", name)
    return raw


def p_money(body: Mapping[str, Any], name: str) -> tuple[int, str]:
    """A required Money: `amount` a positive integer of minor units, `currency` ISO 4217."""
    raw = body.get(name)
    if raw is None:
        raise bad("MISSING_REQUIRED_PARAMETER", "Field must be set", name)
    if not isinstance(raw, dict):
        raise bad("EXPECTED_OBJECT", "Expected an object", name)
    check_known(raw, {"amount", "currency"})
    amount, currency = raw.get("amount"), raw.get("currency")
    if amount is None:
        raise bad("MISSING_REQUIRED_PARAMETER", "Field must be set", f"{name}.amount")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise bad("EXPECTED_INTEGER", "Expected an integer value", f"{name}.amount")
    if amount < 1:
        raise bad("VALUE_TOO_LOW", "`amount_money.amount` must be greater than 0", f"{name}.amount")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise bad("INVALID_ENUM_VALUE", f"Expected {name}.currency to be a valid currency code",
                  f"{name}.currency")
    return amount, currency


def p_time(query: Mapping[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return parse_stamp(raw)
    except ValueError:
        raise bad("INVALID_TIME", f"Invalid {name}: {raw!r} is not an RFC 3339 timestamp", name) from None


# --- state --------------------------------------------------------------------------------

IDEMPOTENCY_KEY = body_key("idempotency_key")


def _ident(token: str, prefix: str, salt: str = "") -> str:
    return prefix + hashlib.sha256(f"{salt}{token}".encode()).hexdigest()[:12].upper()


@dataclass
class Merchant:
    """One seller (one access token) and everything it owns."""

    token: str
    locations: dict[str, dict] = field(default_factory=dict)
    payments: dict[str, dict] = field(default_factory=dict)
    refunds: dict[str, dict] = field(default_factory=dict)
    subscriptions: dict[str, dict] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    idempotency: IdempotencyStore = field(default_factory=lambda: IdempotencyStore(IDEMPOTENCY_KEY))

    def __post_init__(self) -> None:
        self.location(self.main_location_id)

    @property
    def id(self) -> str:
        return _ident(self.token, "M")

    @property
    def main_location_id(self) -> str:
        return _ident(self.token, "L", "location:")

    def location(self, location_id: str) -> dict | None:
        """The seller's location; any id starting with L comes into being when first used."""
        if location_id not in self.locations:
            if not _LOCATION_ID.fullmatch(location_id):
                return None
            main = location_id == self.main_location_id
            self.locations[location_id] = {
                "id": location_id, "name": "Default Test Account" if main else f"Location {location_id}",
                "address": {"address_line_1": "1600 Pennsylvania Ave NW", "locality": "Washington",
                            "administrative_district_level_1": "DC", "postal_code": "20500",
                            "country": "US"},
                "timezone": "America/New_York",
                "capabilities": ["CREDIT_CARD_PROCESSING", "AUTOMATIC_TRANSFERS"],
                "status": "ACTIVE", "created_at": stamp(), "merchant_id": self.id, "country": "US",
                "language_code": "en-US", "currency": "USD", "business_name": "Default Test Account",
                "type": "PHYSICAL", "mcc": "7299",
            }
        return self.locations[location_id]

    def info(self) -> dict:
        return {"id": self.id, "business_name": "Default Test Account", "country": "US",
                "language_code": "en-US", "currency": "USD", "status": "ACTIVE",
                "main_location_id": self.main_location_id,
                "created_at": self.locations[self.main_location_id]["created_at"]}


class SquareState(SimState):
    api_prefixes = ("/v2/",)
    durable = {"merchants": dict[str, Merchant]}
    key_source = IDEMPOTENCY_KEY

    def reset(self) -> None:
        super().reset()
        self.merchants: dict[str, Merchant] = {}
        self.rate_limited = 0  # how many of the next /v2 requests answer 429

    def merchant(self, token: str) -> Merchant:
        if token not in self.merchants:
            self.merchants[token] = Merchant(token)
        return self.merchants[token]

    def sign_webhook(self, webhook: Webhook) -> Mapping[str, str]:
        return {"x-square-hmacsha256-signature": sign(webhook.body, webhook.url, webhook.secret),
                "x-square-signature": sign(webhook.body, webhook.url, webhook.secret, "sha1"),
                "square-version": SQUARE_VERSION, "User-Agent": "Square Connect v2"}

    def snapshot(self) -> dict:
        return {"merchants": [{
            "id": m.id, "token_hint": _hint(m.token), "main_location_id": m.main_location_id,
            "locations": list(m.locations.values()), "payments": list(m.payments.values()),
            "refunds": list(m.refunds.values()), "subscriptions": list(m.subscriptions.values()),
            "events": [{"event_id": e["event_id"], "type": e["type"]} for e in m.events],
            "idempotency_keys": list(m.idempotency),
        } for m in self.merchants.values()]}

    def emit(self, merchant: Merchant, type_: str, obj: dict) -> dict:
        """Record an event and send it to the seller's enabled subscriptions that want it."""
        kind = type_.split(".", 1)[0]
        event = {"merchant_id": merchant.id, "type": type_, "event_id": str(uuid.uuid4()),
                 "created_at": stamp(), "data": {"type": kind, "id": obj["id"],
                                                 "object": {kind: copy.deepcopy(obj)}}}
        merchant.events.append(event)
        body = json.dumps(event).encode()
        for sub in merchant.subscriptions.values():
            if sub["enabled"] and type_ in sub["event_types"]:
                self.webhooks.send(Webhook(
                    event["event_id"], type_, sub["notification_url"], body, secret=sub["signature_key"],
                    endpoint_id=sub["id"], wanted=functools.partial(_subscribed, merchant, sub["id"])))
        return event


def _subscribed(merchant: Merchant, subscription_id: str) -> bool:
    sub = merchant.subscriptions.get(subscription_id)  # a deleted one hears no more retries
    return bool(sub and sub["enabled"])


def _hint(token: str) -> str:
    return f"…{token[-4:]}" if len(token) > 8 else "…"


@dataclass
class Call:
    """One authenticated /v2 request as the endpoint functions see it."""

    state: SquareState
    merchant: Merchant
    body: dict
    query: Mapping[str, str]
    path_id: str | None

    def emit(self, type_: str, obj: dict) -> None:
        self.state.emit(self.merchant, type_, obj)

    def location(self, location_id: str | None, field: str = "location_id") -> dict:
        found = self.merchant.location(location_id or self.merchant.main_location_id)
        if found is None:
            raise not_found("location", str(location_id), field)
        return found


CALL = web.RequestKey("call", Call)


def square_state(request: web.Request) -> SquareState:
    return request.app[STATE]  # type: ignore[return-value]  # create_app puts a SquareState


# --- auth, body and idempotency: one middleware in front of every /v2 endpoint --------------
# Faults are applied in front of it by sandbox.common, so an `error` fault records nothing.


def token_from(headers: Mapping[str, str]) -> str:
    scheme, _, credential = headers.get("Authorization", "").partition(" ")
    token = credential.strip() if scheme.lower() == "bearer" else ""
    if not token:
        raise SquareError(401, "UNAUTHORIZED", "Your request did not include an `Authorization` http "
                          "header with an access token. The header value is expected to be of the format "
                          '"Bearer TOKEN" (without quotation marks).')
    if "invalid" in token:  # never echoed back: an error must not carry the credential
        raise SquareError(401, "UNAUTHORIZED", "This request could not be authorized.")
    return token


async def read_body(request: web.Request) -> dict:
    if request.method not in ("POST", "PUT"):
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad("BAD_REQUEST", "Invalid JSON in the request body.") from None
    if not isinstance(body, dict):
        raise bad("EXPECTED_JSON_BODY", "The request body must be a JSON object.")
    return body


def _with_headers(response: web.StreamResponse, request: web.Request) -> web.StreamResponse:
    response.headers["Square-Version"] = request.headers.get("Square-Version", SQUARE_VERSION)
    return response


def fault_error(request: web.Request, status: int) -> web.StreamResponse:
    """The answer of an `error` fault: an outage in front of the API, in Square's shape."""
    code = _FAULT_CODES.get(status, "INTERNAL_SERVER_ERROR")
    return _with_headers(SquareError(status, code, "An internal error occurred (simulated fault).",
                                     category="API_ERROR").response(), request)


def _idempotency_rejection(claim: Claim) -> web.Response:
    if claim.outcome == "mismatch":
        return bad("IDEMPOTENCY_KEY_REUSED", "The idempotency key can only be retried with the same "
                   "request data.", "idempotency_key").response()
    return SquareError(409, "CONFLICT", "A request with this idempotency key is still being "
                       "processed.", field="idempotency_key").response()


@web.middleware
async def square_api(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.startswith("/v2/"):
        return await handler(request)
    state = square_state(request)
    try:
        token = token_from(request.headers)
        if state.rate_limited > 0:
            state.rate_limited -= 1
            raise SquareError(429, "RATE_LIMITED", "Request rate limit exceeded (simulated).")
        body = await read_body(request)
    except SquareError as err:
        return _with_headers(err.response(), request)
    merchant = state.merchant(token)
    request[CALL] = Call(state, merchant, body, request.query, request.match_info.get("id"))

    async def run() -> tuple[web.Response, bool]:
        """The endpoint's answer and whether Square would keep it under the key."""
        try:
            return await handler(request), True
        except SquareError as err:
            return err.response(), err.saved
        except web.HTTPException as exc:  # no such route or method: Square's shape, nothing kept
            if exc.status == 405:
                return bad("METHOD_NOT_ALLOWED", f"{request.method} is not allowed on {request.path}.",
                           status=405).response(), False
            return bad("NOT_FOUND", f"The requested resource was not found: {request.path}",
                       status=404 if exc.status == 404 else exc.status).response(), False
        except Exception:
            log.exception("square_sim endpoint failed")
            return SquareError(500, "INTERNAL_SERVER_ERROR", "An internal error occurred.").response(), True

    key = merchant.idempotency.key_of(request, body)
    response = await merchant.idempotency.run(key, (request.method, request.path, body), new_id(), run,
                                              reject=_idempotency_rejection)
    return _with_headers(response, request)


def get_obj(table: dict, obj_id: str | None, kind: str, field: str | None = None) -> dict:
    if obj_id is None or obj_id not in table:
        raise not_found(kind, str(obj_id), field)
    return table[obj_id]


def _cursor(query: Mapping[str, str]) -> tuple[int, str]:
    """The offset a cursor points at, checked against the query it was made for."""
    fingerprint = hashlib.sha256(json.dumps(sorted((k, v) for k, v in query.items() if k != "cursor"))
                                 .encode()).hexdigest()[:16]
    raw = query.get("cursor")
    if raw is None:
        return 0, fingerprint
    try:
        decoded = json.loads(base64.urlsafe_b64decode(raw.encode() + b"=="))
        offset, made_for = decoded["o"], decoded["q"]
        if not isinstance(offset, int) or offset < 0 or made_for != fingerprint:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise bad("INVALID_CURSOR", "The pagination cursor is not valid for this query.", "cursor") from None
    return offset, fingerprint


def _page(query: Mapping[str, str], rows: list[dict], name: str) -> dict:
    """Square pagination: at most `limit` (default and maximum 100) rows and a cursor while more
    remain; an empty page is `{}`, as Square answers it."""
    raw_limit = query.get("limit")
    limit = 100
    if raw_limit is not None:
        if not re.fullmatch(r"-?\d+", raw_limit):
            raise bad("EXPECTED_INTEGER", "Expected an integer value", "limit")
        limit = int(raw_limit)
        if limit < 1:
            raise bad("VALUE_TOO_LOW", "`limit` must be greater than 0", "limit")
        limit = min(limit, 100)  # Square ignores a larger limit and uses its default
    offset, fingerprint = _cursor(query)
    page = rows[offset:offset + limit]
    answer: dict[str, Any] = {name: page} if page else {}
    if offset + limit < len(rows):
        token = json.dumps({"o": offset + limit, "q": fingerprint}).encode()
        answer["cursor"] = base64.urlsafe_b64encode(token).decode().rstrip("=")
    return answer


def _window(call: Call, rows: list[dict], allowed: set[str]) -> list[dict]:
    """Rows of one location created in [begin_time, end_time), in `sort_order` (DESC default)."""
    query = call.query
    check_known(query, allowed, query=True)
    end = p_time(query, "end_time") or now()
    begin = p_time(query, "begin_time") or end - timedelta(days=365)
    if begin > end:
        raise bad("INVALID_TIME_RANGE", "The begin_time must be before the end_time.", "begin_time")
    order = query.get("sort_order", "DESC")
    if order not in ("ASC", "DESC"):
        raise bad("INVALID_SORT_ORDER", "sort_order must be ASC or DESC.", "sort_order")
    location_id = call.location(query.get("location_id"))["id"]
    kept = [row for row in rows if row["location_id"] == location_id
            and begin <= parse_stamp(row["created_at"]) < end]
    ordered = sorted(enumerate(kept), key=lambda pair: (parse_stamp(pair[1]["created_at"]), pair[0]))
    return [row for _, row in (ordered if order == "ASC" else ordered[::-1])]


# --- locations and merchants ----------------------------------------------------------------


def list_locations(call: Call) -> dict:
    return {"locations": list(call.merchant.locations.values())}


def retrieve_location(call: Call) -> dict:
    if call.path_id == "main":  # Square's alias for the main location
        return {"location": call.location(None)}
    return {"location": call.location(call.path_id, field="location_id")}


def retrieve_merchant(call: Call) -> dict:
    if call.path_id not in ("me", call.merchant.id):
        raise not_found("merchant", str(call.path_id))
    return {"merchant": call.merchant.info()}


# --- payments -------------------------------------------------------------------------------


def _money(amount: int, currency: str) -> dict:
    return {"amount": amount, "currency": currency}


def _touch(obj: dict) -> None:
    obj["updated_at"] = stamp()
    if "version_token" in obj:
        obj["version_token"] = new_id(40)


def create_payment(call: Call) -> dict:
    body = call.body
    check_known(body, CREATE_PAYMENT_FIELDS)
    p_str(body, "idempotency_key", required=True, max_len=45)
    source = p_str(body, "source_id", required=True)
    amount, currency = p_money(body, "amount_money")
    location = call.location(p_str(body, "location_id"))
    if currency != location["currency"]:
        raise bad("UNSUPPORTED_CURRENCY", f"This merchant can only process payments in "
                  f"{location['currency']}, but amount was provided in {currency}.", "amount_money.currency")
    autocomplete = p_bool(body, "autocomplete", True)
    reference_id = p_str(body, "reference_id", max_len=40)
    note = p_str(body, "note", max_len=500)
    customer_id = p_str(body, "customer_id", max_len=191)
    if not source.startswith(("cnon:", "ccof:")):
        raise bad("NOT_FOUND", "Card nonce not found in this `sandbox` application environment.", "source_id")
    decline = DECLINES.get(source)
    created = stamp()
    payment_id = new_id()
    payment: dict[str, Any] = {
        "id": payment_id, "created_at": created, "updated_at": created,
        "amount_money": _money(amount, currency), "total_money": _money(amount, currency),
        "approved_money": _money(0 if decline else amount, currency), "status": "APPROVED",
        "delay_duration": "PT168H", "delay_action": "CANCEL", "source_type": "CARD",
        "card_details": {
            "status": "AUTHORIZED",
            "card": {"card_brand": "VISA", "last_4": "1111", "exp_month": 11, "exp_year": 2030,
                     "fingerprint": "sq-1-" + hashlib.sha256(source.encode()).hexdigest()[:40],
                     "card_type": "CREDIT", "prepaid_type": "NOT_PREPAID", "bin": "411111"},
            "entry_method": "KEYED", "cvv_status": "CVV_ACCEPTED", "avs_status": "AVS_ACCEPTED",
            "statement_description": "SQ *DEFAULT TEST ACCOUNT",
            "card_payment_timeline": {"authorized_at": created},
        },
        "location_id": location["id"], "order_id": new_id(), "reference_id": reference_id, "note": note,
        "customer_id": customer_id, "refund_ids": [], "risk_evaluation": {"created_at": created,
                                                                           "risk_level": "NORMAL"},
        "receipt_number": payment_id[:4], "receipt_url": f"https://squareup.com/receipt/preview/{payment_id}",
        "application_details": {"square_product": "ECOMMERCE_API", "application_id": "sandbox-sq0idb-sim"},
        "version_token": new_id(40),
        "_source_id": source,  # the simulator's own note of the test nonce; stripped from answers
    }
    for name in ("reference_id", "note", "customer_id"):
        if payment[name] is None:
            del payment[name]
    call.merchant.payments[payment_id] = payment
    if decline:
        error = {"category": "PAYMENT_METHOD_ERROR", "code": decline,
                 "detail": f"Authorization error: '{decline}'"}
        payment["status"] = "FAILED"
        payment["card_details"].update(status="FAILED", errors=[error])
        payment["card_details"]["card_payment_timeline"] = {}
        call.emit("payment.created", public(payment))
        failed = SquareError(400, decline, error["detail"], category="PAYMENT_METHOD_ERROR", saved=True,
                             payment=public(payment))
        raise failed
    call.emit("payment.created", public(payment))
    if autocomplete:
        complete(call, payment)
    return {"payment": public(payment)}


def complete(call: Call, payment: dict) -> None:
    payment["status"] = "COMPLETED"
    payment["card_details"]["status"] = "CAPTURED"
    payment["card_details"]["card_payment_timeline"]["captured_at"] = stamp()
    _touch(payment)
    call.emit("payment.updated", public(payment))


def public(obj: dict) -> dict:
    """An object as Square shows it: without the simulator's own `_` notes."""
    return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}


def retrieve_payment(call: Call) -> dict:
    return {"payment": public(get_obj(call.merchant.payments, call.path_id, "payment"))}


def list_payments(call: Call) -> dict:
    rows = _window(call, list(call.merchant.payments.values()), LIST_PAYMENTS_QUERY)
    return _page(call.query, [public(p) for p in rows], "payments")


def complete_payment(call: Call) -> dict:
    check_known(call.body, {"version_token"})
    payment = get_obj(call.merchant.payments, call.path_id, "payment")
    if payment["status"] != "APPROVED":
        raise bad("BAD_REQUEST", f"Payment {payment['id']} is {payment['status']}; only an APPROVED "
                  "payment can be completed.")
    complete(call, payment)
    return {"payment": public(payment)}


def cancel_payment(call: Call) -> dict:
    payment = get_obj(call.merchant.payments, call.path_id, "payment")
    if payment["status"] != "APPROVED":
        raise bad("BAD_REQUEST", f"Payment {payment['id']} is {payment['status']}; only an APPROVED "
                  "payment can be canceled.")
    payment["status"] = "CANCELED"
    payment["card_details"]["status"] = "VOIDED"
    payment["card_details"]["card_payment_timeline"]["voided_at"] = stamp()
    _touch(payment)
    call.emit("payment.updated", public(payment))
    return {"payment": public(payment)}


# --- refunds --------------------------------------------------------------------------------


def _refunded(merchant: Merchant, payment: dict) -> int:
    """What no longer can be refunded: PENDING and COMPLETED refunds."""
    return sum(merchant.refunds[r]["amount_money"]["amount"] for r in payment["refund_ids"]
               if merchant.refunds[r]["status"] in ("PENDING", "COMPLETED"))


def _set_refunded_money(merchant: Merchant, payment: dict) -> None:
    total = _refunded(merchant, payment)
    if total:
        payment["refunded_money"] = _money(total, payment["amount_money"]["currency"])
    else:
        payment.pop("refunded_money", None)


def refund_payment(call: Call) -> dict:
    body, merchant = call.body, call.merchant
    check_known(body, REFUND_FIELDS)
    p_str(body, "idempotency_key", required=True, max_len=45)
    payment_id = p_str(body, "payment_id", required=True)
    amount, currency = p_money(body, "amount_money")
    reason = p_str(body, "reason", max_len=192)
    payment = get_obj(merchant.payments, payment_id, "payment", "payment_id")
    if payment["status"] != "COMPLETED":
        raise bad("PAYMENT_NOT_REFUNDABLE", f"Payment {payment_id} is {payment['status']} and cannot be "
                  "refunded.", "payment_id")
    if currency != payment["amount_money"]["currency"]:
        raise bad("CURRENCY_MISMATCH", "The refund currency must match the payment currency.",
                  "amount_money.currency")
    remaining = payment["amount_money"]["amount"] - _refunded(merchant, payment)
    if amount > remaining:
        raise bad("REFUND_AMOUNT_INVALID", f"The requested refund amount exceeds the amount available "
                  f"to refund ({remaining}).", "amount_money.amount", saved=True)
    pending = payment.get("_source_id") == NONCE_PENDING_REFUND
    created = stamp()
    refund: dict[str, Any] = {
        "id": f"{payment_id}_{new_id(43)}", "status": "PENDING" if pending else "COMPLETED",
        "location_id": payment["location_id"], "unlinked": False, "destination_type": "CARD",
        "amount_money": _money(amount, currency), "payment_id": payment_id,
        "order_id": payment["order_id"], "created_at": created, "updated_at": created,
    }
    if reason is not None:
        refund["reason"] = reason
    merchant.refunds[refund["id"]] = refund
    payment["refund_ids"].append(refund["id"])
    _set_refunded_money(merchant, payment)
    _touch(payment)
    call.emit("refund.created", refund)
    call.emit("payment.updated", public(payment))
    return {"refund": copy.deepcopy(refund)}


class RefundMoveError(ValueError):
    """A refund status change Square would never make."""


def settle_refund(state: SquareState, merchant: Merchant, refund: dict, status: str) -> dict:
    """What Square does to a PENDING refund some time after creating it (the /_sim control)."""
    if refund["status"] != "PENDING":
        raise RefundMoveError(f"refund {refund['id']} is {refund['status']}; only a PENDING refund settles")
    if status not in REFUND_SETTLEMENTS:
        raise RefundMoveError(f"a refund settles as one of {', '.join(REFUND_SETTLEMENTS)}, not {status}")
    refund["status"] = status
    _touch(refund)
    payment = merchant.payments[refund["payment_id"]]
    _set_refunded_money(merchant, payment)  # a rejected or failed refund frees its amount again
    _touch(payment)
    state.emit(merchant, "refund.updated", refund)
    state.emit(merchant, "payment.updated", public(payment))
    return refund


def retrieve_refund(call: Call) -> dict:
    return {"refund": copy.deepcopy(get_obj(call.merchant.refunds, call.path_id, "refund"))}


def list_refunds(call: Call) -> dict:
    status = call.query.get("status")
    rows = [r for r in _window(call, list(call.merchant.refunds.values()), LIST_REFUNDS_QUERY)
            if status in (None, r["status"])]
    return _page(call.query, copy.deepcopy(rows), "refunds")


# --- webhook subscriptions ------------------------------------------------------------------


def create_subscription(call: Call) -> dict:
    body = call.body
    check_known(body, {"idempotency_key", "subscription"})
    p_str(body, "idempotency_key", max_len=45)
    sub = body.get("subscription")
    if sub is None:
        raise bad("MISSING_REQUIRED_PARAMETER", "Field must be set", "subscription")
    if not isinstance(sub, dict):
        raise bad("EXPECTED_OBJECT", "Expected an object", "subscription")
    check_known(sub, SUBSCRIPTION_FIELDS)
    url = p_str(sub, "notification_url", required=True, label="subscription.notification_url")
    if not re.match(r"https?://[^/\s]+", url):
        raise bad("INVALID_VALUE", f"Invalid notification_url: {url}", "subscription.notification_url")
    types = sub.get("event_types")
    if not isinstance(types, list) or not types or not all(
            isinstance(t, str) and _EVENT_TYPE.fullmatch(t) for t in types):
        raise bad("INVALID_VALUE", "event_types must be a non-empty list of event types",
                  "subscription.event_types")
    created = stamp()
    subscription = {
        "id": f"wbhk_{uuid.uuid4().hex}", "name": p_str(sub, "name", label="subscription.name") or "",
        "enabled": p_bool(sub, "enabled", True), "event_types": types, "notification_url": url,
        "api_version": p_str(sub, "api_version", label="subscription.api_version") or SQUARE_VERSION,
        "signature_key": new_id(22), "created_at": created, "updated_at": created,
    }
    call.merchant.subscriptions[subscription["id"]] = subscription
    return {"subscription": copy.deepcopy(subscription)}


def list_subscriptions(call: Call) -> dict:
    # The signature key is shown on create and retrieve, not in lists.
    rows = [{k: v for k, v in sub.items() if k != "signature_key"}
            for sub in call.merchant.subscriptions.values()]
    return {"subscriptions": rows} if rows else {}


def retrieve_subscription(call: Call) -> dict:
    return {"subscription": copy.deepcopy(get_obj(call.merchant.subscriptions, call.path_id,
                                                  "webhook subscription"))}


def delete_subscription(call: Call) -> dict:
    get_obj(call.merchant.subscriptions, call.path_id, "webhook subscription")
    del call.merchant.subscriptions[call.path_id]
    return {}


API_ROUTES: list[tuple[str, str, Callable[[Call], dict]]] = [
    ("GET", "/v2/locations", list_locations),
    ("GET", "/v2/locations/{id}", retrieve_location),
    ("GET", "/v2/merchants/{id}", retrieve_merchant),
    ("POST", "/v2/payments", create_payment),
    ("GET", "/v2/payments", list_payments),
    ("GET", "/v2/payments/{id}", retrieve_payment),
    ("POST", "/v2/payments/{id}/complete", complete_payment),
    ("POST", "/v2/payments/{id}/cancel", cancel_payment),
    ("POST", "/v2/refunds", refund_payment),
    ("GET", "/v2/refunds", list_refunds),
    ("GET", "/v2/refunds/{id}", retrieve_refund),
    ("POST", "/v2/webhooks/subscriptions", create_subscription),
    ("GET", "/v2/webhooks/subscriptions", list_subscriptions),
    ("GET", "/v2/webhooks/subscriptions/{id}", retrieve_subscription),
    ("DELETE", "/v2/webhooks/subscriptions/{id}", delete_subscription),
]


# --- simulator-only controls (the common ones are in sandbox.common) -------------------------


def _merchants(request: web.Request) -> list[Merchant]:
    wanted = request.query.get("merchant")  # a merchant id, as /_sim/state shows them
    return [m for m in square_state(request).merchants.values() if wanted in (None, m.id)]


async def sim_payments(request: web.Request) -> web.Response:
    return json_response({"payments": [public(p) for m in _merchants(request) for p in m.payments.values()]})


async def sim_refunds(request: web.Request) -> web.Response:
    return json_response({"refunds": [r for m in _merchants(request) for r in m.refunds.values()]})


async def sim_refund_status(request: web.Request) -> web.Response:
    state, refund_id = square_state(request), request.match_info["id"]
    found = [(m, m.refunds[refund_id]) for m in state.merchants.values() if refund_id in m.refunds]
    if not found:
        return json_response({"error": f"no such refund: {refund_id}"}, 404)
    try:
        status = (await common.read_json_object(request)).get("status")
        if status not in REFUND_SETTLEMENTS:
            raise ValueError(f'body must be {{"status": {"|".join(REFUND_SETTLEMENTS)}}}')
    except ValueError as exc:
        return json_response({"error": str(exc)}, 400)
    [(merchant, refund)] = found
    try:
        return json_response(settle_refund(state, merchant, refund, status))
    except RefundMoveError as exc:
        return json_response({"error": str(exc)}, 409)


async def sim_rate_limit(request: web.Request) -> web.Response:
    state = square_state(request)
    try:
        count = (await common.read_json_object(request)).get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError('body must be {"count": <non-negative integer>}')
    except ValueError as exc:
        return json_response({"error": str(exc)}, 400)
    state.rate_limited = count
    return json_response({"count": count})


# --- app and runners -------------------------------------------------------------------------


def _endpoint(fn: Callable[[Call], dict]) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        return json_response(fn(request[CALL]))
    return handler


def create_app() -> web.Application:
    app = common.sim_app(SquareState(), error_response=fault_error, middlewares=[square_api])
    for method, path, fn in API_ROUTES:
        app.router.add_route(method, path, _endpoint(fn))
    app.router.add_get("/_sim/payments", sim_payments)
    app.router.add_get("/_sim/refunds", sim_refunds)
    app.router.add_post("/_sim/refunds/{id}/status", sim_refund_status)
    app.router.add_post("/_sim/rate_limit", sim_rate_limit)
    return app


async def start_square_sim(host: str = "127.0.0.1", port: int = 0) -> Running:
    return await common.start_sim(create_app, host, port)


def main(argv: list[str] | None = None) -> None:
    common.main(create_app, name="square_sim", default_port=DEFAULT_PORT, argv=argv)


if __name__ == "__main__":
    main()
