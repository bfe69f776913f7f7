"""Run every service's Alembic migrations (or one service's): `python -m tools.migrate upgrade`.

Each service keeps its own environment and version table; this only runs them in order.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shared.config import read_dotenv
from shared.migrations import SERVICES, current, downgrade, upgrade


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.migrate", description=__doc__)
    parser.add_argument("action", choices=["upgrade", "downgrade", "current"])
    parser.add_argument("--service", choices=SERVICES, action="append", help="default: all four")
    parser.add_argument("--revision", help="target revision (default head for upgrade, base for downgrade)")
    parser.add_argument("--database-url", default=None, help="default: DATABASE_URL (environment or .env)")
    args = parser.parse_args(argv)
    url = args.database_url or os.environ.get("DATABASE_URL") or read_dotenv(Path(".env")).get("DATABASE_URL")
    if not url:
        parser.error("DATABASE_URL is not set (environment, .env or --database-url)")
    services = args.service or list(SERVICES)
    if args.action == "downgrade":
        services = list(reversed(services))
    for service in services:
        print(f"[{service}] {args.action}", file=sys.stderr)
        if args.action == "upgrade":
            upgrade(service, url, args.revision or "head")
        elif args.action == "downgrade":
            downgrade(service, url, args.revision or "base")
        else:
            current(service, url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
