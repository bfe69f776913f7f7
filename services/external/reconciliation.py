"""Reconciliation: each active connection's payments and refunds at the processor in a window,
compared with ours (`POST /reconcile`, and on a schedule in one replica at a time).

What the processor says is its word (it was fetched, not claimed): a payment that took money and we
lack is recorded through the ledger (`missing_local`, with its `transaction.recorded`), a status it
moved on to is merged, a refund we lack or that moved is recorded, and the payment's refunded total
is compared before and after (`mismatch` naming the difference). A different amount is a `mismatch`
left for a person. Each finding is settled in its own transaction: one bad row (a bug, a guard that
refuses it) is reported as failed and never stops the others.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import structlog

from services.external import store
from services.external.domain import Recorded, Reported, Verdict, VerdictStatus, reconcile, refunds_differ
from services.external.ledger import Ledger
from services.external.processors import Adapters
from services.external.settings import ExternalSettings
from services.external.store import ConnectionRow, TransactionRow
from services.external.wire import (
    ReconcileFinding,
    ReconcileIn,
    ReconcileReport,
    ReconciliationRunOut,
    ReconciliationRunPage,
)
from shared.auth import Principal
from shared.errors import ProblemError
from shared.operations import audit
from shared.observability import RECONCILIATION_FINDINGS
from shared.pagination import page_of
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

    async def run(self, body: ReconcileIn, *, now: datetime | None = None, trigger: str = "operator",
                  actor: Principal | None = None) -> ReconcileReport:
        """Compare the window with what each processor reports; the run is kept with its counts and
        differences (`reconciliation_runs`, `GET /reconciliation-runs`), as of `now`."""
        now = now or datetime.now(UTC)
        until = body.until or now
        since = body.since or until - timedelta(hours=self.settings.reconcile_window_hours)
        async with self.rt.uow() as uow:
            connections = await store.active_connections(uow.session)
        if body.connection_id is not None:
            connections = [c for c in connections if c.id == body.connection_id]
        counts = {"matched": 0, "mismatch": 0, "missing_local": 0}
        findings: list[ReconcileFinding] = []
        failed: dict[str, str] = {}
        for connection in connections:
            if not self.settings.enabled(connection.processor_type):
                continue
            # One connection's trouble (its processor down, its secret unopenable, a bug) never
            # stops the others': it is reported as failed and the run goes on.
            try:
                adapter = self.adapters.for_connection(connection)
                reported = await adapter.list_payments(since, until)
                refunds = await adapter.list_refunds_between(since, until)
                connection_findings, broken = await self._connection(connection, reported, refunds, since, until, now)
            except p.ProcessorError as exc:
                failed[str(connection.id)] = exc.message
                log.warning("reconcile_list_failed", connection_id=connection.id, error=exc.message)
                continue
            except ProblemError as exc:
                failed[str(connection.id)] = exc.detail or exc.code
                log.warning("reconcile_connection_failed", connection_id=connection.id, error=exc.detail)
                continue
            if broken:
                failed[str(connection.id)] = f"{broken} finding(s) could not be settled; see the service log"
            for finding in connection_findings:
                counts[finding.verdict] += 1
                RECONCILIATION_FINDINGS.labels(connection.processor_type, finding.verdict).inc()
                if finding.verdict != "matched":
                    findings.append(finding)
        report = ReconcileReport(since=since, until=until, connections=len(connections), **counts,
                                 failed_connections=failed, findings=findings)
        async with self.rt.uow() as uow:
            report.run_id = await store.insert_reconciliation_run(uow.session, {
                "as_of": now, "finished_at": datetime.now(UTC), "since": since, "until": until,
                "connection_id": body.connection_id, "trigger": trigger, "connections": len(connections), **counts,
                "failed_connections": failed, "findings": msgspec.to_builtins(findings)})
            if actor is not None:
                audit(uow, actor, "reconciliation.run", f"reconciliation_run:{report.run_id}",
                      {"since": since, "until": until, "connection_id": body.connection_id},
                      {"matched": counts["matched"], "mismatch": counts["mismatch"],
                       "missing_local": counts["missing_local"], "failed_connections": len(failed)})
            await uow.commit()
        log.info("reconciled", connections=len(connections), **counts, failed=len(failed))
        return report

    async def _connection(self, connection: ConnectionRow, reported: list[p.PaymentResult],
                          refunds: list[p.RefundResult], since: datetime, until: datetime,
                          now: datetime) -> tuple[list[ReconcileFinding], int]:
        processor = connection.processor_type
        by_id = {r.processor_payment_id: r for r in reported}
        async with self.rt.uow() as uow:
            ours = await store.transactions_in_window(uow.session, connection.id, since, until)
            # A payment the processor reports in the window may be ours from just outside it.
            known = {r.external_transaction_id: r for r in ours}
            for pid in (by_id.keys() | {r.processor_payment_id for r in refunds}) - known.keys():
                row = await store.transaction_by_processor_id(uow.session, processor, pid)
                if row is not None and row.connection_id == connection.id:
                    known[pid] = row
        in_window = {r.external_transaction_id for r in ours}
        verdicts = reconcile(
            [Recorded(pid, row.amount, row.status) for pid, row in known.items()
             if pid in by_id or pid in in_window],
            [Reported(r.processor_payment_id, r.amount, r.status) for r in reported],
        )
        refunds_of: dict[str, list[p.RefundResult]] = {}
        for refund in refunds:
            refunds_of.setdefault(refund.processor_payment_id, []).append(refund)
        findings: list[ReconcileFinding] = []
        broken = 0
        # A verdict with nothing to merge and no refunds only marks its row: all of those go in one
        # transaction (one statement per verdict), not one transaction each (an hourly run over a
        # busy window was thousands of transactions: the suite's largest idle cost).
        marks: dict[uuid.UUID, str] = {}
        for verdict in verdicts:
            row = known.get(verdict.processor_payment_id)
            if (row is not None and not (verdict.apply and verdict.processor_payment_id in by_id)
                    and verdict.processor_payment_id not in refunds_of):
                marks[row.id] = verdict.status
                findings.append(_finding(connection, verdict.processor_payment_id, verdict.status, verdict.reason, row))
                continue
            try:
                findings.append(await self._settle(connection, verdict, by_id.get(verdict.processor_payment_id),
                                                   known.get(verdict.processor_payment_id),
                                                   refunds_of.pop(verdict.processor_payment_id, []), now))
            except Exception:
                broken += 1
                log.exception("reconcile_finding_failed", connection_id=connection.id,
                              processor_payment_id=verdict.processor_payment_id)
        # Refunds in the window of payments outside it (or of payments the verdicts left out).
        for pid, listed in refunds_of.items():
            if pid not in known:
                continue
            try:
                finding = await self._settle(connection, Verdict(pid, "matched"), None, known[pid], listed, now)
                if finding.verdict != "matched":
                    findings.append(finding)
            except Exception:
                broken += 1
                log.exception("reconcile_finding_failed", connection_id=connection.id, processor_payment_id=pid)
        async with self.rt.uow() as uow:
            await store.mark_many_reconciled(uow.session, marks, now)
            await store.update_connection(uow.session, connection.id, {"last_sync_at": now})
            await uow.commit()
        return findings, broken

    async def _settle(self, connection: ConnectionRow, verdict: Verdict, report: p.PaymentResult | None,
                      row: TransactionRow | None, refunds: list[p.RefundResult], now: datetime) -> ReconcileFinding:
        """One finding, in its own transaction: the processor's word merged where it is due, the
        refunds it lists recorded, and the row marked."""
        status: VerdictStatus = verdict.status
        reason = verdict.reason
        async with self.rt.uow() as uow:
            if verdict.apply and report is not None:
                recorded = await self.ledger.record_payment(uow, connection, report, origin="reconciliation", now=now)
                if recorded is None and row is None:
                    reason = "not recorded: several barbers connected this account; an operator attributes it"
                row = recorded or row
            if row is not None and refunds:
                before = row.refunded_amount
                for refund in refunds:
                    row = await self.ledger.record_refund(uow, connection, refund, now=now) or row
                if (difference := refunds_differ(before, row.refunded_amount)) is not None:
                    status = "mismatch" if status == "matched" else status
                    reason = "; ".join(x for x in (reason, difference) if x)
            if row is not None:
                await store.mark_reconciled(uow.session, row.id, status, now)
            await uow.commit()
        return _finding(connection, verdict.processor_payment_id, status, reason, row)

    async def scheduled(self, now: datetime) -> None:
        await self.run(ReconcileIn(), now=now, trigger="scheduled")

    async def history(self, *, connection_id: int | None, cursor: str | None, limit: int) -> ReconciliationRunPage:
        async with self.rt.uow() as uow:
            rows = await store.list_reconciliation_runs(uow.session, connection_id=connection_id, cursor=cursor,
                                                        limit=limit)
        page, next_cursor = page_of(rows, limit, lambda r: (r["as_of"], r["id"]))
        return ReconciliationRunPage(items=[msgspec.convert(r, ReconciliationRunOut) for r in page],
                                     next_cursor=next_cursor)


def _finding(connection: ConnectionRow, processor_payment_id: str, verdict: VerdictStatus, reason: str | None,
             row: TransactionRow | None) -> ReconcileFinding:
    return ReconcileFinding(connection_id=connection.id, processor=connection.processor_type,
                            external_transaction_id=processor_payment_id, verdict=verdict, reason=reason,
                            transaction_id=str(row.id) if row else None)
