"""Local Stripe API simulator: a small aiohttp server that speaks Stripe's v1 wire protocol.

Tests and the dev sandbox point the official `stripe` SDK at it
(`StripeClient(key, base_addresses={"api": url})`) instead of api.stripe.com. It speaks
form-encoded requests with Stripe's nested keys, Bearer (or Basic) auth, Stripe's objects, list
and error shapes and statuses, `Idempotency-Key` semantics (replays carry `Idempotent-Replayed:
true`), and sends events signed like Stripe (`Stripe-Signature: t=..,v1=..`) to endpoints
registered through `/v1/webhook_endpoints`. State is in memory; every API key is its own account
(objects, idempotency keys, endpoints). Faults, idempotency records, webhook delivery, the common
`/_sim` controls and the runners come from `sandbox.common`.

Simulated: PaymentIntents (create, confirm, retrieve, list, cancel; automatic capture), the
Charges they create (retrieve, list) and Connect account debits (`POST /v1/charges` with
`source=acct_...`), Refunds (create, retrieve, list; pending, failed and canceled ones through
the test cards and the control below), Events, webhook endpoints, `/v1/account` and
`/v1/balance` as credential checks, and Stripe's `pm_card_*` test payment methods: the declining
ones, the 3-D Secure ones, and `pm_card_pendingRefund` (refunds start `pending`) and
`pm_card_refundFail` (refunds start `succeeded` and may fail later).

Simulator-only controls (besides the common ones in `sandbox.common`: faults, webhook duplicate /
delay / reorder / flush, deliveries, state dump, reset):
  GET  /_sim/payment_intents[?account=acct_...]   every PaymentIntent, across accounts
  POST /_sim/payment_intents/{id}/settle  {"status": "succeeded"|"failed"}
       settles a PaymentIntent left `processing` by the bank-debit method `pm_usBankAccount`
  POST /_sim/refunds/{id}/status  {"status": "succeeded"|"failed"|"canceled",
                                   "failure_reason": "..." (failed only; default
                                   expired_or_canceled_card)}
       moves a refund as Stripe would some time later: pending -> succeeded|failed|canceled, or
       succeeded -> failed for a refund of pm_card_refundFail. A failed or canceled refund gives
       its amount back to the charge (`amount_refunded` counts pending and succeeded refunds).
       Sends `charge.refund.updated` and `refund.updated` (with `previous_attributes`), and
       `refund.failed` when it failed.

Deliberately not simulated: customers and payment methods as objects (any other `pm_...` id is
a good card), manual capture, 3-D Secure beyond `requires_action`, disputes, payouts, transfers
and application fees as objects (their ids only), `Stripe-Account` scoping (the header only
permits `application_fee_amount`), refunds changing by themselves (use the control), refund
cancellation through the API, fees and balance arithmetic, API-version differences, rate
limits, and Stripe's three-day webhook retry schedule (a few quick retries here).
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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

from aiohttp import web

from sandbox import common
from sandbox.common import (
    STATE,
    Claim,
    IdempotencyRecord,
    IdempotencyStore,
    Running,
    SimState,
    Webhook,
    header_key,
    json_response,
    random_token,
)

API_VERSION = "2026-10-28.endive"
log = logging.getLogger("stripe_sim")
_ZERO_DECIMAL = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx",
                 "vnd", "vuv", "xaf", "xof", "xpf"}
_MINIMUM_AMOUNT = {"usd": 50, "eur": 50, "cad": 50, "aud": 50, "gbp": 30, "jpy": 50}
# Two-decimal in Stripe's API, yet whole units only since 2023: an amount must be a multiple of 100.
_NO_DECIMAL_COMPATIBLE = {"isk"}

# Stripe's declining test PaymentMethods, "pm_card_[visa_]<name>":
# name -> (code, decline_code, message, param).
_DECLINED = "Your card was declined."
DECLINES = {
    "chargeDeclined": ("card_declined", "generic_decline", _DECLINED, None),
    "chargeDeclinedInsufficientFunds": ("card_declined", "insufficient_funds",
                                        "Your card has insufficient funds.", None),
    "chargeDeclinedLostCard": ("card_declined", "lost_card", _DECLINED, None),
    "chargeDeclinedStolenCard": ("card_declined", "stolen_card", _DECLINED, None),
    "chargeDeclinedFraudulent": ("card_declined", "fraudulent", _DECLINED, None),
    "chargeDeclinedExpiredCard": ("expired_card", "expired_card", "Your card has expired.",
                                  "exp_month"),
    "chargeDeclinedIncorrectCvc": ("incorrect_cvc", "incorrect_cvc",
                                   "Your card's security code is incorrect.", "cvc"),
    "chargeDeclinedProcessingError": ("processing_error", "processing_error", "An error "
                                      "occurred while processing your card. Try again in a "
                                      "little bit.", None),
}
# These need 3-D Secure: on-session they stop at requires_action, off-session they decline.
AUTH_REQUIRED = {"authenticationRequired", "threeDSecureRequired", "threeDSecure2Required"}
_AUTH_DECLINE = ("authentication_required", "authentication_required",
                 "Your card was declined. This transaction requires authentication.", None)
# Cards whose charges succeed but whose refunds do not simply succeed (Stripe's testing docs).
PENDING_REFUND_CARD, REFUND_FAIL_CARD = "pendingRefund", "refundFail"
# A bank debit (ACH): the PaymentIntent waits in `processing` for days at Stripe, here until the
# `/_sim/payment_intents/{id}/settle` control moves it (as Stripe's bank would).
PROCESSING_METHOD = "pm_usBankAccount"
# Refund moves the /_sim control allows, as Stripe makes them after the fact.
REFUND_MOVES = {("pending", "succeeded"), ("pending", "failed"), ("pending", "canceled"),
                ("succeeded", "failed")}
REFUND_FAILURE_REASONS = ("lost_or_stolen_card", "expired_or_canceled_card",
                          "charge_for_pending_refund_disputed", "insufficient_funds", "declined",
                          "merchant_request", "unknown")


def new_id(prefix: str) -> str:
    return f"{prefix}_{random_token()}"


def card_name(payment_method: str | None) -> str:
    """`pm_card_[visa_]<name>` -> name; any other payment method -> ""."""
    pm = payment_method or ""
    return pm.removeprefix("pm_card_").removeprefix("visa_") if pm.startswith("pm_card_") else ""


def sign_payload(payload: str, secret: str, timestamp: int | None = None) -> str:
    """Stripe's webhook signature header: v1 = hex HMAC-SHA256(secret, "<t>.<payload>")."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def fmt_money(amount: int, currency: str) -> str:
    zero = currency in _ZERO_DECIMAL
    text = f"{amount:,}" if zero else f"{Decimal(amount) / 100:,.2f}"
    return f"${text}" if currency == "usd" else f"{text} {currency.upper()}"


# --- errors and parameters ----------------------------------------------------------------


class StripeError(Exception):
    """An error answered in Stripe's shape. `saved=False` marks failures before the endpoint
    starts executing (bad params, unknown ids): Stripe stores no idempotent result for those,
    so a corrected retry with the same key runs."""

    def __init__(self, status: int, type_: str, message: str, *, code: str | None = None,
                 param: str | None = None, saved: bool = True, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.saved = status, saved
        body = {"type": type_, "message": message, "code": code, "param": param, **extra}
        if code:
            body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        self.body = {"error": {k: v for k, v in body.items() if v is not None}}

    def response(self) -> web.Response:
        return json_response(self.body, self.status)


def bad(message: str, param: str | None = None, code: str | None = None, *,
        saved: bool = False, status: int = 400, **extra: Any) -> StripeError:
    return StripeError(status, "invalid_request_error", message, code=code, param=param,
                       saved=saved, **extra)


_KEY_PART = re.compile(r"\[([^\]]*)\]")


def parse_stripe_form(pairs) -> dict:
    """Stripe's (Rack-style) nesting: `a[b]=1&c[]=x&c[]=y&d[0]=z` ->
    `{"a": {"b": "1"}, "c": ["x", "y"], "d": ["z"]}`. Values stay strings."""
    root: dict = {}
    for key, value in pairs:
        head = key.split("[", 1)[0]
        parts = [head, *_KEY_PART.findall(key[len(head):])]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part or str(len(node)), {})
            if not isinstance(node, dict):
                raise bad(f"Invalid nested parameter: {key}", key)
        node[parts[-1] or str(len(node))] = value  # `c[]` appends
    return _listify(root)


def _listify(node: Any, name: str = "") -> Any:
    if not isinstance(node, dict):
        return node
    node = {k: _listify(v, k) for k, v in node.items()}
    if node and name != "metadata" and all(k.isdigit() for k in node):
        return [node[k] for k in sorted(node, key=int)]
    return node


def check_known(params: dict, allowed: set[str]) -> None:
    for name in params:
        if name not in allowed:
            raise bad(f"Received unknown parameter: {name}", name, "parameter_unknown")


def p_str(params: dict, name: str, *, required: bool = False, choices: tuple = (),
          prefix: str = "", kind: str = "", label: str = "") -> str | None:
    """A string param; with `prefix`, an id of that kind that must look like one."""
    raw, label = params.get(name), label or name
    if raw is None or raw == "":
        if required:
            raise bad(f"Missing required param: {label}.", label, "parameter_missing")
        return None
    if not isinstance(raw, str):
        raise bad(f"Invalid string: {raw!r}", label, "parameter_invalid_string")
    if choices and raw not in choices:
        raise bad(f"Invalid {label}: must be one of {', '.join(choices)}", label)
    if not raw.startswith(prefix):
        raise bad(f"No such {kind or label}: '{raw}'", label, "resource_missing")
    return raw


def p_int(params: dict, name: str, *, required: bool = False, minimum: int | None = None,
          label: str = "") -> int | None:
    raw, label = params.get(name), label or name
    if raw is None or raw == "":
        if required:
            raise bad(f"Missing required param: {label}.", label, "parameter_missing")
        return None
    if not isinstance(raw, str) or not re.fullmatch(r"-?\d+", raw):
        raise bad(f"Invalid integer: {raw}", label, "parameter_invalid_integer")
    if minimum is not None and int(raw) < minimum:
        raise bad(f"This value must be greater than or equal to {minimum}.", label,
                  "parameter_invalid_integer")
    return int(raw)


def p_bool(params: dict, name: str, *, also_true: tuple = ()) -> bool:
    raw = params.get(name)
    if raw in (None, "", "false"):
        return False
    if raw == "true" or raw in also_true:
        return True
    raise bad(f"Invalid boolean: {raw}", name, "parameter_invalid_boolean")


def p_metadata(params: dict) -> dict:
    raw = params.get("metadata") or {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise bad("Invalid metadata: must be a hash of string keys to string values",
                  "metadata")
    return {k: v for k, v in raw.items() if v != ""}


# --- state --------------------------------------------------------------------------------

# Stripe takes Idempotency-Key on POSTs only ("it has no effect" on GET and DELETE).
IDEMPOTENCY_KEY = header_key("Idempotency-Key", methods=("POST",))


@dataclass
class Account:
    api_key: str
    payment_intents: dict[str, dict] = field(default_factory=dict)
    charges: dict[str, dict] = field(default_factory=dict)
    refunds: dict[str, dict] = field(default_factory=dict)
    events: dict[str, dict] = field(default_factory=dict)
    webhook_endpoints: dict[str, dict] = field(default_factory=dict)
    idempotency: IdempotencyStore = field(
        default_factory=lambda: IdempotencyStore(IDEMPOTENCY_KEY))

    @property
    def id(self) -> str:
        return "acct_" + hashlib.sha256(self.api_key.encode()).hexdigest()[:16]

    @property
    def livemode(self) -> bool:
        return "_live_" in self.api_key

    def lookup(self, obj_id: str) -> dict | None:
        for table in (self.payment_intents, self.charges, self.refunds, self.events):
            if obj_id in table:
                return table[obj_id]
        return None


class StripeState(SimState):
    api_prefixes = ("/v1/",)
    durable = {"accounts": dict[str, Account]}
    key_source = IDEMPOTENCY_KEY

    def reset(self) -> None:
        super().reset()
        self.accounts: dict[str, Account] = {}

    def sign_webhook(self, webhook: Webhook) -> Mapping[str, str]:
        return {"Stripe-Signature": sign_payload(webhook.body.decode(), webhook.secret),
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}

    def snapshot(self) -> dict:
        return {"accounts": [{
            "id": a.id, "api_key_hint": a.api_key[:8] + "..." + a.api_key[-4:],
            "payment_intents": list(a.payment_intents.values()),
            "charges": list(a.charges.values()), "refunds": list(a.refunds.values()),
            "webhook_endpoints": list(a.webhook_endpoints.values()),
            "events": [{"id": e["id"], "type": e["type"]} for e in a.events.values()],
            "idempotency_keys": list(a.idempotency),
        } for a in self.accounts.values()]}

    def emit(self, account: Account, type_: str, obj: dict, *, request_id: str | None = None,
             idempotency_key: str | None = None, previous: dict | None = None) -> dict:
        """Record an event and send it to the account's subscribed endpoints. Events that no
        API request caused (a refund settling later) have a null request id, as on Stripe."""
        targets = [ep for ep in account.webhook_endpoints.values() if ep["status"] == "enabled"
                   and ("*" in ep["enabled_events"] or type_ in ep["enabled_events"])]
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = copy.deepcopy(previous)
        event = {
            "id": new_id("evt"), "object": "event", "api_version": API_VERSION,
            "created": int(time.time()), "data": data, "livemode": account.livemode,
            "pending_webhooks": len(targets), "type": type_,
            "request": {"id": request_id, "idempotency_key": idempotency_key},
        }
        account.events[event["id"]] = event
        for endpoint in targets:
            payload = json.dumps(dict(event, api_version=endpoint["api_version"] or API_VERSION),
                                 indent=2)
            self.webhooks.send(Webhook(
                event["id"], type_, endpoint["url"], payload.encode(), secret=endpoint["secret"],
                endpoint_id=endpoint["id"],
                wanted=functools.partial(_endpoint_exists, account, endpoint["id"])))
        return event


def _endpoint_exists(account: Account, endpoint_id: str) -> bool:
    return endpoint_id in account.webhook_endpoints  # a deleted endpoint hears no more retries


@dataclass
class Call:
    """One authenticated /v1 request as the endpoint functions see it."""

    state: StripeState
    account: Account
    params: dict
    path_id: str | None
    request_id: str
    idempotency_key: str | None
    stripe_account: str | None

    def emit(self, type_: str, obj: dict) -> None:
        self.state.emit(self.account, type_, obj, request_id=self.request_id,
                        idempotency_key=self.idempotency_key)

    def expand(self, obj: dict, prefix: str = "") -> dict:
        """Replace ids named in `expand[]` by the objects (one level, like most of Stripe)."""
        paths = self.params.get("expand") or []
        out = dict(obj)
        for path in [paths] if isinstance(paths, str) else paths:
            name = path.removeprefix(prefix)
            ref = out.get(name)
            target = self.account.lookup(ref) if isinstance(ref, str) else None
            if "." in name or name not in out or (ref is not None and target is None):
                raise bad(f"This property cannot be expanded ({path}).", "expand")
            out[name] = target
        return out


CALL = web.RequestKey("call", Call)


def stripe_state(request: web.Request) -> StripeState:
    return request.app[STATE]  # type: ignore[return-value]  # create_app puts a StripeState


# --- auth and idempotency: one middleware in front of every /v1 endpoint --------------------
# Faults are applied in front of it by sandbox.common, so an `error` fault records nothing.


def api_key_from(headers) -> str:
    scheme, _, credential = headers.get("Authorization", "").partition(" ")
    key = credential.strip() if scheme.lower() == "bearer" else ""
    if scheme.lower() == "basic":  # curl -u sk_test_...:
        try:
            key = base64.b64decode(credential).decode().split(":", 1)[0]
        except ValueError:
            key = ""
    if not key:
        raise bad("You did not provide an API key. You need to provide your API key in the "
                  "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                  "YOUR_SECRET_KEY').", status=401)
    if "invalid" in key or not key.startswith(("sk_", "rk_")):
        masked = key[:8] + "*" * max(len(key) - 12, 4) + key[-4:]
        raise bad(f"Invalid API Key provided: {masked}", status=401)
    return key


def _stripe_headers(response: web.StreamResponse, request: web.Request,
                    request_id: str) -> web.StreamResponse:
    response.headers.setdefault("Request-Id", request_id)
    response.headers["Stripe-Version"] = request.headers.get("Stripe-Version", API_VERSION)
    return response


def fault_error(request: web.Request, status: int) -> web.StreamResponse:
    """The answer of an `error` fault: an outage in front of the API (or, for 429, Stripe's rate
    limiter), in Stripe's shape."""
    if status == 429:
        response = StripeError(429, "invalid_request_error", "Too many requests hit the API too quickly "
                               "(simulated fault).", code="rate_limit").response()
    else:
        response = StripeError(status, "api_error", "An unknown error occurred (simulated fault).").response()
    return _stripe_headers(response, request, new_id("req"))


@web.middleware
async def stripe_api(request: web.Request, handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    request_id = new_id("req")
    response = await _run_call(request, handler, stripe_state(request), request_id)
    return _stripe_headers(response, request, request_id)


def _idempotency_rejection(claim: Claim) -> web.Response:
    if claim.outcome == "mismatch":
        return StripeError(
            400, "idempotency_error", "Keys for idempotent requests can only be used with the "
            "same parameters they were first used with. Try using a key other than "
            f"'{claim.key}' if you meant to execute a different request.").response()
    return StripeError(
        409, "idempotency_error", "There is currently another in-progress request using this "
        f"Idempotent Key: {claim.key}. Please try again later.").response()


def _replay_headers(record: IdempotencyRecord) -> dict[str, str]:
    return {"Idempotent-Replayed": "true", "Original-Request": record.request_id}


async def _run_call(request: web.Request, handler, state: StripeState,
                    request_id: str) -> web.Response:
    try:
        api_key = api_key_from(request.headers)
        pairs = list(request.query.items())
        if request.method == "POST" and request.content_type.endswith("x-www-form-urlencoded"):
            pairs += list((await request.post()).items())
        params = parse_stripe_form(pairs)
    except StripeError as err:
        return err.response()
    account = state.accounts.setdefault(api_key, Account(api_key))
    key = account.idempotency.key_of(request, params)
    request[CALL] = Call(state, account, params, request.match_info.get("id"), request_id, key,
                         request.headers.get("Stripe-Account"))

    async def run() -> tuple[web.Response, bool]:
        """The endpoint's answer and whether Stripe would store it under the key."""
        try:
            return await handler(request), True
        except StripeError as err:
            return err.response(), err.saved
        except web.HTTPException as exc:  # no such route: Stripe's 404 shape, nothing stored
            return bad(f"Unrecognized request URL ({request.method}: {request.path}).",
                       status=404 if exc.status in (404, 405) else exc.status).response(), False
        except Exception:
            log.exception("stripe_sim endpoint failed")
            return StripeError(500, "api_error", "An unknown error occurred.").response(), True

    return await account.idempotency.run(key, (request.method, request.path, params), request_id,
                                         run, reject=_idempotency_rejection,
                                         replay_headers=_replay_headers)


def get_obj(table: dict, obj_id: str, kind: str, param: str = "id") -> dict:
    if obj_id not in table:
        raise bad(f"No such {kind}: '{obj_id}'", param, "resource_missing", status=404)
    return table[obj_id]


def list_page(call: Call, table: dict, url: str, *, extra: tuple = (),
              keep: Callable[[dict], bool] = lambda obj: True) -> dict:
    """Stripe list semantics: newest first, `limit` 1..100, id cursors, `created` filters."""
    params = call.params
    check_known(params, {"limit", "starting_after", "ending_before", "created", "expand", *extra})
    limit = p_int(params, "limit", minimum=1) or 10
    if limit > 100:
        raise bad("This value must be less than or equal to 100.", "limit")
    items = list(reversed(table.values()))
    ids = [obj["id"] for obj in items]
    for cursor in ("starting_after", "ending_before"):
        if (cursor_id := p_str(params, cursor)) is not None and cursor_id not in ids:
            raise bad(f"No such object: '{cursor_id}'", cursor, "resource_missing")
    if after := p_str(params, "starting_after"):
        items = items[ids.index(after) + 1:]
    elif before := p_str(params, "ending_before"):
        items = items[:ids.index(before)]
    created = params.get("created")
    ops = {"eq": int.__eq__, "gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__,
           "lte": int.__le__}
    for op, raw in ({"eq": created} if isinstance(created, str) else created or {}).items():
        if op not in ops:
            raise bad(f"Received unknown parameter: created[{op}]", "created", "parameter_unknown")
        bound = p_int({op: raw}, op, label=f"created[{op}]")
        items = [obj for obj in items if ops[op](obj["created"], bound)]
    items = [obj for obj in items if keep(obj)]
    page = items[-limit:] if "ending_before" in params else items[:limit]
    return {"object": "list", "url": url, "has_more": len(items) > limit,
            "data": [call.expand(obj, "data.") for obj in page]}


# --- payment intents and charges ----------------------------------------------------------

PI_CONFIRM_PARAMS = {
    "payment_method", "off_session", "return_url", "receipt_email", "setup_future_usage",
    "payment_method_types", "payment_method_options", "mandate_data", "error_on_requires_action",
    "use_stripe_sdk", "capture_method", "shipping", "expand",
}
PI_CREATE_PARAMS = PI_CONFIRM_PARAMS | {
    "amount", "currency", "confirm", "customer", "application_fee_amount", "transfer_data",
    "on_behalf_of", "metadata", "description", "confirmation_method",
    "automatic_payment_methods", "statement_descriptor", "statement_descriptor_suffix",
    "transfer_group",
}
_CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation",
               "requires_action", "processing")
_OFF_SESSION_TRUE = ("one_off", "recurring")  # legacy values Stripe still takes


def check_whole_units(amount: int, currency: str, param: str = "amount") -> None:
    """Stripe's refusal of a fractional króna (`invalid_charge_amount_no_decimal_compatible`)."""
    if currency in _NO_DECIMAL_COMPATIBLE and amount % 100:
        raise bad(f"Invalid amount. Currency {currency.upper()} has become effectively zero-decimal and "
                  "charged amounts must be evenly divisible by 100. See "
                  "https://stripe.com/docs/currencies#special-cases for more information.",
                  param, "invalid_charge_amount_no_decimal_compatible")


def create_payment_intent(call: Call) -> dict:
    params = call.params
    check_known(params, PI_CREATE_PARAMS)
    currency = p_str(params, "currency", required=True).lower()
    if not re.fullmatch(r"[a-z]{3}", currency):
        raise bad(f"Invalid currency: {currency}.", "currency", "parameter_invalid_string")
    amount = p_int(params, "amount", required=True, minimum=1)
    check_whole_units(amount, currency)
    if amount < (minimum := _MINIMUM_AMOUNT.get(currency, 1)):
        raise bad(f"Amount must be at least {fmt_money(minimum, currency)} {currency}",
                  "amount", "amount_too_small")
    if amount > 99_999_999:
        raise bad(f"Amount must be no more than {fmt_money(99_999_999, currency)}", "amount",
                  "amount_too_large")
    capture = p_str(params, "capture_method", choices=("automatic", "automatic_async", "manual"))
    if capture == "manual":
        raise bad("capture_method=manual is not supported by this simulator.", "capture_method")
    transfer_data = params.get("transfer_data")
    if transfer_data is not None:
        if not isinstance(transfer_data, dict):
            raise bad("Invalid hash", "transfer_data")
        check_known(transfer_data, {"destination", "amount"})
        transfer_data = {
            "destination": p_str(transfer_data, "destination", required=True, prefix="acct_",
                                 kind="destination", label="transfer_data[destination]"),
            "amount": p_int(transfer_data, "amount", minimum=1, label="transfer_data[amount]"),
        }
    fee = p_int(params, "application_fee_amount", minimum=0)
    if fee is not None and transfer_data is None and not call.stripe_account:
        raise bad("Can only apply an application_fee_amount when the PaymentIntent is attempting "
                  "a direct payment (using an OAuth key or Stripe-Account header) or destination "
                  "payment (using `transfer_data[destination]`).", "application_fee_amount")
    if fee is not None and fee > amount:
        raise bad(f"The application_fee_amount ({fee}) must be less than or equal to the "
                  f"amount ({amount}).", "application_fee_amount")
    payment_method = p_str(params, "payment_method", prefix="pm_", kind="PaymentMethod")
    confirm = p_bool(params, "confirm")
    off_session = p_bool(params, "off_session", also_true=_OFF_SESSION_TRUE)
    if off_session and not confirm:
        raise bad("off_session can only be used when confirm=true.", "off_session")
    if confirm and payment_method is None:
        raise bad("You cannot confirm this PaymentIntent because it's missing a payment method.",
                  "payment_method", "payment_intent_unexpected_state")
    pi_id = new_id("pi")
    pi = {
        "id": pi_id, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
        "amount_received": 0, "application": None, "application_fee_amount": fee,
        "automatic_payment_methods": params.get("automatic_payment_methods"),
        "canceled_at": None, "cancellation_reason": None, "capture_method": capture or "automatic",
        "client_secret": f"{pi_id}_secret_{random_token()}", "confirmation_method": "automatic",
        "created": int(time.time()), "currency": currency,
        "customer": p_str(params, "customer", prefix="cus_", kind="customer"),
        "description": p_str(params, "description"), "last_payment_error": None,
        "latest_charge": None, "livemode": call.account.livemode, "metadata": p_metadata(params),
        "next_action": None, "payment_method": payment_method,
        "on_behalf_of": p_str(params, "on_behalf_of", prefix="acct_", kind="account"),
        "payment_method_types": params.get("payment_method_types") or ["card"],
        "receipt_email": p_str(params, "receipt_email"),
        "statement_descriptor": p_str(params, "statement_descriptor"),
        "status": "requires_confirmation" if payment_method else "requires_payment_method",
        "transfer_data": transfer_data, "transfer_group": p_str(params, "transfer_group"),
    }
    call.account.payment_intents[pi_id] = pi
    call.emit("payment_intent.created", pi)
    if confirm:
        attempt_payment(call, pi, off_session)
    return call.expand(pi)


def attempt_payment(call: Call, pi: dict, off_session: bool) -> None:
    """Charge the PaymentIntent's test card; a decline raises the 402 Stripe answers with."""
    pm = pi["payment_method"]
    if pm == PROCESSING_METHOD:
        pi.update(status="processing", next_action=None)
        call.emit("payment_intent.processing", pi)
        return
    name = card_name(pm)
    decline = DECLINES.get(name)
    if name in AUTH_REQUIRED:
        if not off_session:
            pi.update(status="requires_action",
                      next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {}})
            call.emit("payment_intent.requires_action", pi)
            return
        decline = _AUTH_DECLINE
    charge = new_charge(call.account, pi, decline)
    pi["latest_charge"] = charge["id"]
    if decline is None:
        pi.update(status="succeeded", amount_received=pi["amount"], next_action=None)
        call.emit("charge.succeeded", charge)
        call.emit("payment_intent.succeeded", pi)
        return
    code, decline_code, message, param = decline
    error = StripeError(402, "card_error", message, code=code, decline_code=decline_code,
                        param=param, charge=charge["id"],
                        payment_method={"id": pm, "object": "payment_method", "type": "card"})
    pi.update(status="requires_payment_method", payment_method=None, next_action=None,
              last_payment_error=copy.deepcopy(error.body["error"]))
    call.emit("charge.failed", charge)
    call.emit("payment_intent.payment_failed", pi)
    error.body["error"]["payment_intent"] = copy.deepcopy(pi)
    raise error


def new_charge(account: Account, pi: dict, decline: tuple | None) -> dict:
    ok = decline is None
    charge = {
        "id": new_id("ch"), "object": "charge", "amount": pi["amount"],
        "amount_captured": pi["amount"] if ok else 0, "amount_refunded": 0,
        "application_fee": new_id("fee") if ok and pi["application_fee_amount"] else None,
        "application_fee_amount": pi["application_fee_amount"],
        "balance_transaction": new_id("txn") if ok else None, "captured": ok,
        "created": int(time.time()), "currency": pi["currency"], "customer": pi["customer"],
        "description": pi["description"], "failure_code": None if ok else decline[0],
        "failure_message": None if ok else decline[2], "livemode": account.livemode,
        "metadata": dict(pi["metadata"]), "on_behalf_of": pi["on_behalf_of"],
        "outcome": {"network_status": "approved_by_network" if ok else "declined_by_network",
                    "reason": None if ok else decline[1], "risk_level": "normal",
                    "type": "authorized" if ok else "issuer_declined"},
        "paid": ok, "payment_intent": pi["id"], "payment_method": pi["payment_method"],
        "refunded": False, "status": "succeeded" if ok else "failed",
        "transfer": new_id("tr") if ok and pi["transfer_data"] else None,
        "transfer_data": pi["transfer_data"], "transfer_group": pi["transfer_group"],
    }
    account.charges[charge["id"]] = charge
    return charge


def _payment_intent(call: Call) -> dict:
    return get_obj(call.account.payment_intents, call.path_id, "payment_intent", "intent")


def confirm_payment_intent(call: Call) -> dict:
    check_known(call.params, PI_CONFIRM_PARAMS)
    pi = _payment_intent(call)
    payment_method = p_str(call.params, "payment_method", prefix="pm_", kind="PaymentMethod")
    off_session = p_bool(call.params, "off_session", also_true=_OFF_SESSION_TRUE)
    if pi["status"] not in ("requires_payment_method", "requires_confirmation",
                            "requires_action"):
        raise bad("You cannot confirm this PaymentIntent because it has a status of "
                  f"{pi['status']}.", code="payment_intent_unexpected_state", saved=True,
                  payment_intent=copy.deepcopy(pi))
    pi["payment_method"] = payment_method or pi["payment_method"]
    if pi["payment_method"] is None:
        raise bad("You cannot confirm this PaymentIntent because it's missing a payment method.",
                  "payment_method", "payment_intent_unexpected_state")
    pi["last_payment_error"] = None
    attempt_payment(call, pi, off_session)
    return call.expand(pi)


def retrieve_payment_intent(call: Call) -> dict:
    check_known(call.params, {"expand", "client_secret"})
    return call.expand(_payment_intent(call))


def list_payment_intents(call: Call) -> dict:
    customer = p_str(call.params, "customer")
    return list_page(call, call.account.payment_intents, "/v1/payment_intents",
                     extra=("customer",), keep=lambda pi: customer in (None, pi["customer"]))


def cancel_payment_intent(call: Call) -> dict:
    check_known(call.params, {"cancellation_reason", "expand"})
    pi = _payment_intent(call)
    reason = p_str(call.params, "cancellation_reason",
                   choices=("duplicate", "fraudulent", "requested_by_customer", "abandoned"))
    if pi["status"] not in _CANCELABLE:
        raise bad(f"You cannot cancel this PaymentIntent because it has a status of "
                  f"{pi['status']}. Only a PaymentIntent with one of the following statuses may "
                  f"be canceled: {', '.join(_CANCELABLE)}.",
                  code="payment_intent_unexpected_state", saved=True,
                  payment_intent=copy.deepcopy(pi))
    pi.update(status="canceled", canceled_at=int(time.time()), cancellation_reason=reason)
    call.emit("payment_intent.canceled", pi)
    return call.expand(pi)


def create_account_debit(call: Call) -> dict:
    """`POST /v1/charges` with `source=acct_...`: a Connect platform debiting a connected
    account's balance (the only Charges-API use simulated). A source id containing
    `insufficient` has no balance: Stripe's `balance_insufficient` error (402)."""
    params = call.params
    check_known(params, {"amount", "currency", "source", "description", "metadata", "expand"})
    source = p_str(params, "source", required=True, prefix="acct_", kind="source")
    currency = p_str(params, "currency", required=True).lower()
    amount = p_int(params, "amount", required=True, minimum=1)
    check_whole_units(amount, currency)
    if "insufficient" in source:
        raise StripeError(402, "card_error", "Insufficient funds in the connected account's balance.",
                          code="balance_insufficient", decline_code="balance_insufficient")
    charge = {
        "id": new_id("py"), "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": 0, "balance_transaction": new_id("txn"), "captured": True,
        "created": int(time.time()), "currency": currency, "customer": None,
        "description": p_str(params, "description"), "failure_code": None, "failure_message": None,
        "livemode": call.account.livemode, "metadata": p_metadata(params), "paid": True,
        "payment_intent": None, "payment_method": None, "refunded": False, "source": {"id": source,
        "object": "account"}, "status": "succeeded", "transfer": None,
    }
    call.account.charges[charge["id"]] = charge
    call.emit("charge.succeeded", charge)
    return call.expand(charge)


def retrieve_charge(call: Call) -> dict:
    check_known(call.params, {"expand"})
    return call.expand(get_obj(call.account.charges, call.path_id, "charge", "charge"))


def list_charges(call: Call) -> dict:
    customer, pi_id = p_str(call.params, "customer"), p_str(call.params, "payment_intent")
    return list_page(call, call.account.charges, "/v1/charges", extra=("customer", "payment_intent"),
                     keep=lambda ch: customer in (None, ch["customer"]) and pi_id in (None, ch["payment_intent"]))


# --- refunds -------------------------------------------------------------------------------


def create_refund(call: Call) -> dict:
    params, account = call.params, call.account
    check_known(params, {"payment_intent", "charge", "amount", "reason", "metadata", "expand",
                         "refund_application_fee", "reverse_transfer", "instructions_email"})
    pi_id, charge_id = p_str(params, "payment_intent"), p_str(params, "charge")
    amount = p_int(params, "amount", minimum=1)
    reason = p_str(params, "reason", choices=("duplicate", "fraudulent", "requested_by_customer"))
    reverse_transfer = p_bool(params, "reverse_transfer")
    p_bool(params, "refund_application_fee")
    if pi_id:
        pi = get_obj(account.payment_intents, pi_id, "payment_intent", "payment_intent")
        if pi["status"] != "succeeded":
            raise bad(f"This PaymentIntent ({pi_id}) does not have a successful charge to "
                      "refund.", "payment_intent")
        charge = account.charges[pi["latest_charge"]]
        if charge_id not in (None, charge["id"]):
            raise bad(f"Charge {charge_id} does not belong to PaymentIntent {pi_id}.", "charge")
    elif charge_id:
        charge = get_obj(account.charges, charge_id, "charge", "charge")
        if charge["status"] != "succeeded":
            raise bad(f"Charge {charge_id} cannot be refunded because it failed.", "charge")
    else:
        raise bad("One of the following params should be provided for this request: "
                  "payment_intent or charge.", code="parameter_missing")
    # amount_refunded counts pending refunds too, so they cannot be refunded twice.
    remaining, currency = charge["amount"] - charge["amount_refunded"], charge["currency"]
    if remaining <= 0:
        raise bad(f"Charge {charge['id']} has already been refunded.",
                  code="charge_already_refunded", saved=True)
    amount = remaining if amount is None else amount
    check_whole_units(amount, currency)
    if amount > remaining:
        raise bad(f"Refund amount ({fmt_money(amount, currency)}) is greater than unrefunded "
                  f"amount on charge ({fmt_money(remaining, currency)})", "amount",
                  "amount_too_large", saved=True)
    pending = card_name(charge["payment_method"]) == PENDING_REFUND_CARD
    refund = {
        "id": new_id("re"), "object": "refund", "amount": amount,
        "balance_transaction": new_id("txn"), "charge": charge["id"],
        "created": int(time.time()), "currency": currency, "failure_balance_transaction": None,
        "failure_reason": None, "metadata": p_metadata(params),
        "payment_intent": charge["payment_intent"],
        "pending_reason": "processing" if pending else None, "reason": reason,
        "status": "pending" if pending else "succeeded",
        "transfer_reversal": new_id("trr") if reverse_transfer and charge["transfer"] else None,
    }
    account.refunds[refund["id"]] = refund
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] == charge["amount"]
    call.emit("refund.created", refund)
    call.emit("charge.refunded", charge)
    return call.expand(refund)


class RefundMoveError(ValueError):
    """A refund status change Stripe would never make."""


def move_refund(state: StripeState, account: Account, refund: dict, status: str,
                failure_reason: str = "expired_or_canceled_card") -> dict:
    """What Stripe does to a refund some time after creating it (the /_sim control)."""
    old = refund["status"]
    if (old, status) not in REFUND_MOVES:
        raise RefundMoveError(f"refund {refund['id']} is {old}; it cannot become {status}")
    charge = account.charges[refund["charge"]]
    if old == "succeeded" and card_name(charge["payment_method"]) != REFUND_FAIL_CARD:
        raise RefundMoveError(f"refund {refund['id']} succeeded; only refunds of "
                              f"pm_card_{REFUND_FAIL_CARD} fail after succeeding")
    previous: dict[str, Any] = {"status": old}
    if old == "pending":
        previous["pending_reason"], refund["pending_reason"] = refund["pending_reason"], None
    if status in ("failed", "canceled"):  # the money never left: the charge has it back
        charge["amount_refunded"] -= refund["amount"]
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
    if status == "failed":
        previous.update(failure_reason=None, failure_balance_transaction=None)
        refund.update(failure_reason=failure_reason, failure_balance_transaction=new_id("txn"))
    refund["status"] = status
    state.emit(account, "charge.refund.updated", refund, previous=previous)
    state.emit(account, "refund.updated", refund, previous=previous)
    if status == "failed":
        state.emit(account, "refund.failed", refund)
    return refund


def retrieve_refund(call: Call) -> dict:
    check_known(call.params, {"expand"})
    return call.expand(get_obj(call.account.refunds, call.path_id, "refund", "refund"))


def list_refunds(call: Call) -> dict:
    pi_id, charge_id = p_str(call.params, "payment_intent"), p_str(call.params, "charge")
    return list_page(call, call.account.refunds, "/v1/refunds", extra=("payment_intent", "charge"),
                     keep=lambda r: pi_id in (None, r["payment_intent"])
                     and charge_id in (None, r["charge"]))


# --- events, webhook endpoints, account ------------------------------------------------------


def list_events(call: Call) -> dict:
    type_ = p_str(call.params, "type")
    return list_page(call, call.account.events, "/v1/events", extra=("type",),
                     keep=lambda event: type_ in (None, event["type"]))


def create_webhook_endpoint(call: Call) -> dict:
    params = call.params
    check_known(params, {"url", "enabled_events", "description", "metadata", "api_version",
                         "connect", "expand"})
    url = p_str(params, "url", required=True)
    if not re.match(r"https?://[^/\s]+", url):
        raise bad(f"Invalid URL: {url}", "url", "url_invalid")
    events = params.get("enabled_events")
    if not isinstance(events, list) or not events or not all(
            isinstance(e, str) and re.fullmatch(r"\*|[a-z_.]+", e) for e in events):
        raise bad("Missing or invalid param: enabled_events.", "enabled_events")
    endpoint = {
        "id": new_id("we"), "object": "webhook_endpoint",
        "api_version": p_str(params, "api_version"), "application": None,
        "created": int(time.time()), "description": p_str(params, "description"),
        "enabled_events": events, "livemode": call.account.livemode,
        "metadata": p_metadata(params), "secret": "whsec_" + random_token(32),
        "status": "enabled", "url": url,
    }
    call.account.webhook_endpoints[endpoint["id"]] = endpoint
    return endpoint  # the only answer that carries the signing secret, as on Stripe


def list_webhook_endpoints(call: Call) -> dict:
    page = list_page(call, call.account.webhook_endpoints, "/v1/webhook_endpoints")
    page["data"] = [{k: v for k, v in ep.items() if k != "secret"} for ep in page["data"]]
    return page


def delete_webhook_endpoint(call: Call) -> dict:
    get_obj(call.account.webhook_endpoints, call.path_id, "webhook endpoint")
    del call.account.webhook_endpoints[call.path_id]
    return {"id": call.path_id, "object": "webhook_endpoint", "deleted": True}


def retrieve_account(call: Call) -> dict:
    return {"id": call.account.id, "object": "account", "type": "standard", "country": "US",
            "default_currency": "usd", "charges_enabled": True, "payouts_enabled": True,
            "details_submitted": True, "email": None,
            "capabilities": {"card_payments": "active", "transfers": "active"}}


def retrieve_balance(call: Call) -> dict:
    """Captured minus refunded per currency; Connect transfers and fees are not modelled."""
    totals: dict[str, int] = {}
    for ch in call.account.charges.values():
        totals[ch["currency"]] = totals.get(ch["currency"], 0) + ch["amount_captured"] \
            - ch["amount_refunded"]
    return {"object": "balance", "livemode": call.account.livemode,
            "available": [{"amount": v, "currency": c, "source_types": {"card": v}}
                          for c, v in (totals or {"usd": 0}).items()],
            "pending": [{"amount": 0, "currency": c, "source_types": {"card": 0}}
                        for c in totals or {"usd": 0}]}


API_ROUTES = [
    ("POST", "/v1/payment_intents", create_payment_intent),
    ("GET", "/v1/payment_intents", list_payment_intents),
    ("GET", "/v1/payment_intents/{id}", retrieve_payment_intent),
    ("POST", "/v1/payment_intents/{id}/confirm", confirm_payment_intent),
    ("POST", "/v1/payment_intents/{id}/cancel", cancel_payment_intent),
    ("POST", "/v1/charges", create_account_debit),
    ("GET", "/v1/charges", list_charges),
    ("GET", "/v1/charges/{id}", retrieve_charge),
    ("POST", "/v1/refunds", create_refund),
    ("GET", "/v1/refunds", list_refunds),
    ("GET", "/v1/refunds/{id}", retrieve_refund),
    ("GET", "/v1/events", list_events),
    ("POST", "/v1/webhook_endpoints", create_webhook_endpoint),
    ("GET", "/v1/webhook_endpoints", list_webhook_endpoints),
    ("DELETE", "/v1/webhook_endpoints/{id}", delete_webhook_endpoint),
    ("GET", "/v1/account", retrieve_account),
    ("GET", "/v1/balance", retrieve_balance),
]


# --- simulator-only controls (the common ones are in sandbox.common) -------------------------


async def sim_payment_intents(request: web.Request) -> web.Response:
    wanted = request.query.get("account")  # an acct_ id, as /_sim/state shows them
    return json_response({"object": "list", "data": [
        pi for account in stripe_state(request).accounts.values()
        if wanted in (None, account.id) for pi in account.payment_intents.values()]})


async def sim_settle_payment_intent(request: web.Request) -> web.Response:
    """A `processing` PaymentIntent (a bank debit) succeeds or fails, as the bank decides later."""
    state, pi_id = stripe_state(request), request.match_info["id"]
    found = [(a, a.payment_intents[pi_id]) for a in state.accounts.values() if pi_id in a.payment_intents]
    if not found:
        return json_response({"error": f"no such payment_intent: {pi_id}"}, 404)
    [(account, pi)] = found
    body = await common.read_json_object(request)
    status = body.get("status")
    if pi["status"] != "processing" or status not in ("succeeded", "failed"):
        return json_response({"error": 'a processing PaymentIntent, and {"status": "succeeded"|"failed"}'}, 409)
    if status == "succeeded":
        charge = new_charge(account, pi, None)
        pi.update(status="succeeded", latest_charge=charge["id"], amount_received=pi["amount"])
        state.emit(account, "charge.succeeded", charge)
        state.emit(account, "payment_intent.succeeded", pi)
    else:
        error = {"code": "payment_method_provider_decline", "message": "The bank declined the debit.",
                 "type": "card_error"}
        pi.update(status="requires_payment_method", payment_method=None, last_payment_error=error)
        state.emit(account, "payment_intent.payment_failed", pi)
    return json_response(pi)


async def sim_refund_status(request: web.Request) -> web.Response:
    state, refund_id = stripe_state(request), request.match_info["id"]
    found = [(a, a.refunds[refund_id]) for a in state.accounts.values() if refund_id in a.refunds]
    if not found:
        return json_response({"error": f"no such refund: {refund_id}"}, 404)
    try:
        body = await common.read_json_object(request)
        status = body.get("status")
        if status not in ("succeeded", "failed", "canceled"):
            raise ValueError('body must be {"status": "succeeded"|"failed"|"canceled"}')
        reason = body.get("failure_reason", "expired_or_canceled_card")
        if reason not in REFUND_FAILURE_REASONS:
            raise ValueError(f"failure_reason must be one of {', '.join(REFUND_FAILURE_REASONS)}")
    except ValueError as exc:
        return json_response({"error": str(exc)}, 400)
    [(account, refund)] = found
    try:
        return json_response(move_refund(state, account, refund, status, reason))
    except RefundMoveError as exc:
        return json_response({"error": str(exc)}, 409)


# --- app and runners -------------------------------------------------------------------------


def _endpoint(fn: Callable[[Call], dict]):
    async def handler(request: web.Request) -> web.Response:
        return json_response(fn(request[CALL]))
    return handler


def create_app() -> web.Application:
    app = common.sim_app(StripeState(), error_response=fault_error, middlewares=[stripe_api])
    for method, path, fn in API_ROUTES:
        app.router.add_route(method, path, _endpoint(fn))
    app.router.add_get("/_sim/payment_intents", sim_payment_intents)
    app.router.add_post("/_sim/payment_intents/{id}/settle", sim_settle_payment_intent)
    app.router.add_post("/_sim/refunds/{id}/status", sim_refund_status)
    return app


RunningStripeSim = Running  # its name before sandbox.common


async def start_stripe_sim(host: str = "127.0.0.1", port: int = 0) -> Running:
    return await common.start_sim(create_app, host, port)


def main(argv: list[str] | None = None) -> None:
    common.main(create_app, name="stripe_sim", default_port=12111, argv=argv)


if __name__ == "__main__":
    main()
