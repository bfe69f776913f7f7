"""The external service, as the router sees it: charges and refunds on a barber's own processor
over the internal HTTP API (a `service` token). Its problems come back as `ProblemError`s."""

from __future__ import annotations

import uuid

from services.router.settings import RouterSettings
from services.router.store import DecisionRow
from shared.internal_api import (
    ChargeRequest,
    ExternalTransactionOut,
    InternalClient,
    RefundOutcome,
    RefundRequest,
)

# Problems after which the barber's processor surely did nothing (so the platform may pay instead).
NOTHING_HAPPENED = frozenset({"processor_unavailable", "connection_unusable", "upstream_unavailable"})


def nothing_happened(problem) -> bool:
    extra = problem.extra
    if "nothing_happened" in extra:
        return bool(extra["nothing_happened"])
    return bool(extra.get("unreachable")) and problem.code == "upstream_unavailable"


class ExternalPayments:
    def __init__(self, settings: RouterSettings) -> None:
        self._client = InternalClient(settings.external_service_url, jwt_secret=settings.jwt_secret,
                                      service_token=settings.service_token, timeout=settings.external_timeout)

    async def close(self) -> None:
        await self._client.close()

    async def charge(self, decision: DecisionRow, connection_id: int, payment_method: str) -> ExternalTransactionOut:
        """`decision`, an external route, on its connection `connection_id`."""
        body = ChargeRequest(
            route_id=decision.route_id, barber_id=decision.barber_id, connection_id=connection_id,
            appointment_id=decision.appointment_id, client_id=decision.client_id, amount=decision.amount,
            currency=decision.currency, commission_rate=decision.commission_rate,
            commission_amount=decision.commission_amount,
            estimated_processor_fee=decision.estimated_processor_fee, payment_method=payment_method,
        )
        return await self._client.call("POST", "/internal/v1/charges", body, result=ExternalTransactionOut)

    async def transaction(self, transaction_id: uuid.UUID) -> ExternalTransactionOut:
        return await self._client.call("GET", f"/internal/v1/transactions/{transaction_id}",
                                       result=ExternalTransactionOut)

    async def refund(self, transaction_id: uuid.UUID, refund_id: uuid.UUID, amount) -> tuple[int, RefundOutcome]:
        body = RefundRequest(transaction_id=transaction_id, refund_id=refund_id, amount=amount)
        outcome = await self._client.call("POST", "/internal/v1/refunds", body, result=RefundOutcome)
        return (200 if outcome.refund_status == "succeeded" else 202), outcome
