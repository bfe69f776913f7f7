"""Re-encrypt every stored processor credential and webhook secret under the newest key.

    CONNECTION_ENCRYPTION_KEYS="<new>,<old>" python -m tools.rotate_keys

Rotation: prepend a new Fernet key to CONNECTION_ENCRYPTION_KEYS and restart the external
service (the first key encrypts, all decrypt, so both old and new rows read), run this, then drop
the old key. Rows are rewritten in batches, each in its own transaction; it is safe to re-run.
A row that none of the keys opens (sealed under a key already dropped) is left as it is and named
at the end, and the command exits 1: the rest are rotated, and the old keys must stay until those
rows are dealt with (reconnected, or their key found).
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from services.external.tables import connections
from services.external.vault import CredentialVault, VaultError
from shared.config import normalise_database_url


@dataclass
class Rotation:
    rotated: int = 0
    unopenable: list[int] = field(default_factory=list)  # connection ids no key opens


async def rotate(database_url: str, keys: list[str], *, batch: int = 200) -> Rotation:
    vault = CredentialVault(keys)
    engine = create_async_engine(normalise_database_url(database_url))
    done, last_id = Rotation(), 0
    try:
        while True:
            async with engine.begin() as conn:
                rows = (await conn.execute(
                    sa.select(connections.c.id, connections.c.credentials, connections.c.webhook_secret)
                    .where(connections.c.id > last_id).order_by(connections.c.id).limit(batch)
                    .with_for_update())).mappings().all()
                if not rows:
                    return done
                for row in rows:
                    try:
                        values = {"credentials": vault.rotate(row["credentials"])}
                        if row["webhook_secret"] is not None:
                            values["webhook_secret"] = vault.rotate(row["webhook_secret"])
                    except VaultError:
                        done.unopenable.append(row["id"])
                        continue
                    await conn.execute(sa.update(connections).where(connections.c.id == row["id"]).values(**values))
                    done.rotated += 1
                last_id = rows[-1]["id"]
    finally:
        await engine.dispose()


def main() -> int:
    keys = [k.strip() for k in os.environ.get("CONNECTION_ENCRYPTION_KEYS", "").split(",") if k.strip()]
    if not keys:
        print("CONNECTION_ENCRYPTION_KEYS: set it to the new key first, then the old ones", file=sys.stderr)
        return 2
    database_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/hybrid_payments")
    done = asyncio.run(rotate(database_url, keys))
    print(f"re-encrypted {done.rotated} connection(s) under the newest key")
    if done.unopenable:
        print(f"{len(done.unopenable)} connection(s) open with none of the keys given and were left as they are: "
              f"{', '.join(map(str, done.unopenable))}. Keep the old keys until these are reconnected.",
              file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
