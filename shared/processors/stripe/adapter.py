"""Stripe through the official SDK's async client, behind the processor interface.

One adapter per Stripe account: the platform's (centralized payments as destination charges with
an application fee; collections) or a barber's own (external payments). The API base is
configurable so tests and the sandbox talk to the local simulator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import stripe

from shared.config import PlatformStripeSettings
from shared.processors.base import (
    AccountInfo,
    InvalidCredentials,
    InvalidSignature,
    NotFound,
    OutcomeUnknown,
    PaymentDeclined,
    PaymentRequest,
    PaymentResult,
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
from shared.processors.stripe import transformers as tf

# The SDK's request telemetry (each request's headers carry the previous one's latency and a
# platform description it builds afresh each time) is off: the payment path reports its own
# latency (`processor_request_seconds`), and it was ~2 % of the router's CPU per payment.
stripe.enable_telemetry = False

DEFAULT_API_BASE = "https://api.stripe.com"
SIGNATURE_TOLERANCE_SECONDS = 300
WEBHOOK_EVENTS = list(tf.WEBHOOK_EVENT_TYPES)
_PAGE = 100


@dataclass(frozen=True)
class StripeCredentials:
    secret_key: Secret

    @property
    def hint(self) -> str:
        return self.secret_key.hint


class StripeProcessor:
    name: ProcessorName = "stripe"

    def __init__(self, credentials: StripeCredentials, *, api_base: str = DEFAULT_API_BASE,
                 timeout: float = 10.0) -> None:
        self._credentials = credentials
        self._api_base = api_base
        self._timeout = timeout
        self._http: stripe.AIOHTTPClient | None = None
        self._client: stripe.StripeClient | None = None

    def __repr__(self) -> str:
        return f"StripeProcessor({self._credentials.hint}, {self._api_base})"

    def _stripe(self) -> stripe.StripeClient:
        # Built lazily, inside the running loop: the aiohttp session belongs to it.
        if self._client is None:
            self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=self._timeout))
            self._client = stripe.StripeClient(
                self._credentials.secret_key.reveal(),
                base_addresses={"api": self._api_base},
                http_client=self._http,
                max_network_retries=0,  # retries are ours, with our idempotency keys
            )
        return self._client

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()
            self._http = self._client = None

    # ---- the interface ----------------------------------------------------------------------

    async def check_credentials(self) -> AccountInfo:
        raw = await self._object("check_credentials", "get", "/v1/account")
        currency = raw.get("default_currency")
        return AccountInfo(account_id=raw["id"], default_currency=currency.upper() if currency else None)

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        if request.payment_method.startswith("acct_"):
            # Never through here: a caller-given "payment method" must not debit anyone's account.
            raise ProcessorRequestError("payment_method: a Connect account is not a payment method")
        currency = request.currency
        params: dict[str, Any] = {
            "amount": tf.stripe_units(request.amount, currency),
            "currency": currency.lower(),
            "payment_method": request.payment_method,
            "confirm": True,
            "payment_method_types": ["card"],
            "metadata": {**request.metadata, tf.REFERENCE_KEY: request.reference},
        }
        if request.description:
            params["description"] = request.description
        if request.customer:
            params["customer"] = request.customer
        if request.off_session:
            params["off_session"] = True
        if request.platform_fee is not None:
            params["application_fee_amount"] = tf.stripe_units(request.platform_fee, currency)
        if request.destination:
            params["transfer_data"] = {"destination": request.destination}
        return tf.payment_result(await self._object("create_payment", "post", "/v1/payment_intents", params,
                                                    idempotency_key=request.idempotency_key))

    async def debit_connected_account(self, request: PaymentRequest) -> PaymentResult:
        """A Connect platform debiting a connected account (`source=acct_...`, the Charges API):
        how collections takes commission from a barber with no card on file. Deliberately not
        reachable through `create_payment`, where the payment method comes from a caller."""
        if not request.payment_method.startswith("acct_"):
            raise ProcessorRequestError("only a connected account (acct_...) can be debited")
        params: dict[str, Any] = {
            "amount": tf.stripe_units(request.amount, request.currency), "currency": request.currency.lower(),
            "source": request.payment_method, "metadata": {**request.metadata, tf.REFERENCE_KEY: request.reference},
        }
        if request.description:
            params["description"] = request.description
        return tf.charge_result(await self._object("debit_connected_account", "post", "/v1/charges", params,
                                                   idempotency_key=request.idempotency_key))

    async def retrieve_payment(self, processor_payment_id: str) -> PaymentResult:
        return tf.payment_result(await self._object("retrieve_payment", "get",
                                                    f"/v1/payment_intents/{_id(processor_payment_id)}"))

    async def retrieve_debit(self, processor_debit_id: str) -> PaymentResult:
        return tf.charge_result(await self._object("retrieve_debit", "get", f"/v1/charges/{_id(processor_debit_id)}"))

    async def list_debits(self, since: datetime, until: datetime) -> list[PaymentResult]:
        """Connected-account debits (charges whose source is an account) created in [since, until)."""
        window = {"created": {"gte": int(since.timestamp()), "lt": int(until.timestamp()) + 1}}
        rows = await self._all("list_debits", "/v1/charges", window)
        return [tf.charge_result(r) for r in rows
                if (r.get("source") or {}).get("object") == "account"
                and since.timestamp() <= r["created"] < until.timestamp() + 1]

    async def refund(self, request: RefundRequest) -> RefundResult:
        params: dict[str, Any] = {
            "payment_intent": request.processor_payment_id,
            "amount": tf.stripe_units(request.amount, request.currency),
            "metadata": {tf.REFERENCE_KEY: request.reference},
        }
        if request.reverse_platform_fee:
            # A destination charge: the barber's transfer and the platform's fee are reversed in proportion.
            params.update(reverse_transfer=True, refund_application_fee=True)
        return tf.refund_result(await self._object("refund", "post", "/v1/refunds", params,
                                                   idempotency_key=request.idempotency_key))

    async def retrieve_refund(self, processor_refund_id: str) -> RefundResult:
        return tf.refund_result(await self._object("retrieve_refund", "get", f"/v1/refunds/{_id(processor_refund_id)}"))

    async def list_refunds(self, processor_payment_id: str) -> list[RefundResult]:
        rows = await self._all("list_refunds", "/v1/refunds", {"payment_intent": processor_payment_id})
        return [tf.refund_result(r) for r in rows]

    async def list_refunds_between(self, since: datetime, until: datetime) -> list[RefundResult]:
        window = {"created": {"gte": int(since.timestamp()), "lt": int(until.timestamp()) + 1}}
        rows = await self._all("list_refunds", "/v1/refunds", window)
        return [tf.refund_result(r) for r in rows if since.timestamp() <= r["created"] < until.timestamp() + 1]

    async def list_payments(self, since: datetime, until: datetime) -> list[PaymentResult]:
        window = {"created": {"gte": int(since.timestamp()), "lt": int(until.timestamp()) + 1}}
        rows = await self._all("list_payments", "/v1/payment_intents", window)
        return [tf.payment_result(r) for r in rows if since.timestamp() <= r["created"] < until.timestamp() + 1]

    async def register_webhook(self, url: str) -> WebhookRegistration:
        raw = await self._object("register_webhook", "post", "/v1/webhook_endpoints",
                                 {"url": url, "enabled_events": WEBHOOK_EVENTS})
        return WebhookRegistration(endpoint_id=raw["id"], secret=Secret(raw["secret"]))

    async def verify_webhook(self, body: bytes, headers: Mapping[str, str], *, secret: Secret,
                             url: str) -> None:
        try:
            stripe.WebhookSignature.verify_header(body, headers.get("Stripe-Signature"), secret.reveal(),
                                                  tolerance=SIGNATURE_TOLERANCE_SECONDS)
        except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
            raise InvalidSignature(f"Stripe-Signature: {_first_sentence(str(exc))}") from None

    def parse_webhook(self, body: bytes) -> WebhookEvent:
        try:
            event = json.loads(body)
            return tf.webhook_event(event)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProcessorRequestError(f"not a Stripe event: {exc}") from None

    # ---- plumbing -----------------------------------------------------------------------------

    async def _all(self, operation: str, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every page of a Stripe list (newest first), following `starting_after`."""
        rows: list[dict[str, Any]] = []
        page: dict[str, Any] = {"limit": _PAGE}
        while True:
            listing = await self._object(operation, "get", path, {**params, **page})
            rows.extend(listing["data"])
            if not listing.get("has_more") or not listing["data"]:
                return rows
            page = {"limit": _PAGE, "starting_after": listing["data"][-1]["id"]}

    async def _object(self, operation: str, method: str, path: str, params: dict[str, Any] | None = None, *,
                      idempotency_key: str | None = None) -> dict[str, Any]:
        """One API call through the SDK's raw-request API (`StripeClient.raw_request_async`: the
        same requestor, headers, form encoding, API version and error types as `client.v1...`),
        answered as the JSON object Stripe sent. The typed calls build a tree of StripeObjects from
        every answer, which this adapter at once turned back into dicts: a seventh of the router's
        CPU per route-and-pay (tests/load/README.md)."""
        options = {"idempotency_key": idempotency_key} if idempotency_key else {}
        response = await self._call(operation, lambda c: c.raw_request_async(method, path, **(params or {}),
                                                                              **options))
        return response.data

    async def _call(self, operation: str, request):
        """One SDK call, timed as `operation`, its errors turned into the interface's."""
        with timed(self.name, operation):
            return await self._mapped(request)

    async def _mapped(self, request):
        try:
            return await request(self._stripe())
        except stripe.CardError as exc:
            error = (exc.json_body or {}).get("error", {})
            intent = error.get("payment_intent") or {}
            raise PaymentDeclined(
                error.get("message") or exc.user_message or str(exc),
                code=error.get("decline_code") or error.get("code"),
                processor_payment_id=intent.get("id") if isinstance(intent, dict) else None,
                raw=exc.json_body or {},
            ) from None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise InvalidCredentials(exc.user_message or "Stripe refused the API key") from None
        except stripe.APIConnectionError as exc:
            raise _connection_error(exc) from None
        except stripe.RateLimitError as exc:  # refused before doing anything
            raise ProcessorUnavailable("Stripe rate limited the request", raw=exc.json_body or {}) from None
        except stripe.APIError as exc:  # a 5xx: Stripe may have done part of it
            raise OutcomeUnknown(f"Stripe failed: {exc.user_message or exc}", raw=exc.json_body or {}) from None
        except stripe.IdempotencyError as exc:
            if exc.http_status == 409:  # the same key is still being processed
                raise OutcomeUnknown("Stripe is still processing this request", raw=exc.json_body or {}) from None
            # The key was used with other parameters: that first request reached Stripe and may
            # have been done. Not a refusal of this payment: find it by reference.
            raise OutcomeUnknown(f"Stripe has this key from a request with other parameters: {exc.user_message or exc}",
                                 code="idempotency_error", raw=exc.json_body or {}) from None
        except stripe.InvalidRequestError as exc:
            error = exc.error
            kind = NotFound if exc.http_status == 404 else ProcessorRequestError
            raise kind(exc.user_message or str(exc), code=error.code if error else None,
                       raw=exc.json_body or {}) from None
        except stripe.StripeError as exc:  # any other refusal
            error = exc.error
            raise ProcessorRequestError(
                exc.user_message or str(exc), code=error.code if error else None, raw=exc.json_body or {}
            ) from None


def platform_stripe(settings: PlatformStripeSettings) -> StripeProcessor | None:
    """The platform account's adapter, or None when no key is configured."""
    if not settings.stripe_secret_key:
        return None
    return StripeProcessor(StripeCredentials(Secret(settings.stripe_secret_key)),
                           api_base=settings.stripe_api_base, timeout=settings.stripe_timeout)


def _connection_error(exc: stripe.APIConnectionError) -> Exception:
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError):  # no connection was made: nothing was sent
        return ProcessorUnavailable(f"Stripe could not be reached: {type(cause).__name__}")
    if isinstance(cause, TimeoutError) or "timeout" in str(exc).lower() or "timed out" in str(exc).lower():
        return ProcessorTimeout("Stripe did not answer in time")
    # Sent, then the connection broke: Stripe may or may not have processed it.
    return OutcomeUnknown(f"the connection to Stripe broke after sending: {type(cause).__name__ if cause else exc}")


def _id(value: str) -> str:
    """An object id as a path segment (as the SDK's own `sanitize_id` quotes it)."""
    return quote_plus(value)


def _first_sentence(text: str) -> str:
    return text.split(". ", 1)[0].rstrip(".")
