"""Roll barbers back to centralized payments, with fallback on (the migration guide's rollback).

    python -m tools.rollback --barber 42            # one barber      (make rollback BARBER=42)
    python -m tools.rollback --all                  # every barber    (make rollback ALL=1)
    python -m tools.rollback --all --dry-run        # say what would change, change nothing

Each change goes through the router's own API (`PUT /config/{barber_id}` as an admin), so it is
validated, versioned, written with its `config.changed` event through the router's outbox, and the
router answering it forgets its cached copy at once. A barber already centralized with fallback on
is left alone, so running it twice changes nothing the second time. `--all` reads which barbers have
a config from the router's `hybrid_payment_configs` table (read only); a barber without a row
already gets the platform default. It prints what changed and exits 1 when any change failed.

The router must be up (`--router-url`, default http://127.0.0.1:8001). Tokens are minted with the
JWT secret found as the load tools find it (`--jwt-secret`, `$JWT_SECRET`, `.env`, or what `make
run` recorded). For every barber at once without a deploy, the kill switch is the router's
`HYBRID_PAYMENTS_ENABLED=false`: every route is then centralized, whatever the configs say.

Other router replicas may keep a barber's cached config for up to their cache time (60 s) before
they see the change.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from rich.console import Console
from rich.table import Table

from shared.auth import issue_token
from shared.config import libpq_url
from tools.runstate import pick_database_url, pick_jwt_secret

ROLLED_BACK = {"payment_mode": "centralized", "fallback_enabled": True}
CONFIG = "/api/v1/hybrid-payments/config"


@dataclass
class Outcome:
    barber_id: int
    before: str
    after: str
    result: str  # rolled back | already centralized | would roll back | failed: ...


def describe(config: dict[str, Any]) -> str:
    return f"{config['payment_mode']}, fallback {'on' if config['fallback_enabled'] else 'off'}" + (
        f", prefers {config['preferred_processor']}" if config.get("preferred_processor") else "")


async def configured_barbers(database_url: str) -> list[int]:
    conn = await asyncpg.connect(libpq_url(database_url))
    try:
        return [r["barber_id"] for r in await conn.fetch(
            "SELECT barber_id FROM router.hybrid_payment_configs ORDER BY barber_id")]
    finally:
        await conn.close()


async def rollback(router_url: str, token: str, barbers: list[int], *, dry_run: bool = False) -> list[Outcome]:
    headers = {"Authorization": f"Bearer {token}"}
    outcomes = []
    async with aiohttp.ClientSession(base_url=router_url.rstrip("/")) as http:
        for barber_id in barbers:
            async with http.get(f"{CONFIG}/{barber_id}", headers=headers) as resp:
                current = await resp.json(content_type=None)
                if resp.status != 200:
                    outcomes.append(Outcome(barber_id, "?", "?", f"failed: {resp.status} {current.get('detail')}"))
                    continue
            before = describe(current)
            if all(current[k] == v for k, v in ROLLED_BACK.items()):
                outcomes.append(Outcome(barber_id, before, before, "already centralized"))
                continue
            if dry_run:
                outcomes.append(Outcome(barber_id, before, describe({**current, **ROLLED_BACK}), "would roll back"))
                continue
            async with http.put(f"{CONFIG}/{barber_id}", headers=headers,
                                json={**ROLLED_BACK, "expected_version": current["version"]}) as resp:
                saved = await resp.json(content_type=None)
                if resp.status != 200:  # a concurrent change (409) is reported; run it again
                    outcomes.append(Outcome(barber_id, before, before, f"failed: {resp.status} {saved.get('detail')}"))
                    continue
            outcomes.append(Outcome(barber_id, before, describe(saved), "rolled back"))
    return outcomes


def report(outcomes: list[Outcome], console: Console) -> int:
    table = Table(title="Rollback to centralized payments")
    for column in ("barber", "before", "after", "result"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(str(o.barber_id), o.before, o.after, o.result)
    console.print(table)
    failed = [o for o in outcomes if o.result.startswith("failed")]
    changed = sum(o.result == "rolled back" for o in outcomes)
    console.print(f"{changed} rolled back, {len(outcomes) - changed - len(failed)} unchanged, {len(failed)} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.rollback", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--barber", type=int, action="append", help="a barber id (repeatable)")
    which.add_argument("--all", action="store_true", help="every barber with a config")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--router-url", default="http://127.0.0.1:8001")
    parser.add_argument("--database-url", help="for --all (default: as `make run` and the load tools find it)")
    parser.add_argument("--jwt-secret")
    args = parser.parse_args(argv)
    secret = pick_jwt_secret(args.jwt_secret)
    if not secret:
        print("no JWT secret: pass --jwt-secret or set JWT_SECRET (as the router has it)", file=sys.stderr)
        return 2
    barbers = args.barber or asyncio.run(configured_barbers(pick_database_url(args.database_url)[0]))
    try:
        outcomes = asyncio.run(rollback(args.router_url, issue_token(secret, 1, "admin", ttl_seconds=600), barbers,
                                        dry_run=args.dry_run))
    except aiohttp.ClientConnectorError as exc:
        print(f"the router at {args.router_url} cannot be reached ({exc}); start it, or use the kill switch "
              "HYBRID_PAYMENTS_ENABLED=false", file=sys.stderr)
        return 2
    return report(outcomes, Console())


if __name__ == "__main__":
    sys.exit(main())
