"""Local PayPal REST API simulator: a small aiohttp server that speaks the parts of PayPal's API
the adapter (`shared.processors.paypal`) uses, with PayPal's objects, statuses and errors.

Run it with `python -m sandbox.paypal_sim [--port 12113]`, or in-process with
`start_paypal_sim()` (tests). State is in memory; every client id is its own account (orders,
captures, refunds, webhooks, `PayPal-Request-Id` records). Faults, idempotency records, webhook
delivery (duplicate / delay / reorder), the common `/_sim` controls and the runners come from
`sandbox.common`.

Endpoints (errors are PayPal's `{"name", "message", "debug_id", "details": [{"issue",
"description", ...}], "links"}`; OAuth errors are `{"error", "error_description"}`):
  POST   /v1/oauth2/token                          Basic client_id:secret, grant_type=client_credentials.
                                                   Any id and secret work unless either contains
                                                   "invalid" (401 invalid_client).
  POST   /v2/checkout/orders                       intent CAPTURE, one purchase unit; with
                                                   `payment_source.token` (the payer's approval) the
                                                   order is APPROVED, without it CREATED.
  GET    /v2/checkout/orders/{id}                  with `purchase_units[].payments.captures/refunds`.
  POST   /v2/checkout/orders/{id}/capture          201 with the order and its capture.
  GET    /v2/payments/captures/{id}                with `supplementary_data.related_ids.order_id`.
  POST   /v2/payments/captures/{id}/refund         full (no amount) or partial.
  GET    /v2/payments/refunds/{id}
  GET    /v1/reporting/transactions                Transaction Search: start_date, end_date (at most
                                                   31 days apart, both inclusive), fields, page_size
                                                   (1-500), page, transaction_id, transaction_status.
  POST   /v1/notifications/webhooks                GET lists them, DELETE /{id} removes one.
  POST   /v1/notifications/verify-webhook-signature
         checks the RSA-SHA256 signature of `<transmission_id>|<transmission_time>|<webhook_id>|
         <crc32 of the event>` against the simulator's certificate. The CRC is taken over the exact
         text of `webhook_event` in the request (so the receiver must send the bytes it got) and
         the cert URL must be one this simulator issued. Answers SUCCESS or FAILURE.
Writes take `PayPal-Request-Id`: the same id and body replay the first answer (a replayed 201 is
a 200, as on PayPal); the id with another body is 422 PAYPAL_REQUEST_ID_PREVIOUSLY_USED, and
while the first is still running 422 PREVIOUS_REQUEST_IN_PROGRESS. Validation errors (400) and
unknown ids (404) are not stored, so a corrected retry runs. Writes answer `Prefer:
return=minimal` (id, status, links) unless `Prefer: return=representation` is sent. Access tokens
expire after `expires_in` (an expired or unknown one is 401 invalid_token).

Test values of `payment_source.token.id` (the adapter's `payment_method`):
  paypal-approved          the payer approved: the capture COMPLETES (any other id does the same)
  paypal-declined          the capture is refused: 422 UNPROCESSABLE_ENTITY, INSTRUMENT_DECLINED
  paypal-capture-declined  the capture is created DECLINED (201; reason DECLINED_BY_RISK_FRAUD_FILTERS)
  paypal-pending           the capture is PENDING (PENDING_REVIEW) until the control below settles it
  paypal-pending-refund    captured; its refunds start PENDING (ECHECK) until settled below
Webhooks: PAYMENT.CAPTURE.COMPLETED / DENIED / PENDING on captures (resource_type capture),
PAYMENT.CAPTURE.REFUNDED when a refund completes (resource_type refund), each POSTed with
PAYPAL-TRANSMISSION-ID / -TIME / -SIG, PAYPAL-CERT-URL and PAYPAL-AUTH-ALGO (SHA256withRSA),
signed with a key generated at start whose self-signed certificate the cert URL serves.

Simulator-only controls (besides the common ones in `sandbox.common`):
  GET  /_sim/captures[?account=<client id>]   every capture with its order id and account
  POST /_sim/captures/{id}/status  {"status": "COMPLETED"|"DECLINED"}     settles a PENDING capture
  POST /_sim/refunds/{id}/status   {"status": "COMPLETED"|"FAILED"|"CANCELLED"} settles a PENDING
                                   refund (a failed or cancelled one gives its amount back)
  GET|POST /_sim/oauth             {"expires_in": seconds >= 0 (for new tokens; 0 = dead on
                                   arrival), "revoke": true (every token issued so far is refused)}
  GET  /_sim/certs/{cert_id}       the webhook signing certificate (PEM)

Deliberately not simulated: the payer's approval pages (a token stands for it), intent
AUTHORIZE, several purchase units, card and wallet payment sources, fees and balances
(`seller_receivable_breakdown`), disputes and reversals, invoice-id uniqueness, Transaction
Search's reporting lag (rows are there at once), webhook event types other than the capture ones,
refund events other than REFUNDED, rate limits, and PayPal's 3-day retry schedule.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import logging
import re
import secrets
import string
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Callable

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sandbox import common
from sandbox.common import (
    STATE,
    Claim,
    IdempotencyStore,
    Running,
    SimState,
    Webhook,
    header_key,
    json_response,
)

log = logging.getLogger("paypal_sim")
DEFAULT_PORT = 12113
AUTH_ALGO = "SHA256withRSA"
DEFAULT_TOKEN_LIFETIME = 32_400  # PayPal's usual nine hours
SCOPES = ("https://uri.paypal.com/services/payments/payment https://uri.paypal.com/services/payments/refund "
          "https://uri.paypal.com/services/reporting/search/read "
          "https://uri.paypal.com/services/applications/webhooks")
# PayPal's currencies; HUF, JPY and TWD take no decimals on PayPal.
CURRENCIES = frozenset("AUD BRL CAD CHF CNY CZK DKK EUR GBP HKD HUF ILS JPY MXN MYR NOK NZD PHP PLN SEK SGD "
                       "THB TWD USD".split())
ZERO_DECIMAL = frozenset({"HUF", "JPY", "TWD"})
SEARCH_MAX_RANGE = timedelta(days=31)
WEBHOOK_LIMIT = 10

APPROVED, DECLINED = "paypal-approved", "paypal-declined"
CAPTURE_DECLINED, PENDING = "paypal-capture-declined", "paypal-pending"
PENDING_REFUND = "paypal-pending-refund"

EVENT_TYPES = {
    "PAYMENT.CAPTURE.COMPLETED": "A payment capture completes.",
    "PAYMENT.CAPTURE.DENIED": "A payment capture is denied.",
    "PAYMENT.CAPTURE.PENDING": "The state of a payment capture changes to pending.",
    "PAYMENT.CAPTURE.REFUNDED": "A merchant refunds a payment capture.",
    "PAYMENT.CAPTURE.REVERSED": "PayPal reverses a payment capture.",
    "CHECKOUT.ORDER.APPROVED": "A buyer approved a checkout order.",
    "CHECKOUT.ORDER.COMPLETED": "A checkout order is processed.",
    "*": "ALL",
}
CAPTURE_EVENT = {"COMPLETED": "PAYMENT.CAPTURE.COMPLETED", "DECLINED": "PAYMENT.CAPTURE.DENIED",
                 "PENDING": "PAYMENT.CAPTURE.PENDING"}
# Capture statuses -> Transaction Search's one-letter status; refund statuses likewise.
CAPTURE_TXN_STATUS = {"COMPLETED": "S", "PENDING": "P", "DECLINED": "D", "FAILED": "D",
                      "PARTIALLY_REFUNDED": "F", "REFUNDED": "V"}
REFUND_TXN_STATUS = {"COMPLETED": "S", "PENDING": "P", "FAILED": "D", "CANCELLED": "D"}
_ID_CHARS = string.ascii_uppercase + string.digits
_REPLAYED = "X-Paypal-Sim-Replayed"  # internal marker, removed before answering


def pp_id(length: int = 17) -> str:
    """An id shaped like PayPal's ("5O190127TN364715T"): uppercase letters and digits."""
    while True:
        value = "".join(secrets.choice(_ID_CHARS) for _ in range(length))
        if not value.isdigit():
            return value


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def money(amount: Decimal, currency: str) -> dict[str, str]:
    value = f"{amount:.0f}" if currency in ZERO_DECIMAL else f"{amount:.2f}"  # Decimal formats exactly
    return {"currency_code": currency, "value": value}


def money_value(obj: dict[str, str]) -> Decimal:
    return Decimal(obj["value"])


def signature_message(transmission_id: str, transmission_time: str, webhook_id: str, event: bytes) -> bytes:
    """What PayPal signs: `<transmission_id>|<transmission_time>|<webhook_id>|<crc32 as decimal>`."""
    return f"{transmission_id}|{transmission_time}|{webhook_id}|{zlib.crc32(event)}".encode()


_WS = re.compile(r"[ \t\n\r]*")


def raw_member(text: str, name: str) -> str | None:
    """The exact text of the top-level member `name` of the JSON object `text` (already known to
    parse), so a signature can be checked over the bytes the caller sent, not a re-encoding."""
    decoder = json.JSONDecoder()
    found = None
    i = _WS.match(text, 0).end()
    if text[i:i + 1] != "{":
        return None
    i = _WS.match(text, i + 1).end()
    if text[i:i + 1] == "}":
        return None
    while True:
        if text[i:i + 1] != '"':
            return None
        key, i = json.decoder.scanstring(text, i + 1)
        i = _WS.match(text, i).end()
        if text[i:i + 1] != ":":
            return None
        i = _WS.match(text, i + 1).end()
        _, end = decoder.raw_decode(text, i)
        if key == name:
            found = text[i:end]  # the last one wins, as in json.loads
        i = _WS.match(text, end).end()
        if text[i:i + 1] == ",":
            i = _WS.match(text, i + 1).end()
        elif text[i:i + 1] == "}":
            return found
        else:
            return None


# --- errors ---------------------------------------------------------------------------------


class PayPalError(Exception):
    """An error answered in PayPal's shape. `saved=False` marks failures before the request did
    anything (validation, unknown ids): no idempotent answer is kept for them."""

    def __init__(self, status: int, name: str, message: str, *, details: list[dict] | None = None,
                 saved: bool = True, body: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.saved = status, saved
        if body is None:
            body = {"name": name, "message": message, "debug_id": pp_id(13).lower()}
            if details:
                body["details"] = details
            issue = details[0]["issue"] if details else name
            body["links"] = [{"href": f"https://developer.paypal.com/api/rest/reference/orders/v2/errors/"
                                      f"#{issue}", "rel": "information_link", "method": "GET"}]
        self.body = body

    def response(self) -> web.Response:
        return json_response(self.body, self.status)


def invalid(field_: str, issue: str, description: str, *, value: Any = None,
            location: str = "body") -> PayPalError:
    detail = {"field": field_, "location": location, "issue": issue, "description": description}
    if value is not None:
        detail["value"] = str(value)
    return PayPalError(400, "INVALID_REQUEST", "Request is not well-formed, syntactically incorrect, or "
                       "violates schema.", details=[detail], saved=False)


def unprocessable(issue: str, description: str, *, field_: str | None = None,
                  saved: bool = True) -> PayPalError:
    detail = {"issue": issue, "description": description}
    if field_:
        detail = {"field": field_, "location": "body", **detail}
    return PayPalError(422, "UNPROCESSABLE_ENTITY", "The requested action could not be performed, "
                       "semantically incorrect, or failed business validation.", details=[detail],
                       saved=saved)


def not_found() -> PayPalError:
    return PayPalError(404, "RESOURCE_NOT_FOUND", "The specified resource does not exist.", details=[
        {"issue": "INVALID_RESOURCE_ID", "description": "Specified resource ID does not exist. Please check "
         "the resource ID and try again."}], saved=False)


def validation_error(field_: str, issue: str) -> PayPalError:
    """The v1 notifications APIs' shape: VALIDATION_ERROR with a prose issue."""
    return PayPalError(400, "VALIDATION_ERROR", "Invalid data provided", details=[
        {"field": field_, "issue": issue}], saved=False)


def parse_money(obj: Any, where: str, *, required: bool = True) -> tuple[Decimal, str] | None:
    """A money object from a request, exact, or PayPal's error naming the field."""
    if obj is None and not required:
        return None
    if not isinstance(obj, dict):
        raise invalid(where, "MISSING_REQUIRED_PARAMETER" if obj is None else "INVALID_PARAMETER_SYNTAX",
                      "A required field / parameter is missing." if obj is None
                      else "The value of a field does not conform to the expected format.")
    currency, value = obj.get("currency_code"), obj.get("value")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise invalid(f"{where}/currency_code", "INVALID_PARAMETER_SYNTAX",
                      "The value of a field does not conform to the expected format.", value=currency)
    if currency not in CURRENCIES:
        raise unprocessable("CURRENCY_NOT_SUPPORTED", "Currency code is invalid or is not currently "
                            "supported.", field_=f"{where}/currency_code", saved=False)
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,10}(\.[0-9]+)?", value):
        raise invalid(f"{where}/value", "INVALID_PARAMETER_SYNTAX",
                      "The value of a field does not conform to the expected format.", value=value)
    decimals = len(value.partition(".")[2])
    if decimals and currency in ZERO_DECIMAL:
        raise invalid(f"{where}/value", "DECIMALS_NOT_SUPPORTED", "Currency code does not support "
                      "decimals.", value=value)
    if decimals > 2:
        raise invalid(f"{where}/value", "DECIMAL_PRECISION", "If the currency supports decimals, only "
                      "two decimal place precision is supported.", value=value)
    amount = Decimal(value)
    if amount <= 0:
        raise invalid(f"{where}/value", "CANNOT_BE_ZERO_OR_NEGATIVE", "Must be greater than zero.",
                      value=value)
    return amount, currency


def opt_str(body: dict, name: str, where: str, max_len: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise invalid(f"{where}/{name}", "INVALID_STRING_LENGTH", f"The value of a field is either too "
                      f"short or too long (1 to {max_len} characters).", value=value)
    return value


# --- state ----------------------------------------------------------------------------------

REQUEST_ID = header_key("PayPal-Request-Id", methods=("POST",))


@dataclass
class Account:
    """One REST app (client id) and the merchant account behind it."""

    client_id: str
    orders: dict[str, dict] = field(default_factory=dict)
    captures: dict[str, dict] = field(default_factory=dict)
    refunds: dict[str, dict] = field(default_factory=dict)
    webhooks: dict[str, dict] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    tokens_issued: int = 0
    idempotency: IdempotencyStore = field(default_factory=lambda: IdempotencyStore(REQUEST_ID))

    @property
    def _digest(self) -> str:
        return hashlib.sha256(self.client_id.encode()).hexdigest().upper()

    @property
    def app_id(self) -> str:
        return f"APP-{self._digest[:17]}"

    @property
    def merchant_id(self) -> str:
        return self._digest[17:30]

    @property
    def payer_id(self) -> str:
        return self._digest[30:43]


@dataclass
class PayPalWebhook(Webhook):
    """A delivery plus the certificate URL its signature headers name."""

    cert_url: str = ""


class PayPalState(SimState):
    api_prefixes = ("/v1/", "/v2/")
    # Access tokens too: a client keeps using the one it was given until it expires.
    durable = {"accounts": dict[str, Account], "tokens": dict[str, tuple[str, float]]}
    key_source = REQUEST_ID

    def __init__(self) -> None:
        # The signing key and its certificate outlive /_sim/reset: a receiver may have cached it.
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert_id = f"CERT-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:8]}"
        self.cert_pem = _self_signed(self.key)
        self.cert_urls: set[str] = set()
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.accounts: dict[str, Account] = {}
        self.tokens: dict[str, tuple[str, float]] = {}  # access token -> (client id, expires at)
        self.token_lifetime = DEFAULT_TOKEN_LIFETIME

    def dump(self) -> bytes:
        now = time.time()  # an expired token is refused whether kept or not: not kept
        self.tokens = {token: entry for token, entry in self.tokens.items() if entry[1] > now}
        return super().dump()

    def account(self, client_id: str) -> Account:
        return self.accounts.setdefault(client_id, Account(client_id))

    def cert_url(self, origin: str) -> str:
        url = f"{origin}/_sim/certs/{self.cert_id}"
        self.cert_urls.add(url)
        return url

    def sign_webhook(self, webhook: Webhook) -> dict[str, str]:
        # Signed afresh for every attempt, like every PayPal transmission.
        transmission_id, transmission_time = str(uuid.uuid4()), now_iso()
        message = signature_message(transmission_id, transmission_time, webhook.secret, webhook.body)
        signature = self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return {
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-TIME": transmission_time,
            "PAYPAL-TRANSMISSION-SIG": base64.b64encode(signature).decode(),
            "PAYPAL-CERT-URL": getattr(webhook, "cert_url", ""),
            "PAYPAL-AUTH-ALGO": AUTH_ALGO,
            "User-Agent": "PayPal/AUHD-214.0-58443347",
        }

    def signature_valid(self, *, auth_algo: str, cert_url: str, transmission_id: str,
                        transmission_time: str, transmission_sig: str, webhook_id: str,
                        event: bytes) -> bool:
        if auth_algo != AUTH_ALGO or cert_url not in self.cert_urls:
            return False
        try:
            signature = base64.b64decode(transmission_sig, validate=True)
            self.key.public_key().verify(signature, signature_message(
                transmission_id, transmission_time, webhook_id, event), padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, CryptoInvalidSignature):
            return False
        return True

    def emit(self, account: Account, event_type: str, resource_type: str, resource: dict,
             origin: str) -> dict:
        """Record an event and deliver it to the account's webhooks subscribed to its type."""
        value = resource["amount"]
        event_id = f"WH-{pp_id()}-{pp_id()}"
        event = {
            "id": event_id, "event_version": "1.0", "create_time": now_iso(),
            "resource_type": resource_type, "resource_version": "2.0", "event_type": event_type,
            "summary": f"{EVENT_TYPES.get(event_type, event_type)} "
                       f"({value['value']} {value['currency_code']})",
            "resource": copy.deepcopy(resource),
            "links": [{"href": f"{origin}/v1/notifications/webhooks-events/{event_id}", "rel": "self",
                       "method": "GET"},
                      {"href": f"{origin}/v1/notifications/webhooks-events/{event_id}/resend",
                       "rel": "resend", "method": "POST"}],
        }
        account.events.append(event)
        body = json.dumps(event, separators=(",", ":")).encode()  # compact, as PayPal sends it
        for hook in account.webhooks.values():
            names = {t["name"] for t in hook["event_types"]}
            if event_type in names or "*" in names:
                self.webhooks.send(PayPalWebhook(
                    event_id, event_type, hook["url"], body, secret=hook["id"], endpoint_id=hook["id"],
                    wanted=functools.partial(_webhook_exists, account, hook["id"]),
                    cert_url=self.cert_url(origin)))
        return event

    def snapshot(self) -> dict:
        return {"token_lifetime": self.token_lifetime, "accounts": [{
            "client_id": a.client_id, "app_id": a.app_id, "merchant_id": a.merchant_id,
            "tokens_issued": a.tokens_issued, "orders": list(a.orders.values()),
            "captures": list(a.captures.values()), "refunds": list(a.refunds.values()),
            "webhooks": list(a.webhooks.values()),
            "events": [{"id": e["id"], "event_type": e["event_type"]} for e in a.events],
            "idempotency_keys": list(a.idempotency),
        } for a in self.accounts.values()]}


def _webhook_exists(account: Account, webhook_id: str) -> bool:
    return webhook_id in account.webhooks  # a deleted webhook hears no more retries


def _self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PayPal simulator"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "messageverificationcerts.paypal-sim.local")])
    start = datetime.now(UTC) - timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + timedelta(days=366)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def paypal_state(request: web.Request) -> PayPalState:
    return request.app[STATE]  # type: ignore[return-value]  # create_app puts a PayPalState


# --- requests: OAuth, bearer auth, JSON bodies and PayPal-Request-Id in one middleware ------


@dataclass
class Call:
    """One authenticated API request as the endpoint functions see it."""

    state: PayPalState
    account: Account
    body: dict
    text: str  # the body as sent (verify-webhook-signature checks bytes, not a re-encoding)
    query: dict[str, str]
    path_id: str | None
    origin: str
    representation: bool

    def href(self, path: str) -> str:
        return f"{self.origin}{path}"

    def answer(self, obj: dict) -> dict:
        """`Prefer: return=minimal` (PayPal's default for writes): id, status and links only."""
        if self.representation:
            return copy.deepcopy(obj)
        return {k: copy.deepcopy(obj[k]) for k in ("id", "status", "links") if k in obj}


CALL = web.RequestKey("call", Call)


def fault_error(request: web.Request, status: int) -> web.StreamResponse:
    """The answer of an `error` fault: an outage in front of the API, in PayPal's shape."""
    name = "SERVICE_UNAVAILABLE" if status == 503 else "INTERNAL_SERVER_ERROR"
    return PayPalError(status, name, "An internal server error has occurred.").response()


def _bearer(state: PayPalState, headers) -> Account:
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise PayPalError(401, "AUTHENTICATION_FAILURE", "Authentication failed due to invalid "
                          "authentication credentials or a missing Authorization header.", saved=False)
    entry = state.tokens.get(token.strip())
    if entry is None:
        raise PayPalError(401, "", "", saved=False, body={
            "error": "invalid_token", "error_description": "Token signature verification failed"})
    client_id, expires_at = entry
    if time.time() >= expires_at:
        raise PayPalError(401, "", "", saved=False, body={
            "error": "invalid_token", "error_description": "Access Token not found in cache"})
    return state.account(client_id)


async def _read_body(request: web.Request) -> tuple[dict, str]:
    raw = await request.read()
    text = raw.decode("utf-8", errors="replace")
    if request.method not in ("POST", "PATCH", "PUT") or not raw.strip():
        return {}, text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise invalid("/", "MALFORMED_REQUEST_JSON", "The request JSON is not well formed.")
    return body, text


def _idempotency_rejection(claim: Claim) -> web.Response:
    if claim.outcome == "mismatch":
        return unprocessable("PAYPAL_REQUEST_ID_PREVIOUSLY_USED", "The PayPal-Request-Id has already "
                             "been used for another request.").response()
    return unprocessable("PREVIOUS_REQUEST_IN_PROGRESS", "A previous request on this resource is "
                         "currently in progress. Please wait for some time and try again.").response()


@web.middleware
async def paypal_api(request: web.Request, handler) -> web.StreamResponse:
    if not request.path.startswith(("/v1/", "/v2/")) or request.path == "/v1/oauth2/token":
        return await handler(request)
    state = paypal_state(request)
    try:
        account = _bearer(state, request.headers)
        body, text = await _read_body(request)
    except PayPalError as err:
        return err.response()
    request[CALL] = Call(state, account, body, text, dict(request.query), request.match_info.get("id"),
                         f"{request.scheme}://{request.host}",
                         "return=representation" in request.headers.get("Prefer", ""))

    async def run() -> tuple[web.Response, bool]:
        """The endpoint's answer and whether PayPal would keep it under the request id."""
        try:
            return await handler(request), True
        except PayPalError as err:
            return err.response(), err.saved
        except web.HTTPException as exc:  # no such route
            return PayPalError(exc.status if exc.status in (404, 405) else 404, "RESOURCE_NOT_FOUND",
                               "The specified resource does not exist.", saved=False).response(), False
        except Exception:
            log.exception("paypal_sim endpoint failed")
            return PayPalError(500, "INTERNAL_SERVER_ERROR", "An internal server error has occurred."
                               ).response(), False

    key = account.idempotency.key_of(request, body)
    response = await account.idempotency.run(key, (request.method, request.path, body), key or "", run,
                                             reject=_idempotency_rejection,
                                             replay_headers=lambda record: {_REPLAYED: "1"})
    if response.headers.pop(_REPLAYED, None) and response.status == 201:
        response.set_status(200)  # "a successful response to an idempotent request returns 200 OK"
    response.headers["Paypal-Debug-Id"] = pp_id(13).lower()
    return response


async def oauth_token(request: web.Request) -> web.Response:
    """Client credentials: Basic client_id:secret. Every client id is its own account."""
    state = paypal_state(request)
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    client_id = secret = ""
    if scheme.lower() == "basic":
        try:
            client_id, _, secret = base64.b64decode(credential.strip(), validate=True).decode().partition(":")
        except ValueError:
            client_id = secret = ""
    if not client_id or not secret or "invalid" in client_id or "invalid" in secret:
        return json_response({"error": "invalid_client", "error_description": "Client Authentication failed"},
                             401)
    form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
    grant = form.get("grant_type")
    if grant != "client_credentials":
        return json_response({"error": "unsupported_grant_type", "error_description":
                              "Grant Type is NULL" if not grant else f"Grant Type {grant} is not supported"},
                             400)
    account = state.account(client_id)
    account.tokens_issued += 1
    token = "A21AA" + common.random_token(80)
    state.tokens[token] = (client_id, time.time() + state.token_lifetime)
    return json_response({"scope": SCOPES, "access_token": token, "token_type": "Bearer",
                          "app_id": account.app_id, "expires_in": state.token_lifetime,
                          "nonce": f"{now_iso()}{common.random_token(43)}"})


# --- orders and captures ------------------------------------------------------------------


def _get(table: dict[str, dict], obj_id: str | None) -> dict:
    if obj_id not in table:
        raise not_found()
    return table[obj_id]  # type: ignore[index]


def create_order(call: Call) -> tuple[int, dict]:
    body = call.body
    intent = body.get("intent")
    if intent is None:
        raise invalid("/intent", "MISSING_REQUIRED_PARAMETER", "A required field / parameter is missing.")
    if intent not in ("CAPTURE", "AUTHORIZE"):
        raise invalid("/intent", "INVALID_PARAMETER_VALUE", "The value of a field is invalid.", value=intent)
    if intent == "AUTHORIZE":
        raise invalid("/intent", "INVALID_PARAMETER_VALUE", "intent AUTHORIZE is not simulated.",
                      value=intent)
    units = body.get("purchase_units")
    if not isinstance(units, list) or not units:
        raise invalid("/purchase_units", "MISSING_REQUIRED_PARAMETER", "A required field / parameter is "
                      "missing.")
    if len(units) > 1 or not isinstance(units[0], dict):
        raise invalid("/purchase_units", "INVALID_PARAMETER_VALUE", "One purchase unit (an object) is "
                      "all this simulator takes.")
    given = units[0]
    where = f"/purchase_units/@reference_id=='{given.get('reference_id', 'default')}'"
    amount, currency = parse_money(given.get("amount"), f"{where}/amount")  # type: ignore[misc]
    unit: dict[str, Any] = {"reference_id": opt_str(given, "reference_id", where, 256) or "default",
                            "amount": money(amount, currency)}
    for name, limit in (("custom_id", 127), ("invoice_id", 127), ("description", 127)):
        if (value := opt_str(given, name, where, limit)) is not None:
            unit[name] = value
    payee = given.get("payee")
    unit["payee"] = {"merchant_id": call.account.merchant_id,
                     "email_address": f"merchant-{call.account.merchant_id.lower()}@business.example.com"}
    if isinstance(payee, dict) and isinstance(payee.get("merchant_id"), str):
        unit["payee"] = {"merchant_id": payee["merchant_id"]}
    instruction = given.get("payment_instruction")
    if instruction is not None:
        fees = instruction.get("platform_fees") if isinstance(instruction, dict) else None
        if not isinstance(fees, list):
            raise invalid(f"{where}/payment_instruction/platform_fees", "INVALID_PARAMETER_SYNTAX",
                          "The value of a field does not conform to the expected format.")
        total = Decimal(0)
        for i, fee in enumerate(fees):
            fee_amount, fee_currency = parse_money((fee or {}).get("amount"),  # type: ignore[misc]
                                                   f"{where}/payment_instruction/platform_fees/{i}/amount")
            if fee_currency != currency:
                raise unprocessable("PLATFORM_FEE_CURRENCY_MISMATCH", "The platform fee currency must "
                                    "match the purchase unit currency.", saved=False)
            total += fee_amount
        if total > amount:
            raise unprocessable("INVALID_PLATFORM_FEES_AMOUNT", "The platform fees cannot exceed the "
                                "purchase unit amount.", saved=False)
        unit["payment_instruction"] = {"platform_fees": [{"amount": money(money_value(f["amount"]), currency)}
                                                         for f in fees]}
    source = body.get("payment_source")
    token = None
    if source is not None:
        token = source.get("token") if isinstance(source, dict) else None
        if not isinstance(token, dict) or set(source) != {"token"}:
            raise invalid("/payment_source", "INVALID_PARAMETER_VALUE", "Only payment_source.token is "
                          "simulated.")
        if not isinstance(token.get("id"), str) or not token["id"]:
            raise invalid("/payment_source/token/id", "MISSING_REQUIRED_PARAMETER", "A required field / "
                          "parameter is missing.")
        if token.get("type") != "BILLING_AGREEMENT":
            raise invalid("/payment_source/token/type", "INVALID_PARAMETER_VALUE", "The value of a field "
                          "is invalid.", value=token.get("type"))
    order_id = pp_id()
    unit["payments"] = {"captures": [], "refunds": []}
    links = [{"href": call.href(f"/v2/checkout/orders/{order_id}"), "rel": "self", "method": "GET"}]
    if token is None:  # the payer still has to approve on PayPal's pages (not simulated)
        links.append({"href": f"https://www.sandbox.paypal.com/checkoutnow?token={order_id}",
                      "rel": "approve", "method": "GET"})
    links.append({"href": call.href(f"/v2/checkout/orders/{order_id}/capture"), "rel": "capture",
                  "method": "POST"})
    stamp = now_iso()
    order = {"id": order_id, "intent": "CAPTURE", "status": "APPROVED" if token else "CREATED",
             "purchase_units": [unit], "create_time": stamp, "update_time": stamp, "links": links}
    if token is not None:
        order["payment_source"] = {"token": {"id": token["id"], "type": "BILLING_AGREEMENT"}}
        order["payer"] = {"payer_id": call.account.payer_id, "email_address": "payer@personal.example.com",
                          "name": {"given_name": "Sim", "surname": "Payer"}}
    call.account.orders[order_id] = order
    return 201, call.answer(order)


def get_order(call: Call) -> tuple[int, dict]:
    return 200, copy.deepcopy(_get(call.account.orders, call.path_id))


def capture_order(call: Call) -> tuple[int, dict]:
    order = _get(call.account.orders, call.path_id)
    if order["status"] == "COMPLETED":
        raise unprocessable("ORDER_ALREADY_CAPTURED", "Order already captured. If 'intent=CAPTURE' only one "
                            "capture per order is allowed.")
    if order["status"] != "APPROVED":
        raise unprocessable("ORDER_NOT_APPROVED", "Payer has not yet approved the Order for payment. Please "
                            "redirect the payer to the 'rel':'approve' url returned as part of the HATEOAS "
                            "links within the Create Order call.")
    funding = order["payment_source"]["token"]["id"]
    if funding == DECLINED:
        raise unprocessable("INSTRUMENT_DECLINED", "The instrument presented  was either declined by the "
                            "processor or bank, or it can't be used for this payment.")
    unit = order["purchase_units"][0]
    status, reason = {CAPTURE_DECLINED: ("DECLINED", "DECLINED_BY_RISK_FRAUD_FILTERS"),
                      PENDING: ("PENDING", "PENDING_REVIEW")}.get(funding, ("COMPLETED", None))
    capture_id, stamp = pp_id(), now_iso()
    capture: dict[str, Any] = {"id": capture_id, "status": status}
    if reason:
        capture["status_details"] = {"reason": reason}
    capture.update({
        "amount": dict(unit["amount"]), "final_capture": True,
        "seller_protection": {"status": "ELIGIBLE",
                              "dispute_categories": ["ITEM_NOT_RECEIVED", "UNAUTHORIZED_TRANSACTION"]},
        **{k: unit[k] for k in ("custom_id", "invoice_id") if k in unit},
        "links": [{"href": call.href(f"/v2/payments/captures/{capture_id}"), "rel": "self", "method": "GET"},
                  {"href": call.href(f"/v2/payments/captures/{capture_id}/refund"), "rel": "refund",
                   "method": "POST"},
                  {"href": call.href(f"/v2/checkout/orders/{order['id']}"), "rel": "up", "method": "GET"}],
        "create_time": stamp, "update_time": stamp,
        "supplementary_data": {"related_ids": {"order_id": order["id"]}},
    })
    call.account.captures[capture_id] = capture
    unit["payments"]["captures"].append(capture)  # the same object: later changes show in the order
    order.update(status="COMPLETED", update_time=stamp)
    order["links"] = [order["links"][0]]
    call.state.emit(call.account, CAPTURE_EVENT[status], "capture", capture, call.origin)
    return 201, call.answer(order)


def get_capture(call: Call) -> tuple[int, dict]:
    return 200, copy.deepcopy(_get(call.account.captures, call.path_id))


# --- refunds --------------------------------------------------------------------------------


def _committed(account: Account, capture_id: str) -> Decimal:
    """Refunded or being refunded: pending refunds count, so they cannot be refunded twice."""
    return sum((money_value(r["amount"]) for r in account.refunds.values()
                if _refund_capture(r) == capture_id and r["status"] in ("PENDING", "COMPLETED")), Decimal(0))


def _refund_capture(refund: dict) -> str:
    up = next(link["href"] for link in refund["links"] if link["rel"] == "up")
    return up.rstrip("/").rsplit("/", 1)[-1]


def _restate_capture(account: Account, capture: dict) -> None:
    """A capture's status follows its completed refunds."""
    if capture["status"] not in ("COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"):
        return
    done = sum((money_value(r["amount"]) for r in account.refunds.values()
                if _refund_capture(r) == capture["id"] and r["status"] == "COMPLETED"), Decimal(0))
    total = money_value(capture["amount"])
    capture["status"] = "COMPLETED" if done == 0 else "REFUNDED" if done >= total else "PARTIALLY_REFUNDED"
    capture["update_time"] = now_iso()


def refund_capture(call: Call) -> tuple[int, dict]:
    account, body = call.account, call.body
    capture = _get(account.captures, call.path_id)
    if capture["status"] == "PENDING":
        raise unprocessable("PENDING_CAPTURE", "Cannot initiate a refund as the capture is pending. Capture "
                            "is typically pending when the payer has funded the transaction by using an "
                            "e-check or bank account.")
    if capture["status"] in ("DECLINED", "FAILED"):
        raise unprocessable("REFUND_NOT_ALLOWED", "Refund cannot be issued for this transaction.")
    total, currency = money_value(capture["amount"]), capture["amount"]["currency_code"]
    remaining = total - _committed(account, capture["id"])
    parsed = parse_money(body.get("amount"), "/amount", required=False)
    if parsed is not None and parsed[1] != currency:
        raise unprocessable("REFUND_CAPTURE_CURRENCY_MISMATCH", "Refund must be in the same currency as the "
                            "capture.", field_="/amount/currency_code")
    if remaining <= 0:
        raise unprocessable("CAPTURE_FULLY_REFUNDED", "The capture has already been fully refunded.")
    amount = remaining if parsed is None else parsed[0]
    if amount > remaining:
        raise unprocessable("REFUND_AMOUNT_EXCEEDED", "The refund amount must be less than or equal to the "
                            "capture amount that has not yet been refunded.", field_="/amount/value")
    extra = {k: v for k, v in (("custom_id", opt_str(body, "custom_id", "", 127)),
                               ("invoice_id", opt_str(body, "invoice_id", "", 127)),
                               ("note_to_payer", opt_str(body, "note_to_payer", "", 255))) if v is not None}
    order = account.orders[capture["supplementary_data"]["related_ids"]["order_id"]]
    pending = order["payment_source"]["token"]["id"] == PENDING_REFUND
    refund_id, stamp = pp_id(), now_iso()
    refund: dict[str, Any] = {"id": refund_id, "amount": money(amount, currency),
                              "status": "PENDING" if pending else "COMPLETED"}
    if pending:
        refund["status_details"] = {"reason": "ECHECK"}
    refund.update({
        **extra,
        "seller_payable_breakdown": {"gross_amount": money(amount, currency),
                                     "net_amount": money(amount, currency),
                                     "total_refunded_amount": money(total - remaining + amount, currency)},
        "links": [{"href": call.href(f"/v2/payments/refunds/{refund_id}"), "rel": "self", "method": "GET"},
                  {"href": call.href(f"/v2/payments/captures/{capture['id']}"), "rel": "up",
                   "method": "GET"}],
        "create_time": stamp, "update_time": stamp,
    })
    account.refunds[refund_id] = refund
    order["purchase_units"][0]["payments"]["refunds"].append(refund)
    _restate_capture(account, capture)
    if refund["status"] == "COMPLETED":
        call.state.emit(account, "PAYMENT.CAPTURE.REFUNDED", "refund", refund, call.origin)
    return 201, call.answer(refund)


def get_refund(call: Call) -> tuple[int, dict]:
    return 200, copy.deepcopy(_get(call.account.refunds, call.path_id))


# --- transaction search ---------------------------------------------------------------------


def _search_time(query: dict[str, str], name: str) -> datetime:
    raw = query.get(name)
    if not raw:
        raise invalid(name, "MISSING_REQUIRED_PARAMETER", "A required field / parameter is missing.",
                      location="query")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise invalid(name, "INVALID_PARAMETER_SYNTAX", "Dates are in Internet date and time format, "
                      "with a time zone.", value=raw, location="query")
    return moment


def _query_int(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not low <= int(raw) <= high:
        raise invalid(name, "INVALID_PARAMETER_VALUE", f"{name} must be from {low} to {high}.", value=raw,
                      location="query")
    return int(raw)


def _transactions(account: Account) -> list[dict]:
    """Every capture (T0006, PayPal Checkout APIs) and refund (T1107) as Transaction Search rows."""
    rows = []
    for capture in account.captures.values():
        rows.append({
            "paypal_account_id": account.payer_id, "transaction_id": capture["id"],
            "transaction_event_code": "T0006", "transaction_initiation_date": capture["create_time"],
            "transaction_updated_date": capture["update_time"], "transaction_amount": dict(capture["amount"]),
            "transaction_status": CAPTURE_TXN_STATUS[capture["status"]], "protection_eligibility": "01",
            **({"custom_field": capture["custom_id"]} if "custom_id" in capture else {}),
            **({"invoice_id": capture["invoice_id"]} if "invoice_id" in capture else {}),
        })
    for refund in account.refunds.values():
        rows.append({
            "paypal_account_id": account.payer_id, "transaction_id": refund["id"],
            "paypal_reference_id": _refund_capture(refund), "paypal_reference_id_type": "TXN",
            "transaction_event_code": "T1107", "transaction_initiation_date": refund["create_time"],
            "transaction_updated_date": refund["update_time"],
            "transaction_amount": {"currency_code": refund["amount"]["currency_code"],
                                   "value": "-" + refund["amount"]["value"]},
            "transaction_status": REFUND_TXN_STATUS[refund["status"]],
            **({"custom_field": refund["custom_id"]} if "custom_id" in refund else {}),
        })
    return rows


def search_transactions(call: Call) -> tuple[int, dict]:
    query = call.query
    start, end = _search_time(query, "start_date"), _search_time(query, "end_date")
    if end < start:
        raise invalid("end_date", "INVALID_PARAMETER_VALUE", "end_date must not be before start_date.",
                      value=query["end_date"], location="query")
    if end - start > SEARCH_MAX_RANGE:
        raise invalid("start_date", "INVALID_DATE_RANGE", "Date range is greater than 31 days.",
                      value=query["start_date"], location="query")
    page_size = _query_int(query, "page_size", 100, 1, 500)
    page = _query_int(query, "page", 1, 1, 100_000)
    fields = {f.strip() for f in query.get("fields", "transaction_info").split(",") if f.strip()}
    wanted_id, wanted_status = query.get("transaction_id"), query.get("transaction_status")
    rows = [row for row in _transactions(call.account)
            if start <= datetime.fromisoformat(row["transaction_initiation_date"]) <= end
            and wanted_id in (None, row["transaction_id"])
            and wanted_status in (None, row["transaction_status"])]
    rows.sort(key=lambda row: datetime.fromisoformat(row["transaction_initiation_date"]))
    details = []
    for row in rows[(page - 1) * page_size:page * page_size]:
        detail: dict[str, Any] = {"transaction_info": row}
        if "all" in fields or "payer_info" in fields:
            detail["payer_info"] = {"account_id": call.account.payer_id,
                                    "email_address": "payer@personal.example.com", "address_status": "Y",
                                    "payer_status": "Y",
                                    "payer_name": {"given_name": "Sim", "surname": "Payer"}}
        if "all" in fields:
            detail.update(shipping_info={}, cart_info={}, store_info={}, auction_info={}, incentive_info={})
        details.append(detail)
    pages = max(1, -(-len(rows) // page_size))
    self_link = call.href("/v1/reporting/transactions")
    links = [{"href": f"{self_link}?page={page}", "rel": "self", "method": "GET"}]
    if page < pages:
        links.append({"href": f"{self_link}?page={page + 1}", "rel": "next", "method": "GET"})
    return 200, {"transaction_details": details, "account_number": call.account.merchant_id,
                 "start_date": query["start_date"], "end_date": query["end_date"],
                 "last_refreshed_datetime": now_iso(), "page": page, "total_items": len(rows),
                 "total_pages": pages, "links": links}


# --- webhooks -------------------------------------------------------------------------------


def create_webhook(call: Call) -> tuple[int, dict]:
    account, body = call.account, call.body
    url = body.get("url")
    if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url) or len(url) > 2048:
        raise validation_error("url", "Invalid URL. Provide a valid absolute URL." if url else
                               "Required field is missing.")
    types = body.get("event_types")
    if not isinstance(types, list) or not types:
        raise validation_error("event_types", "Required field is missing.")
    names = []
    for i, entry in enumerate(types):
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in EVENT_TYPES:
            raise validation_error(f"event_types[{i}].name", f"Event type {name!r} is not supported.")
        names.append(name)
    if any(hook["url"] == url for hook in account.webhooks.values()):
        raise PayPalError(400, "WEBHOOK_URL_ALREADY_EXISTS", "Webhook URL already exists")
    if len(account.webhooks) >= WEBHOOK_LIMIT:
        raise PayPalError(400, "WEBHOOK_NUMBER_LIMIT_EXCEEDED", "Maximum number of allowed webhooks is "
                          f"{WEBHOOK_LIMIT}.")
    webhook_id = pp_id()
    href = call.href(f"/v1/notifications/webhooks/{webhook_id}")
    webhook = {"id": webhook_id, "url": url,
               "event_types": [{"name": n, "description": EVENT_TYPES[n]} for n in names],
               "links": [{"href": href, "rel": "self", "method": "GET"},
                         {"href": href, "rel": "update", "method": "PATCH"},
                         {"href": href, "rel": "delete", "method": "DELETE"}]}
    account.webhooks[webhook_id] = webhook
    return 201, copy.deepcopy(webhook)


def list_webhooks(call: Call) -> tuple[int, dict]:
    return 200, {"webhooks": copy.deepcopy(list(call.account.webhooks.values()))}


def delete_webhook(call: Call) -> tuple[int, None]:
    _get(call.account.webhooks, call.path_id)
    del call.account.webhooks[call.path_id]  # type: ignore[arg-type]
    return 204, None


VERIFY_FIELDS = ("auth_algo", "cert_url", "transmission_id", "transmission_sig", "transmission_time",
                 "webhook_id")


def verify_webhook_signature(call: Call) -> tuple[int, dict]:
    body = call.body
    for name in VERIFY_FIELDS:
        if not isinstance(body.get(name), str) or not body[name]:
            raise validation_error(name, "Required field is missing.")
    if not re.fullmatch(r"[a-zA-Z0-9]+", body["webhook_id"]):
        raise validation_error("webhook_id", "Invalid webhook id.")
    if not isinstance(body.get("webhook_event"), dict):
        raise validation_error("webhook_event", "Required field is missing.")
    event = raw_member(call.text, "webhook_event")
    ok = event is not None and call.state.signature_valid(
        auth_algo=body["auth_algo"], cert_url=body["cert_url"], transmission_id=body["transmission_id"],
        transmission_time=body["transmission_time"], transmission_sig=body["transmission_sig"],
        webhook_id=body["webhook_id"], event=event.encode("utf-8"))
    return 200, {"verification_status": "SUCCESS" if ok else "FAILURE"}


API_ROUTES: list[tuple[str, str, Callable[[Call], tuple[int, Any]]]] = [
    ("POST", "/v2/checkout/orders", create_order),
    ("GET", "/v2/checkout/orders/{id}", get_order),
    ("POST", "/v2/checkout/orders/{id}/capture", capture_order),
    ("GET", "/v2/payments/captures/{id}", get_capture),
    ("POST", "/v2/payments/captures/{id}/refund", refund_capture),
    ("GET", "/v2/payments/refunds/{id}", get_refund),
    ("GET", "/v1/reporting/transactions", search_transactions),
    ("POST", "/v1/notifications/webhooks", create_webhook),
    ("GET", "/v1/notifications/webhooks", list_webhooks),
    ("DELETE", "/v1/notifications/webhooks/{id}", delete_webhook),
    ("POST", "/v1/notifications/verify-webhook-signature", verify_webhook_signature),
]


# --- simulator-only controls (the common ones are in sandbox.common) -------------------------


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _find(state: PayPalState, table: str, obj_id: str) -> tuple[Account, dict] | None:
    for account in state.accounts.values():
        if obj_id in getattr(account, table):
            return account, getattr(account, table)[obj_id]
    return None


async def _status_body(request: web.Request, allowed: tuple[str, ...]) -> str:
    body = await common.read_json_object(request)
    status = body.get("status")
    if status not in allowed:
        raise ValueError(f'body must be {{"status": one of {", ".join(allowed)}}}')
    return status


async def sim_captures(request: web.Request) -> web.Response:
    wanted = request.query.get("account")
    return json_response({"data": [
        {**capture, "order_id": capture["supplementary_data"]["related_ids"]["order_id"],
         "account": account.client_id}
        for account in paypal_state(request).accounts.values() if wanted in (None, account.client_id)
        for capture in account.captures.values()]})


async def sim_capture_status(request: web.Request) -> web.Response:
    state = paypal_state(request)
    found = _find(state, "captures", request.match_info["id"])
    if found is None:
        return json_response({"error": f"no such capture: {request.match_info['id']}"}, 404)
    try:
        status = await _status_body(request, ("COMPLETED", "DECLINED"))
    except ValueError as exc:
        return json_response({"error": str(exc)}, 400)
    account, capture = found
    if capture["status"] != "PENDING":
        return json_response({"error": f"capture {capture['id']} is {capture['status']}, not PENDING"}, 409)
    capture.pop("status_details", None)
    if status == "DECLINED":
        capture["status_details"] = {"reason": "DECLINED_BY_RISK_FRAUD_FILTERS"}
    capture.update(status=status, update_time=now_iso())
    state.emit(account, CAPTURE_EVENT[status], "capture", capture, _origin(request))
    return json_response(capture)


async def sim_refund_status(request: web.Request) -> web.Response:
    state = paypal_state(request)
    found = _find(state, "refunds", request.match_info["id"])
    if found is None:
        return json_response({"error": f"no such refund: {request.match_info['id']}"}, 404)
    try:
        status = await _status_body(request, ("COMPLETED", "FAILED", "CANCELLED"))
    except ValueError as exc:
        return json_response({"error": str(exc)}, 400)
    account, refund = found
    if refund["status"] != "PENDING":
        return json_response({"error": f"refund {refund['id']} is {refund['status']}, not PENDING"}, 409)
    refund.pop("status_details", None)
    if status == "FAILED":
        refund["status_details"] = {"reason": "ECHECK"}
    refund.update(status=status, update_time=now_iso())  # failed/cancelled: no longer committed
    _restate_capture(account, account.captures[_refund_capture(refund)])
    if status == "COMPLETED":
        state.emit(account, "PAYMENT.CAPTURE.REFUNDED", "refund", refund, _origin(request))
    return json_response(refund)


async def sim_oauth(request: web.Request) -> web.Response:
    state = paypal_state(request)
    revoked = 0
    if request.method == "POST":
        try:
            body = await common.read_json_object(request)
            unknown = set(body) - {"expires_in", "revoke"}
            if unknown:
                raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
            lifetime = body.get("expires_in", state.token_lifetime)
            if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime < 0:
                raise ValueError("expires_in must be a non-negative integer")
            if not isinstance(body.get("revoke", False), bool):
                raise ValueError("revoke must be true or false")
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        state.token_lifetime = lifetime
        if body.get("revoke"):
            revoked = len(state.tokens)
            state.tokens.clear()
    return json_response({"expires_in": state.token_lifetime, "tokens": len(state.tokens),
                          "revoked": revoked})


async def sim_cert(request: web.Request) -> web.Response:
    state = paypal_state(request)
    if request.match_info["cert_id"] != state.cert_id:
        return json_response({"error": "no such certificate"}, 404)
    return web.Response(body=state.cert_pem, content_type="application/x-pem-file")


# --- app and runners -------------------------------------------------------------------------


def _endpoint(fn: Callable[[Call], tuple[int, Any]]):
    async def handler(request: web.Request) -> web.Response:
        status, body = fn(request[CALL])
        return web.Response(status=204) if body is None else json_response(body, status)
    return handler


def create_app() -> web.Application:
    app = common.sim_app(PayPalState(), error_response=fault_error, middlewares=[paypal_api])
    app.router.add_post("/v1/oauth2/token", oauth_token)
    for method, path, fn in API_ROUTES:
        app.router.add_route(method, path, _endpoint(fn))
    app.router.add_get("/_sim/captures", sim_captures)
    app.router.add_post("/_sim/captures/{id}/status", sim_capture_status)
    app.router.add_post("/_sim/refunds/{id}/status", sim_refund_status)
    app.router.add_route("*", "/_sim/oauth", sim_oauth)
    app.router.add_get("/_sim/certs/{cert_id}", sim_cert)
    return app


async def start_paypal_sim(host: str = "127.0.0.1", port: int = 0) -> Running:
    return await common.start_sim(create_app, host, port)


def main(argv: list[str] | None = None) -> None:
    common.main(create_app, name="paypal_sim", default_port=DEFAULT_PORT, argv=argv)


if __name__ == "__main__":
    main()
