"""Schemathesis against each service's own OpenAPI document: no request may end in a 5xx.

Each of the four services runs as a real process on a socket (see `conftest.Stack`), and its
`/schema/openapi.json` is fuzzed twice, once with an admin token and once with a barber's; the
external service's `/internal/` operations once more with a `service` token, as the router calls
them. The examples, coverage and fuzzing phases run (not the stateful one); the one check is
`not_a_server_error`. A failure names the operation, the status, the curl command that reproduces
it (token included: it is signed with this run's throwaway JWT secret) and the service's own log
lines for that request (matched by its `x-request-id`), traceback included.

The webhook receiver reads its body and signature headers raw, so its document declares neither:
fuzzed as it stands, its operation only ever gets empty POSTs for connections that do not exist.
So one connection per processor is made on the simulators first, and the document gets one more
webhook operation per processor, at that connection's URL, declaring a JSON event and that
processor's signature headers. Unsigned and badly signed events must be refused with a 4xx; half
of Stripe's and Square's events are sent signed right (the test knows those connections' secrets),
so that the event parsing behind the check is fuzzed too.

Bounded for `make test`: `FUZZ_MAX_EXAMPLES` (default 100, Hypothesis' own default) generated cases
per operation in the fuzzing phase, plus the schema's examples and the coverage phase's cases,
which are finite. Generation is deterministic (Hypothesis' `derandomize`) and the example database
is off, so every run sends the same requests: a failure reproduces on the next run and a green run
does not turn red by chance. `FUZZ_SEED=<int>` (or `FUZZ_SEED=random`) explores other inputs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup

from shared.auth import issue_token
from shared.processors.square import signature_for as square_signature_for
from shared.processors.square import transformers as square_tf
from shared.processors.stripe import transformers as stripe_tf
from tests.conftest import JWT_SECRET
from tests.fuzz.conftest import SERVICES, STATUSES, ServiceLog

ROLES = {"admin": 1000, "barber": 424242, "service": 1}
# Every schema as an admin and as a barber; the external service's `/internal/` operations (the
# router's charges and refunds, `service` tokens only) once more as the router would call them.
TARGETS = [(s, r) for s in SERVICES for r in ("admin", "barber")] + [("external", "service")]
INTERNAL_ONLY = {"operations": [{"exclude-path-regex": "^/internal/", "enabled": False}]}
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "100"))
REQUEST_TIMEOUT = 20.0
WEBHOOK_PATH = "/api/v1/webhooks/{processor}/{connection_id}"
WEBHOOK_SECRETS = {"stripe": "whsec_fuzz_webhook_secret", "square": "fuzz-square-signature-key"}
CREDENTIALS = {
    "stripe": lambda b: {"secret_key": f"sk_test_barber_{b}_own_account"},
    "square": lambda b: {"access_token": f"EAAAsq-barber-{b}-token", "location_id": f"LBARBER{b}"},
    "paypal": lambda b: {"client_id": f"AbarberClient{b}", "client_secret": f"EPaypalSecret-{b}-xyz"},
}


def _seed() -> int | None:
    raw = os.environ.get("FUZZ_SEED")
    if not raw:
        return None
    return random.SystemRandom().getrandbits(64) if raw == "random" else int(raw)


SEED = _seed()


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(JWT_SECRET, ROLES[role], role)}"}


@dataclass
class Target:
    service: str
    role: str
    url: str
    log: ServiceLog
    headers: dict[str, str]
    signers: dict[str, Callable] = field(default_factory=dict)  # webhook path -> right signature


@pytest.fixture(scope="module")
def webhook_connections(stack) -> dict[str, dict]:
    """One connection per processor, the fuzzing barber's, made on the simulators: the webhook
    receiver's signature checks run only for a real connection. Stripe's and Square's are given
    known webhook secrets, so that the test can also send correctly signed (fuzzed) events."""
    barber = ROLES["barber"]
    made = {}
    for processor, credentials in CREDENTIALS.items():
        response = requests.post(
            stack.url("external") + "/api/v1/external-payments/connections", headers=auth("barber"), timeout=30,
            json={"processor": processor, "account_id": f"{processor}-fuzz-{barber}",
                  "credentials": credentials(barber), "default_currency": "USD",
                  **({"webhook_secret": WEBHOOK_SECRETS[processor]} if processor in WEBHOOK_SECRETS else {})})
        assert response.status_code == 201, response.text
        made[processor] = response.json()
    return made


def _string(**extra) -> dict:
    return {"type": "string", **extra}


MONEY = {"type": "object", "properties": {"amount": {"type": "integer"}, "currency": _string()}}
# What each processor's events look like, loosely: enough for generated events to reach the
# parsing of payments and refunds behind the signature check (the negative cases break them).
EVENT_SCHEMAS = {
    "stripe": {"type": "object", "required": ["id", "type"], "properties": {
        "id": _string(), "created": {"type": "integer"},
        "type": {"enum": sorted(stripe_tf.PAYMENT_EVENTS | stripe_tf.REFUND_EVENTS) + ["customer.created"]},
        "data": {"type": "object", "properties": {"object": {"type": "object", "properties": {
            "object": {"enum": ["payment_intent", "refund"]}, "id": _string(), "amount": {"type": "integer"},
            "currency": _string(),
            "status": {"enum": sorted(stripe_tf.PAYMENT_INTENT_STATUS | stripe_tf.REFUND_STATUS)},
            "created": {"type": "integer"}, "payment_intent": _string(), "latest_charge": _string(),
            "metadata": {"type": "object", "properties": {stripe_tf.REFERENCE_KEY: _string()}},
        }}}},
    }},
    "square": {"type": "object", "required": ["event_id", "type"], "properties": {
        "merchant_id": _string(), "event_id": _string(),
        "type": {"enum": sorted(square_tf.PAYMENT_EVENTS | square_tf.REFUND_EVENTS) + ["customer.created"]},
        "created_at": _string(format="date-time"),
        "data": {"type": "object", "properties": {"object": {"type": "object", "properties": {
            "payment": {"type": "object", "properties": {
                "id": _string(), "status": _string(), "amount_money": MONEY, "created_at": _string(format="date-time"),
                "reference_id": _string()}},
            "refund": {"type": "object", "properties": {
                "id": _string(), "status": _string(), "payment_id": _string(), "amount_money": MONEY,
                "reference_id": _string()}},
        }}}},
    }},
    "paypal": {"type": "object", "required": ["id", "event_type"], "properties": {
        "id": _string(), "event_type": _string(), "create_time": _string(format="date-time"),
        "resource": {"type": "object", "properties": {"id": _string(), "status": _string(),
                                                      "amount": {"type": "object", "properties": {
                                                          "value": _string(), "currency_code": _string()}}}},
    }},
}
SIGNATURE_HEADERS = {
    "stripe": ["Stripe-Signature"],
    "square": ["x-square-hmacsha256-signature"],
    "paypal": ["paypal-transmission-id", "paypal-transmission-time", "paypal-transmission-sig",
               "paypal-cert-url", "paypal-auth-algo"],
}


def declare_webhooks(document: dict, connections: dict[str, dict]) -> dict[str, Callable]:
    """Next to the document's own webhook operation (left as it is: any processor name, any id),
    one per processor at its connection's URL, with the inputs the receiver reads raw: a JSON
    event and the processor's signature headers (required, so that PayPal's postback check,
    which wants all five, runs; the coverage phase still leaves each out). Returns, by path, how
    to sign a case's event right (Stripe's and Square's): half the events, picked by a hash of the
    body so that a failing case reproduces, are sent signed, to fuzz what lies behind the check."""
    operation = document["paths"][WEBHOOK_PATH]["post"]
    signers: dict[str, Callable] = {}
    for processor, connection in connections.items():
        path = f"/api/v1/webhooks/{processor}/{connection['id']}"
        document["paths"][path] = {"post": {
            **{k: v for k, v in operation.items() if k not in ("parameters", "operationId")},
            "operationId": f"fuzzWebhook{processor.title()}",
            "parameters": [{"name": name, "in": "header", "required": True, "schema": _string(minLength=1)}
                           for name in SIGNATURE_HEADERS[processor]],
            "requestBody": {"required": True, "content": {"application/json": {"schema": EVENT_SCHEMAS[processor]}}},
        }}
        if processor == "stripe":
            signers[path] = lambda body: {"Stripe-Signature": stripe_signature(body, WEBHOOK_SECRETS["stripe"])}
        elif processor == "square":
            signers[path] = lambda body, url=connection["webhook_url"]: {
                "x-square-hmacsha256-signature": square_signature_for(
                    body, signature_key=WEBHOOK_SECRETS["square"], notification_url=url)}
    return signers


def stripe_signature(body: bytes, secret: str) -> str:
    timestamp = int(time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def signed(case, signers: dict[str, Callable]) -> dict:
    """`case.call` arguments that send this case's event signed right, or none (sent as generated)."""
    signer = signers.get(case.operation.path)
    if signer is None or not isinstance(case.body, (dict, list)):
        return {}
    body = json.dumps(case.body).encode()
    if zlib.crc32(body) % 2:
        return {}
    return {"data": body, "headers": {"Content-Type": "application/json", **signer(body)}}


@pytest.fixture(params=TARGETS, ids=lambda p: f"{p[0]}-{p[1]}")
def fuzz_target(request, stack) -> Target:
    service, role = request.param
    return Target(service, role, stack.url(service), stack.logs[service], auth(role))


@pytest.fixture
def api_schema(request, fuzz_target: Target):
    response = requests.get(fuzz_target.url + "/schema/openapi.json", timeout=30)
    response.raise_for_status()
    document = response.json()
    if WEBHOOK_PATH in document["paths"] and fuzz_target.role != "service":
        fuzz_target.signers = declare_webhooks(document, request.getfixturevalue("webhook_connections"))
    config = schemathesis.Config.from_dict({
        **({"seed": SEED} if SEED is not None else {}),
        "base-url": fuzz_target.url,
        "headers": fuzz_target.headers,
        "request-timeout": REQUEST_TIMEOUT,
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "deterministic": SEED is None},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
        "checks": {"enabled": False, "not_a_server_error": {"enabled": True}},
        # A slow or heavily filtered operation is still tested, with what could be generated.
        "suppress-health-check": ["all"],
        # The curl in a failure is the exact request: the token is this run's, the bodies are fuzz.
        "output": {"sanitization": {"enabled": False}},
        **(INTERNAL_ONLY if fuzz_target.role == "service" else {}),
    })
    return schemathesis.openapi.from_dict(document, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_no_server_errors(case, fuzz_target: Target):
    # The role's Authorization header comes from the schema's config.
    response = case.call(**signed(case, fuzz_target.signers))
    STATUSES[fuzz_target.service, fuzz_target.role][response.status_code] += 1
    try:
        case.validate_response(response, checks=[not_a_server_error])
    except FailureGroup as exc:
        request_id = (response.headers.get("x-request-id") or [None])[0]
        exc.add_note(
            f"\n{fuzz_target.service} as {fuzz_target.role}: {case.method} {case.formatted_path} -> "
            f"{response.status_code}\n--- {fuzz_target.service} log for x-request-id {request_id} ---\n"
            + fuzz_target.log.traceback_for(request_id)
        )
        raise
