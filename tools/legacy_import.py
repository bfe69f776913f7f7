"""Import a BookedBarber V2 database into the suite (the migration guide's data migration).

    python -m tools.legacy_import --legacy-dsn postgresql://...      (make import LEGACY_DSN=...)

What it carries over, and what it skips, is `services.router.legacy` (pure). This is the adapter:

1. Barbers: every `users` row with role `barber` gets a router config (centralized, fallback on),
   written with its `config.changed` event through the router's outbox. A barber who already has
   a config in the suite keeps it: the import never undoes a change made after the migration.
2. Payments, in legacy id order, in batches: each batch is one transaction of the router's
   database: the payments (bulk `COPY` into a session-local table, then one `INSERT ... ON CONFLICT
   (legacy_id)`), a `transaction.imported` outbox row per 500 of them that are new or changed in the
   legacy database since the last run (each carrying their `transaction.recorded` payloads, source
   `legacy`; bulk `COPY`), the skipped rows with their reasons, and the
   run's checkpoint (the last legacy id of the batch). A crash loses nothing and doubles nothing:
   the next run resumes after the checkpoint of the unfinished run, and a finished run's re-run
   rewrites nothing that has not changed (rows are keyed on the legacy id, their transaction ids
   derived from it). The router's outbox relay publishes the events; nothing is published from here.
3. Reconciliation: per barber, the count, amount and refunded sum of the legacy payments that
   should have been carried over, against the router's imported rows and against analytics' legacy
   figures (it waits, up to `--analytics-timeout` seconds, for analytics to catch up). Every legacy
   payment must be imported or listed as skipped. Any difference is printed, naming the barber and
   the figure, and the exit status is 1. The report (also saved with the run, for `make validate`,
   and as JSON beside the `.run` state) lists the skipped rows by reason.

The suite's database is `--database-url`, else `DATABASE_URL`, else the one `make run` recorded;
analytics' is `--analytics-database-url`, else the same. The router's settings
(`DEFAULT_COMMISSION_RATE`, `COMMISSION_COLLECTION_FREQUENCY`, `EVENT_SUBJECT_PREFIX`, ...) are
read from the environment and `.env` as the router reads them (the subject prefix, else as `make run`
recorded it: the events must go where the services listen).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import uvloop
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from services.router.legacy import (
    Difference,
    LegacyBarber,
    LegacyPayment,
    Skip,
    Totals,
    V2PaymentRow,
    V2UserRow,
    barber_of,
    differences,
    payment_of,
    transaction_recorded,
)
from services.router.mapping import config_changed, config_out
from services.router.routing import default_config_row
from services.router.settings import RouterSettings
from services.router.store import ConfigRow
from shared.config import SettingsError, libpq_url, load_settings
from shared.db import Stage
from shared.events import (
    IMPORTED_PER_EVENT,
    EventPayload,
    TransactionImported,
    TransactionRecorded,
    encode_event,
    new_event,
)
from shared.money import minor_unit_exponent, normalise_currency
from shared.scheduler import lock_key
from tools.runstate import ROOT, pick_database_url, pick_event_names

REPORT_DIR = ROOT / ".run"
IMPORT_LOCK = lock_key("legacy-import")
SKIP_IDS_SHOWN = 20
PAYMENT_COLUMNS = (
    "transaction_id", "legacy_id", "barber_id", "appointment_id", "client_id", "amount", "refunded_amount",
    "currency", "status", "commission_rate", "commission_amount", "processor_fee", "stripe_payment_intent_id",
    "processed_at", "version",
)
# The figures a legacy row's change since the last run is judged by (a barber's rate changing in V2
# later does not rewrite the history imported at the old rate).
TRACKED = ("barber_id", "appointment_id", "client_id", "amount", "refunded_amount", "status",
           "stripe_payment_intent_id", "processed_at")
# The money columns travel as exact text (`shared.db.Stage`): `prepare` makes them strings.
STAGE = Stage("legacy_batch", "router.legacy_payments", PAYMENT_COLUMNS,
              ("amount", "refunded_amount", "commission_rate", "commission_amount", "processor_fee"))
UPSERT = f"""
INSERT INTO router.legacy_payments AS p ({", ".join(PAYMENT_COLUMNS)}, imported_at)
SELECT {STAGE.select}, now() FROM legacy_batch
ON CONFLICT (legacy_id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in PAYMENT_COLUMNS if c not in ("transaction_id", "legacy_id", "version"))},
    version = p.version + 1, imported_at = now()
WHERE ({", ".join(f"p.{c}" for c in TRACKED)}) IS DISTINCT FROM ({", ".join(f"excluded.{c}" for c in TRACKED)})
RETURNING p.legacy_id, p.version
"""


@dataclass(frozen=True)
class Batch:
    """A fetched batch of legacy payments, ready to write: COPY records, the skipped rows, and each
    payment's event at version 1 (a payment changed since an earlier run gets its version on write)."""

    last_id: int  # the checkpoint once it is written
    size: int
    records: list[tuple]
    skips: list[Skip]
    events: dict[int, TransactionRecorded]


class LegacyImportError(RuntimeError):
    """The import cannot go on (the message says why); nothing of the failed batch was written."""


@dataclass
class Report:
    run_id: int
    source: str
    resumed_from: int
    barbers_in_legacy: int = 0
    barbers_configured: int = 0  # configs this run created
    payments_in_legacy: int = 0
    payments_imported: int = 0  # rows in the suite after the run
    payments_written: int = 0  # new or changed in this run (one event each)
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)  # reason -> count, table, first ids
    differences: list[str] = field(default_factory=list)
    analytics: str = "not checked"
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.differences


def source_name(dsn: str) -> str:
    """The legacy database as a run records it: host, port and name, never the password."""
    url = urlsplit(dsn)
    return f"{url.hostname or 'localhost'}:{url.port or 5432}{url.path or '/'}"


def outbox_record(payload: EventPayload, prefix: str) -> tuple:
    event = new_event(payload)
    return (event.event_id, prefix + event.event_type, event.event_type, encode_event(event))


async def compress_with_lz4(conn: asyncpg.Connection) -> None:
    """This session's outbox bodies (`transaction.imported`, ~250 KB each) compressed with lz4
    rather than Postgres' default pglz, which took 26-35 ms of a batch's ten bodies against lz4's
    10-12 (measured alone). Only this connection's; a server built without lz4 keeps pglz."""
    with contextlib.suppress(asyncpg.PostgresError):
        await conn.execute("SET default_toast_compression = 'lz4'")


class LegacyImport:
    def __init__(self, legacy: asyncpg.Connection, suite: asyncpg.Connection, settings: RouterSettings, *,
                 currency: str, batch_size: int, console: Console) -> None:
        self.legacy = legacy
        self.suite = suite
        self.settings = settings
        self.currency = currency
        self.batch_size = batch_size
        self.console = console
        self.prefix = settings.event_subject_prefix

    # ---- the run and its checkpoint ------------------------------------------------------------------

    async def open_run(self, source: str) -> tuple[int, int]:
        """The unfinished run for this source (resumed after its checkpoint), else a new one."""
        async with self.suite.transaction():
            row = await self.suite.fetchrow(
                "SELECT id, checkpoint FROM router.legacy_imports WHERE source = $1 AND status = 'running' FOR UPDATE",
                source)
            if row is not None:
                return row["id"], row["checkpoint"]
            run_id = await self.suite.fetchval(
                "INSERT INTO router.legacy_imports (source, status, checkpoint) VALUES ($1, 'running', 0) RETURNING id",
                source)
            # Skips describe the latest run; a row skipped before and imported now is no longer one.
            await self.suite.execute("DELETE FROM router.legacy_import_skips")
            return run_id, 0

    # ---- barbers -----------------------------------------------------------------------------------

    async def import_barbers(self, run_id: int) -> tuple[dict[int, Decimal], int, int, list[Skip]]:
        rows = await self.legacy.fetch(
            "SELECT id, commission_rate, stripe_account_id FROM users WHERE lower(role::text) = 'barber' ORDER BY id")
        barbers: list[LegacyBarber] = []
        skips: list[Skip] = []
        for row in rows:
            outcome = barber_of(V2UserRow(**row), self.settings.default_commission_rate)
            if isinstance(outcome, LegacyBarber):
                barbers.append(outcome)
            else:
                skips.append(outcome)
        now = datetime.now(UTC)
        created = 0
        async with self.suite.transaction():
            for barber in barbers:
                config = msgspec.structs.replace(
                    default_config_row(self.settings, barber.barber_id), payment_mode="centralized",
                    fallback_enabled=True, commission_rate=barber.commission_rate,
                    connect_account_id=barber.connect_account_id, effective_from=now, created_at=now,
                    updated_at=now, version=1)
                # Every column but the id, which the table's identity gives.
                values = {k: v for k, v in msgspec.structs.asdict(config).items() if k != "id"}
                columns = list(values)
                saved = await self.suite.fetchrow(
                    f"INSERT INTO router.hybrid_payment_configs ({', '.join(columns)}) "
                    f"VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))}) "
                    "ON CONFLICT (barber_id) DO NOTHING RETURNING *", *values.values())
                if saved is not None:
                    created += 1
                    out = config_out(ConfigRow(**saved), is_default=False)
                    await self._write_outbox([outbox_record(config_changed(out), self.prefix)])
            await self._write_skips(run_id, skips)
        return {b.barber_id: b.commission_rate for b in barbers}, len(rows), created, skips

    # ---- payments ----------------------------------------------------------------------------------

    async def payments_after(self, checkpoint: int) -> int:
        return await self.legacy.fetchval("SELECT count(*) FROM payments WHERE id > $1", checkpoint)

    async def fetch_batch(self, after: int, with_clients: bool) -> list[asyncpg.Record]:
        client = "a.client_id" if with_clients else "NULL::bigint AS client_id"
        join = "LEFT JOIN appointments a ON a.id = p.appointment_id" if with_clients else ""
        return await self.legacy.fetch(
            f"SELECT p.id, p.barber_id, p.appointment_id, p.amount, p.status::text AS status, "
            f"p.stripe_payment_intent_id, p.created_at, {client} FROM payments p {join} "
            "WHERE p.id > $1 ORDER BY p.id LIMIT $2",
            after, self.batch_size)

    def prepare(self, rows: list[asyncpg.Record], rates: Mapping[int, Decimal]) -> Batch:
        """A fetched batch as it will be written (pure: it runs while the previous batch is written)."""
        payments: dict[int, LegacyPayment] = {}
        skips: list[Skip] = []
        for row in rows:
            outcome = payment_of(V2PaymentRow(**row), rates, self.currency)
            if isinstance(outcome, Skip):
                skips.append(outcome)
            else:
                payments[outcome.legacy_id] = outcome
        return Batch(
            last_id=rows[-1]["id"], size=len(rows), skips=skips,
            # As `STAGE.records` would make them (amounts as text), without its loop over columns.
            records=[(p.transaction_id, p.legacy_id, p.barber_id, p.appointment_id, p.client_id, str(p.amount),
                      str(p.refunded_amount), p.currency, p.status, str(p.commission_rate), str(p.commission_amount),
                      str(p.processor_fee), p.stripe_payment_intent_id, p.processed_at, 1)
                     for p in payments.values()],
            events={legacy_id: transaction_recorded(p, 1) for legacy_id, p in payments.items()})

    async def write_batch(self, run_id: int, batch: Batch) -> tuple[int, int]:
        """One transaction: the batch's payments, their events, its skips and the checkpoint."""
        async with self.suite.transaction():
            written = []
            if batch.records:
                await STAGE.copy(self.suite, batch.records)
                written = await self.suite.fetch(UPSERT)
                # A payment changed since an earlier run is the next version of its transaction.
                recorded = [batch.events[r["legacy_id"]] if r["version"] == 1 else
                            msgspec.structs.replace(batch.events[r["legacy_id"]], sequence=r["version"])
                            for r in written]
                await self._write_outbox([
                    outbox_record(TransactionImported(transactions=recorded[i:i + IMPORTED_PER_EVENT]), self.prefix)
                    for i in range(0, len(recorded), IMPORTED_PER_EVENT)])
            await self._write_skips(run_id, batch.skips)
            await self.suite.execute(
                "UPDATE router.legacy_imports SET checkpoint = $2, updated_at = now() WHERE id = $1",
                run_id, batch.last_id)
        return len(written), len(batch.skips)

    async def read_ahead(self, batches: asyncio.Queue, after: int, with_clients: bool,
                         rates: Mapping[int, Decimal]) -> None:
        """Fetch and prepare the batches in order (one ahead of the writer), then None; a failure
        is handed to the writer to raise."""
        try:
            while rows := await self.fetch_batch(after, with_clients):
                after = rows[-1]["id"]
                await batches.put(self.prepare(rows, rates))
            await batches.put(None)
        except Exception as exc:
            await batches.put(exc)

    async def _write_outbox(self, records: list[tuple]) -> None:
        if records:
            await self.suite.copy_records_to_table(
                "outbox", schema_name="router", columns=("event_id", "subject", "event_type", "body"), records=records)

    async def _write_skips(self, run_id: int, skips: list[Skip]) -> None:
        if skips:
            await self.suite.execute(
                "INSERT INTO router.legacy_import_skips (legacy_table, legacy_id, reason, detail, run_id) "
                "SELECT t, i, r, d, $5 FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS s(t, i, r, d) "
                "ON CONFLICT (legacy_table, legacy_id) DO UPDATE SET reason = excluded.reason, "
                "detail = excluded.detail, run_id = excluded.run_id",
                [s.table for s in skips], [s.legacy_id for s in skips], [s.reason for s in skips],
                [s.detail for s in skips], run_id)

    async def has_table(self, name: str) -> bool:
        return await self.legacy.fetchval("SELECT to_regclass($1) IS NOT NULL", name)

    async def run(self, source: str) -> tuple[Report, dict[int, Decimal]]:
        started = time.monotonic()
        for table in ("users", "payments"):
            if not await self.has_table(table):
                raise LegacyImportError(f"the legacy database has no {table} table: is it a BookedBarber V2 database?")
        run_id, checkpoint = await self.open_run(source)
        report = Report(run_id=run_id, source=source, resumed_from=checkpoint)
        if checkpoint:
            self.console.print(f"resuming import run {run_id} after legacy payment {checkpoint}")
        rates, report.barbers_in_legacy, report.barbers_configured, _ = await self.import_barbers(run_id)
        with_clients = await self.has_table("appointments")
        if not with_clients:
            self.console.print("no appointments table: payments are imported without client_id")
        await compress_with_lz4(self.suite)
        total = await self.payments_after(checkpoint)
        progress = Progress(TextColumn("[bold]payments"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}/s"), TimeRemainingColumn(), console=self.console,
                            transient=False, disable=total == 0)
        with progress:
            task = progress.add_task("payments", total=total, rate=0)
            done = 0
            # The next batch is fetched and prepared while this one is written: the import's Python
            # and Postgres' work overlap (each took about half of a batch's time one after the other).
            batches: asyncio.Queue[Batch | Exception | None] = asyncio.Queue(maxsize=1)
            reader = asyncio.create_task(self.read_ahead(batches, checkpoint, with_clients, rates))
            try:
                while (batch := await batches.get()) is not None:
                    if isinstance(batch, Exception):
                        raise batch
                    written, _ = await self.write_batch(run_id, batch)
                    report.payments_written += written
                    done += batch.size
                    progress.update(task, completed=done, rate=int(done / max(time.monotonic() - started, 1e-6)))
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        await self.suite.execute(
            "UPDATE router.legacy_imports SET status = 'imported', updated_at = now() WHERE id = $1", run_id)
        report.seconds = round(time.monotonic() - started, 2)
        return report, rates


# ---- reconciliation ---------------------------------------------------------------------------------


def _totals(rows: list[asyncpg.Record]) -> dict[int, Totals]:
    return {r["barber_id"]: Totals(r["count"], Decimal(r["amount"]), Decimal(r["refunded"])) for r in rows}


async def legacy_totals(legacy: asyncpg.Connection, rates: Mapping[int, Decimal], currency: str) -> dict[int, Totals]:
    """Computed in SQL, independently of `services.router.legacy`: what should have come over."""
    return _totals(await legacy.fetch(
        "SELECT barber_id, count(*) AS count, sum(amount) AS amount, "
        "sum(CASE WHEN lower(trim(status::text)) = 'refunded' THEN amount ELSE 0 END) AS refunded FROM payments "
        "WHERE lower(trim(status::text)) IN ('completed', 'refunded') AND amount > 0 AND amount = round(amount, $2) "
        "AND created_at IS NOT NULL AND barber_id = ANY($1::int[]) GROUP BY barber_id",
        list(rates), minor_unit_exponent(currency)))


async def router_totals(suite: asyncpg.Connection) -> dict[int, Totals]:
    return _totals(await suite.fetch(
        "SELECT barber_id, count(*) AS count, sum(amount) AS amount, sum(refunded_amount) AS refunded "
        "FROM router.legacy_payments GROUP BY barber_id"))


async def analytics_totals(analytics: asyncpg.Connection) -> dict[int, Totals]:
    """What the dashboard shows for legacy payments: analytics' daily rollups, per barber."""
    return _totals(await analytics.fetch(
        "SELECT barber_id, sum(transaction_count) AS count, sum(gross_volume) AS amount, "
        "sum(refunded_amount) AS refunded FROM analytics.daily_payments WHERE source = 'legacy' AND barber_id > 0 "
        "GROUP BY barber_id HAVING sum(transaction_count) > 0"))


async def reconcile(report: Report, legacy: asyncpg.Connection, suite: asyncpg.Connection,
                    analytics_dsn: str | None, rates: Mapping[int, Decimal], currency: str, *,
                    analytics_timeout: float, console: Console) -> None:
    expected = await legacy_totals(legacy, rates, currency)
    imported = await router_totals(suite)
    found: list[Difference] = differences(expected, imported, "router")
    report.payments_in_legacy = await legacy.fetchval("SELECT count(*) FROM payments")
    report.payments_imported = sum(t.count for t in imported.values())
    skip_rows = await suite.fetch(
        "SELECT legacy_table, reason, count(*) AS count, (array_agg(legacy_id ORDER BY legacy_id))[1:$1] AS ids "
        "FROM router.legacy_import_skips GROUP BY legacy_table, reason ORDER BY legacy_table, reason", SKIP_IDS_SHOWN)
    report.skipped = {f"{r['legacy_table']}.{r['reason']}": {"count": r["count"], "first_ids": list(r["ids"])}
                      for r in skip_rows}
    skipped_payments = sum(r["count"] for r in skip_rows if r["legacy_table"] == "payments")
    report.differences = [d.describe() for d in found]
    # Every legacy payment is accounted for: carried over or listed as skipped (one that was imported
    # and is skipped now, e.g. its status changed in V2 since, is both, and shows here).
    if report.payments_imported + skipped_payments != report.payments_in_legacy:
        report.differences.append(
            f"payments: {report.payments_in_legacy} in the legacy database, but {report.payments_imported} imported "
            f"+ {skipped_payments} skipped = {report.payments_imported + skipped_payments}")
    if analytics_dsn is None or analytics_timeout <= 0:
        report.analytics = "not checked (--analytics-timeout 0)"
        return
    deadline = time.monotonic() + analytics_timeout
    try:
        analytics = await asyncpg.connect(analytics_dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        report.differences.append(f"analytics: cannot connect: {exc}")
        report.analytics = "unreachable"
        return
    try:
        with console.status("waiting for analytics to catch up with the imported payments"):
            while True:
                try:
                    seen = await analytics_totals(analytics)
                except asyncpg.PostgresError as exc:
                    report.differences.append(f"analytics: {exc}")
                    report.analytics = "unreadable"
                    return
                behind = differences(imported, seen, "analytics")
                if not behind or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
    finally:
        await analytics.close()
    # Analytics against the legacy database itself (not only against the router's copy).
    against_legacy = differences(expected, seen, "analytics")
    report.differences += [d.describe() for d in against_legacy]
    report.analytics = ("caught up" if not behind else
                        f"not caught up after {analytics_timeout:g} s ({len(behind)} barbers behind)")


# ---- the command ------------------------------------------------------------------------------------


def print_report(console: Console, report: Report) -> None:
    table = Table(title=f"legacy import run {report.run_id} from {report.source}", show_header=False)
    for name, value in (
        ("barbers in the legacy database", report.barbers_in_legacy),
        ("barber configs created", report.barbers_configured),
        ("payments in the legacy database", report.payments_in_legacy),
        ("payments in the suite", report.payments_imported),
        ("written in this run (new or changed)", report.payments_written),
        ("resumed after legacy payment", report.resumed_from or "-"),
        ("analytics", report.analytics),
        ("seconds", report.seconds),
    ):
        table.add_row(name, str(value))
    console.print(table)
    if report.skipped:
        skipped = Table(title="skipped legacy rows (not carried over)")
        for column in ("table.reason", "rows", "first ids"):
            skipped.add_column(column)
        for reason, info in report.skipped.items():
            skipped.add_row(reason, str(info["count"]), ", ".join(map(str, info["first_ids"])))
        console.print(skipped)
    if report.clean:
        console.print("[green]reconciliation: every barber's counts and sums match[/green]")
    else:
        console.print(f"[red]reconciliation FAILED: {len(report.differences)} difference(s)[/red]")
        for line in report.differences:
            console.print(f"  [red]{line}[/red]")


async def save_report(suite: asyncpg.Connection, report: Report) -> Path:
    body = asdict(report)
    await suite.execute(
        "UPDATE router.legacy_imports SET status = $2, report = $3::jsonb, finished_at = now(), updated_at = now() "
        "WHERE id = $1", report.run_id, "reconciled" if report.clean else "differences", json.dumps(body))
    REPORT_DIR.mkdir(exist_ok=True)
    path = REPORT_DIR / f"import-report-{report.run_id}.json"
    path.write_text(json.dumps(body, indent=2))
    return path


def router_settings(database_url: str) -> RouterSettings:
    """The router's settings, as the router reads them (its token settings play no part here)."""
    env = dict(os.environ)
    if not env.get("JWT_SECRET") and not env.get("JWT_PUBLIC_KEY"):
        env["JWT_SECRET"] = "unused-by-the-import"
    stream, prefix = pick_event_names()  # as the router has them, or as `make run` recorded them
    return load_settings(RouterSettings, env=env, dotenv=ROOT / ".env", database_url=database_url,
                         event_stream=stream, event_subject_prefix=prefix)


async def main_async(args: argparse.Namespace, console: Console) -> int:
    database_url, _ = pick_database_url(args.database_url)
    try:
        settings = router_settings(database_url)
        currency = normalise_currency(args.currency)
    except (SettingsError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    try:
        legacy = await asyncpg.connect(libpq_url(args.legacy_dsn))
    except (OSError, asyncpg.PostgresError) as exc:
        console.print(f"[red]cannot connect to the legacy database {source_name(args.legacy_dsn)}: {exc}[/red]")
        return 2
    try:
        suite = await asyncpg.connect(libpq_url(database_url))
    except (OSError, asyncpg.PostgresError) as exc:
        await legacy.close()
        console.print(f"[red]cannot connect to the suite's database: {exc}[/red]")
        return 2
    try:
        head = await suite.fetchval("SELECT to_regclass('router.legacy_imports') IS NOT NULL")
        if not head:
            console.print("[red]the router's schema has no legacy import tables: run `make migrate` first[/red]")
            return 2
        # One import at a time (two would race on the run's checkpoint): a session lock, freed when
        # this connection closes, also when the process is killed.
        if not await suite.fetchval("SELECT pg_try_advisory_lock($1)", IMPORT_LOCK):
            console.print("[red]another import is running against this suite database: wait for it, "
                          "or stop it (a killed import resumes from its checkpoint)[/red]")
            return 2
        importer = LegacyImport(legacy, suite, settings, currency=currency, batch_size=args.batch_size, console=console)
        try:
            report, rates = await importer.run(source_name(args.legacy_dsn))
        except LegacyImportError as exc:
            console.print(f"[red]{exc}[/red]")
            return 2
        analytics_dsn = libpq_url(args.analytics_database_url or database_url)
        await reconcile(report, legacy, suite, analytics_dsn, rates, currency,
                        analytics_timeout=args.analytics_timeout, console=console)
        path = await save_report(suite, report)
        print_report(console, report)
        console.print(f"report: {path}")
        return 0 if report.clean else 1
    finally:
        await legacy.close()
        await suite.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legacy-dsn", required=True, help="the BookedBarber V2 database (postgresql://...)")
    parser.add_argument("--database-url", help="the suite's database (default: DATABASE_URL or make run's)")
    parser.add_argument("--analytics-database-url", help="analytics' database when it is not the suite's")
    parser.add_argument("--currency", default="USD", help="the currency of the legacy amounts (default USD)")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--analytics-timeout", type=float, default=180.0,
                        help="seconds to wait for analytics to catch up (0: do not check analytics)")
    args = parser.parse_args(argv)
    console = Console(stderr=False)
    # uvloop, as the services run on: asyncio's own loop read the legacy rows in Python (a tenth of the CPU).
    return uvloop.run(main_async(args, console))


if __name__ == "__main__":
    sys.exit(main())
