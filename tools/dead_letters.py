"""Dead letters: list, replay or discard the events a service's consumers parked.

    python -m tools.dead_letters list    --service collections
    python -m tools.dead_letters replay  --service collections --id 7 --id 9   (or --all)
    python -m tools.dead_letters discard --service collections --id 7 --note "test data, not money"

A consumer parks an event it cannot apply (see `shared/consumer.py`). Once the cause is fixed,
`replay` publishes the parked bytes again on their subject (under a new `Nats-Msg-Id`, so
JetStream's duplicate window does not drop them). Every consumer of that subject sees it again,
and every consumer that already applied it skips it by its `event_id`, so a replay can only
apply the event where it was missing. `DATABASE_URL`, `NATS_URL` and `EVENT_STREAM` say where.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime

import nats
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from shared.config import normalise_database_url
from shared.db import PlatformTables
from shared.migrations import SERVICES


def dead_letters_of(service: str) -> sa.Table:
    return PlatformTables(sa.MetaData(schema=service)).dead_letters


async def list_parked(database_url: str, service: str, *, everything: bool = False) -> list[dict]:
    table = dead_letters_of(service)
    engine = create_async_engine(normalise_database_url(database_url))
    try:
        async with engine.connect() as conn:
            query = sa.select(table).order_by(table.c.id)
            if not everything:
                query = query.where(table.c.replayed_at.is_(None), table.c.discarded_at.is_(None))
            return [dict(r) for r in (await conn.execute(query)).mappings()]
    finally:
        await engine.dispose()


async def replay(database_url: str, nats_url: str, stream: str, service: str, ids: list[int] | None) -> list[int]:
    """Publish the parked events again (all waiting ones when `ids` is None); returns their ids."""
    table = dead_letters_of(service)
    engine = create_async_engine(normalise_database_url(database_url))
    nc = await nats.connect(nats_url, connect_timeout=5)
    replayed: list[int] = []
    try:
        js = nc.jetstream(timeout=10)
        async with engine.begin() as conn:
            query = sa.select(table).where(table.c.discarded_at.is_(None)).order_by(table.c.id).with_for_update()
            query = query.where(table.c.id.in_(ids)) if ids is not None else query.where(table.c.replayed_at.is_(None))
            rows = (await conn.execute(query)).mappings().all()
            now = datetime.now(UTC)
            for row in rows:
                msg_id = f"replay-{service}-{row['id']}-{int(now.timestamp() * 1000)}"
                await js.publish(row["subject"], row["body"], stream=stream, headers={"Nats-Msg-Id": msg_id})
                await conn.execute(sa.update(table).where(table.c.id == row["id"]).values(replayed_at=now))
                replayed.append(row["id"])
    finally:
        await nc.close()
        await engine.dispose()
    return replayed


async def discard(database_url: str, service: str, ids: list[int], note: str) -> int:
    table = dead_letters_of(service)
    engine = create_async_engine(normalise_database_url(database_url))
    try:
        async with engine.begin() as conn:
            result = await conn.execute(sa.update(table).where(table.c.id.in_(ids), table.c.discarded_at.is_(None))
                                        .values(discarded_at=datetime.now(UTC), note=note))
            return result.rowcount or 0
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dead_letters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("list", "replay", "discard"))
    parser.add_argument("--service", required=True, choices=SERVICES)
    parser.add_argument("--id", dest="ids", type=int, action="append", help="a dead letter's id (repeatable)")
    parser.add_argument("--all", action="store_true", help="list: also replayed/discarded; replay: every waiting one")
    parser.add_argument("--note", default="", help="discard: why (kept with the row)")
    args = parser.parse_args(argv)
    database_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/hybrid_payments")
    if args.action == "list":
        rows = asyncio.run(list_parked(database_url, args.service, everything=args.all))
        for row in rows:
            state = "replayed" if row["replayed_at"] else "discarded" if row["discarded_at"] else "waiting"
            print(f"{row['id']:>6}  {state:<9}  {row['consumer']}  {row['event_type'] or '-'}  "
                  f"{row['event_id'] or '-'}  attempts={row['attempts']}  {row['error'][:120]}")
        print(f"{len(rows)} dead letter(s) in {args.service}")
        return 0
    if args.action == "replay":
        if not args.ids and not args.all:
            parser.error("replay: give --id N (repeatable) or --all")
        done = asyncio.run(replay(database_url, os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
                                  os.environ.get("EVENT_STREAM", "PAYMENTS"), args.service,
                                  None if args.all else args.ids))
        print(f"replayed {len(done)} dead letter(s): {', '.join(map(str, done)) or '-'}")
        return 0
    if not args.ids or not args.note:
        parser.error("discard: give --id N and --note WHY")
    count = asyncio.run(discard(database_url, args.service, args.ids, args.note))
    print(f"discarded {count} dead letter(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
