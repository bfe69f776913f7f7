"""The internal HTTP API between services (service token only): its wire types, and the client.

Today: the router asks the external service to charge and refund through a barber's own
processor (`POST /internal/v1/charges`, `POST /internal/v1/refunds`, `GET /internal/v1/transactions/{id}`).
One definition serves both sides, so a field cannot drift between the caller and the callee.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import aiohttp
import msgspec

from shared.auth import issue_token
from shared.balancing import Replicas
from shared.errors import ProblemError
from shared.requests import text

ChargeOutcome = Literal["completed", "pending", "failed", "canceled"]


# A processor payment-method token as stored: bounded, no control characters.
PaymentMethodText = text(255)

class ChargeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Charge a routed payment on the barber's own connection. `route_id` makes it idempotent:
    one live attempt per route, found again by a retry."""

    route_id: uuid.UUID
    barber_id: int
    connection_id: int
    appointment_id: int
    client_id: int | None = None
    amount: Decimal
    currency: str
    commission_rate: Decimal
    commission_amount: Decimal
    estimated_processor_fee: Decimal
    payment_method: PaymentMethodText


class RefundRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Refund an external transaction; `refund_id` (from the caller's idempotency) finds a retry."""

    transaction_id: uuid.UUID
    refund_id: uuid.UUID
    amount: Decimal | None = None


class ExternalTransactionOut(msgspec.Struct, kw_only=True):
    """An external transaction as the external service answers it (API and internal calls)."""

    id: uuid.UUID
    connection_id: int
    barber_id: int
    processor: Literal["stripe", "square", "paypal"]
    external_transaction_id: str | None
    appointment_id: int | None
    client_id: int | None
    route_id: uuid.UUID | None
    amount: str
    refunded_amount: str
    currency: str
    status: str
    processor_fee: str
    commission_rate: str
    commission_amount: str
    failure_code: str | None
    failure_reason: str | None
    processed_at: datetime | None
    created_at: datetime
    reconciliation_status: str | None
    reconciled_at: datetime | None


class RefundOutcome(msgspec.Struct, kw_only=True):
    transaction: ExternalTransactionOut
    refund_id: uuid.UUID
    refund_status: Literal["pending", "succeeded", "failed"]
    refund_amount: str
    failure_reason: str | None = None


_encoder = msgspec.json.Encoder(decimal_format="string")


class InternalClient:
    """Calls another service's internal API with a service token; its problems come back as
    `ProblemError`s with the callee's status and code (and `unreachable` when there is no answer)."""

    def __init__(self, base_url: str, *, jwt_secret: str | None, service_token: str | None = None,
                 timeout: float = 30.0, service_user_id: int = 1) -> None:
        self._replicas = Replicas(base_url)  # one URL, or the callee's replicas (comma separated)
        self._secret = jwt_secret
        self._static_token = service_token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._user = service_user_id
        self._session: aiohttp.ClientSession | None = None

    def _token(self) -> str:
        if self._static_token:
            return self._static_token
        if not self._secret:
            raise ProblemError(503, "service_token_missing",
                               "set SERVICE_TOKEN (RS256 deployments cannot mint service tokens)")
        return issue_token(self._secret, self._user, "service", ttl_seconds=300)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, path: str, body: Any = None, *, result: type | None = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"Bearer {self._token()}", "Content-Type": "application/json"}
        data = None if body is None else _encoder.encode(body)
        bases = self._replicas.order()
        for attempt, base in enumerate(bases, 1):
            try:
                async with self._session.request(method, base + path, data=data, headers=headers) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
                break
            except TimeoutError:
                raise ProblemError(504, "upstream_timeout", f"{path}: the external service did not answer in time",
                                   unreachable=False) from None
            except aiohttp.ClientConnectorError as exc:
                if attempt < len(bases):  # nothing was sent: the next replica may take it
                    continue
                raise ProblemError(503, "upstream_unavailable",
                                   f"{path}: cannot reach the service: {type(exc).__name__}", unreachable=True) from None
            except aiohttp.ClientError as exc:
                # Hung up without an answer (a replica shutting down closes a kept-alive connection
                # as a call goes out on it). Every call here is repeatable (a charge is one attempt
                # per route id, a refund one per refund id, the rest are reads): the next replica.
                if isinstance(exc, aiohttp.ServerDisconnectedError) and attempt < len(bases):
                    continue
                raise ProblemError(502, "upstream_unavailable", f"{path}: the connection broke: {type(exc).__name__}",
                                   unreachable=False) from None
        if status in (401, 403):  # our own token was refused: a deployment problem, not the caller's
            raise ProblemError(502, "upstream_misconfigured",
                               f"{path}: the service refused this service's token (check SERVICE_TOKEN / JWT_SECRET)")
        if status >= 400:
            try:
                problem = msgspec.json.decode(raw)
                code, detail = problem.pop("code", "upstream_error"), problem.pop("detail", None)
                for name in ("type", "title", "status"):
                    problem.pop(name, None)
            except (msgspec.DecodeError, AttributeError):
                code, detail, problem = "upstream_error", raw[:200].decode(errors="replace"), {}
            # Retry-After passes on: "come back later" stays that for the caller's caller (and is not
            # remembered as the answer of its Idempotency-Key).
            raise ProblemError(status, code, detail, headers={"Retry-After": retry_after} if retry_after else None,
                               **problem)
        return msgspec.json.decode(raw, type=result) if result is not None else msgspec.json.decode(raw)
