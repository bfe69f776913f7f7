"""Reconciliation: each active connection's payments at the processor in a window, compared with
`external_transactions` (`POST /reconcile`, and on a schedule in one replica at a time).

What the processor has and we lack is recorded through the ledger (with its `transaction.recorded`)
and marked `missing_local`; a different amount or status is `mismatch` (our record is not changed:
a person looks); the rest `matched`. Every compared row gets `reconciled_at`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from services.external import store
from services.external.domain import Recorded, Reported, reconcile
from services.external.ledger import Ledger
from services.external.processors import Adapters
from services.external.settings import ExternalSettings
from services.external.wire import ReconcileFinding, ReconcileIn, ReconcileReport
from shared.errors import ProblemError
from shared.observability import RECONCILIATION_FINDINGS
from shared.processors import base as p
from shared.service import ServiceRuntime

log = structlog.get_logger("external.reconciliation")


class ReconcileService:
    def __init__(self, runtime: ServiceRuntime, settings: ExternalSettings, adapters: Adapters,
                 ledger: Ledger) -> None:
        self.rt = runtime
        self.settings = settings
        self.adapters = adapters
        self.ledger = ledger

    async def run(self, body: ReconcileIn, *, now: datetime | None = None) -> ReconcileReport:
        now = now or datetime.now(UTC)
        until = body.until or now
        since = body.since or until - timedelta(hours=self.settings.reconcile_window_hours)
        async with self.rt.uow() as uow:
            connections = await store.active_connections(uow.session)
        if body.connection_id is not None:
            connections = [c for c in connections if c["id"] == body.connection_id]
        counts = {"matched": 0, "mismatch": 0, "missing_local": 0}
        findings: list[ReconcileFinding] = []
        failed: dict[str, str] = {}
        for connection in connections:
            if not self.settings.enabled(connection["processor_type"]):
                continue
            # One connection's trouble (its processor down, its secret unopenable, a bug) never
            # stops the others': it is reported as failed and the run goes on.
            try:
                reported = await self.adapters.for_connection(connection).list_payments(since, until)
                connection_findings = await self._connection(connection, reported, since, until, now)
            except p.ProcessorError as exc:
                failed[str(connection["id"])] = exc.message
                log.warning("reconcile_list_failed", connection_id=connection["id"], error=exc.message)
                continue
            except ProblemError as exc:
                failed[str(connection["id"])] = exc.detail
                log.warning("reconcile_connection_failed", connection_id=connection["id"], error=exc.detail)
                continue
            except Exception:
                log.exception("reconcile_connection_failed", connection_id=connection["id"])
                failed[str(connection["id"])] = "reconciling this connection failed; see the service log"
                continue
            for finding in connection_findings:
                counts[finding.verdict] += 1
                RECONCILIATION_FINDINGS.labels(connection["processor_type"], finding.verdict).inc()
                if finding.verdict != "matched":
                    findings.append(finding)
        report = ReconcileReport(since=since, until=until, connections=len(connections), **counts,
                                 failed_connections=failed, findings=findings)
        log.info("reconciled", connections=len(connections), **counts, failed=len(failed))
        return report

    async def _connection(self, connection: dict, reported: list[p.PaymentResult], since: datetime,
                          until: datetime, now: datetime) -> list[ReconcileFinding]:
        by_id = {r.processor_payment_id: r for r in reported}
        findings: list[ReconcileFinding] = []
        async with self.rt.uow() as uow:
            ours = await store.transactions_in_window(uow.session, connection["id"], since, until)
            # A payment the processor reports in the window may be ours from just outside it.
            known = {r["external_transaction_id"]: r for r in ours}
            for pid in by_id.keys() - known.keys():
                row = await store.transaction_by_processor_id(uow.session, connection["processor_type"], pid)
                if row is not None:
                    known[pid] = row
            verdicts = reconcile(
                [Recorded(pid, row["amount"], row["status"]) for pid, row in known.items()
                 if pid in by_id or row in ours],
                [Reported(r.processor_payment_id, r.amount, r.status) for r in reported],
            )
            for verdict in verdicts:
                row = known.get(verdict.processor_payment_id)
                if verdict.status == "missing_local":
                    row = await self.ledger.record_payment(uow, connection, by_id[verdict.processor_payment_id],
                                                           origin="reconciliation", now=now)
                assert row is not None
                await store.mark_reconciled(uow.session, row["id"], verdict.status, now)
                findings.append(ReconcileFinding(
                    connection_id=connection["id"], processor=connection["processor_type"],
                    external_transaction_id=verdict.processor_payment_id, verdict=verdict.status,
                    reason=verdict.reason, transaction_id=str(row["id"])))
            await store.update_connection(uow.session, connection["id"], {"last_sync_at": now})
            await uow.commit()
        return findings

    async def scheduled(self, now: datetime) -> None:
        await self.run(ReconcileIn(), now=now)
