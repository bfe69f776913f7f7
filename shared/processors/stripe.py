"""Stripe through the official SDK's async client: payments (optionally as destination charges
with an application fee), refunds, and the exhaustive status mapping.

The API base is configurable so tests and the sandbox talk to the local simulator.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import stripe

from shared.processors.base import (
    InvalidCredentials,
    PaymentDeclined,
    PaymentResult,
    PaymentStatus,
    ProcessorRequestError,
    ProcessorTimeout,
    ProcessorUnavailable,
    RefundResult,
    RefundStatus,
    Secret,
)

# Every PaymentIntent status Stripe documents, mapped; an unknown one is an error, not a guess.
_PI_STATUS: dict[str, PaymentStatus] = {
    "succeeded": "completed",
    "processing": "pending",
    "requires_payment_method": "failed",
    "requires_confirmation": "pending",
    "requires_action": "pending",
    "requires_capture": "pending",
    "canceled": "canceled",
}
_REFUND_STATUS: dict[str, RefundStatus] = {
    "succeeded": "succeeded",
    "pending": "pending",
    "requires_action": "pending",
    "failed": "failed",
    "canceled": "failed",
}


def payment_status(stripe_status: str) -> PaymentStatus:
    try:
        return _PI_STATUS[stripe_status]
    except KeyError:
        raise ProcessorRequestError(f"unknown PaymentIntent status {stripe_status!r}") from None


class StripeGateway:
    def __init__(self, secret_key: Secret, *, api_base: str = "https://api.stripe.com", timeout: float = 10.0) -> None:
        self._key = secret_key
        self._api_base = api_base
        self._timeout = timeout
        self._http: stripe.AIOHTTPClient | None = None
        self._client: stripe.StripeClient | None = None

    def _stripe(self) -> stripe.StripeClient:
        # Built lazily, inside the running loop: the aiohttp session belongs to it.
        if self._client is None:
            self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=self._timeout))
            self._client = stripe.StripeClient(
                self._key.reveal(),
                base_addresses={"api": self._api_base},
                http_client=self._http,
                max_network_retries=0,  # retries are ours, with our idempotency keys
            )
        return self._client

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()
            self._http = self._client = None

    async def create_payment(
        self,
        *,
        amount_minor: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
        application_fee_minor: int | None = None,
        destination: str | None = None,
        metadata: dict[str, str] | None = None,
        description: str | None = None,
    ) -> PaymentResult:
        params: dict[str, Any] = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "payment_method": payment_method,
            "confirm": True,
            "payment_method_types": ["card"],
            "metadata": metadata or {},
        }
        if description:
            params["description"] = description
        if application_fee_minor is not None:
            params["application_fee_amount"] = application_fee_minor
        if destination:
            params["transfer_data"] = {"destination": destination}
        intent = await self._call(
            lambda c: c.v1.payment_intents.create_async(params=params, options={"idempotency_key": idempotency_key})
        )
        return self._result(intent)

    async def retrieve_payment(self, payment_intent_id: str) -> PaymentResult:
        return self._result(await self._call(lambda c: c.v1.payment_intents.retrieve_async(payment_intent_id)))

    async def refund(
        self, *, payment_intent_id: str, amount_minor: int, idempotency_key: str, destination_charge: bool = False
    ) -> RefundResult:
        params: dict[str, Any] = {"payment_intent": payment_intent_id, "amount": amount_minor}
        if destination_charge:
            # The barber's transfer and the platform's fee are both reversed in proportion.
            params.update(reverse_transfer=True, refund_application_fee=True)
        refund = await self._call(
            lambda c: c.v1.refunds.create_async(params=params, options={"idempotency_key": idempotency_key})
        )
        status = _REFUND_STATUS.get(refund.status)
        if status is None:
            raise ProcessorRequestError(f"unknown refund status {refund.status!r}")
        return RefundResult(refund.id, status, refund.amount, raw=refund.to_dict())

    async def check_credentials(self) -> None:
        await self._call(lambda c: c.v1.balance.retrieve_async())

    async def _call(self, request):
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
        except stripe.AuthenticationError as exc:
            raise InvalidCredentials(exc.user_message or "Stripe refused the API key") from None
        except stripe.APIConnectionError as exc:
            if isinstance(exc.__cause__, TimeoutError) or "timed out" in str(exc).lower() or "timeout" in str(
                exc
            ).lower():
                raise ProcessorTimeout("Stripe did not answer in time") from None
            raise ProcessorUnavailable(f"Stripe could not be reached: {exc.user_message or exc}") from None
        except stripe.RateLimitError as exc:
            raise ProcessorUnavailable("Stripe rate limited the request", raw=exc.json_body or {}) from None
        except stripe.APIError as exc:
            raise ProcessorUnavailable(f"Stripe failed: {exc.user_message or exc}", raw=exc.json_body or {}) from None
        except stripe.StripeError as exc:  # invalid request, idempotency mismatch, permission
            error = exc.error
            raise ProcessorRequestError(
                exc.user_message or str(exc), code=error.code if error else None, raw=exc.json_body or {}
            ) from None

    @staticmethod
    def _result(intent) -> PaymentResult:
        raw = intent.to_dict()
        charge = raw.get("latest_charge")
        charge_id = charge.get("id") if isinstance(charge, dict) else charge
        return PaymentResult(raw["id"], payment_status(raw["status"]), charge_id, raw=raw)
