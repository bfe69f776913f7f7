"""`/route` with two router replicas against one, on this machine: `make run REPLICAS=2` first, then
`python -m tests.load.replicas` (the README's "Running more than one of each" has the figures).

Three runs of the load tester (`tests.load.loadtest`, each its own process), one after the other:
1. one replica: one load tester on the first router replica's port, at concurrency 32;
2. two replicas: two load testers at once, one per replica, concurrency 16 each (32 in all);
3. through the gateway: one load tester on the gateway, concurrency 32, which takes the replicas in turn.

It prints a table (throughput, p50, p99, errors) and the ratio of (2) to (1), and writes
`.run/bench-replicas.json`. Barbers are many (2,000) so that none reaches RATE_LIMIT_PER_MINUTE.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
FIRST_BARBER, BARBERS = 3_000_000, 2000


def load(url: str, *, secret: str, concurrency: int, duration: float, barber_id_start: int, barbers: int,
         seed: bool, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.load.loadtest", "--url", url, "--workload", "route", "--jwt-secret", secret,
         "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", "3",
         "--barbers", str(barbers), "--barber-id-start", str(barber_id_start), "--json", str(out),
         "--seed" if seed else "--no-seed"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def finished(procs: list[tuple[subprocess.Popen, Path]]) -> list[dict]:
    results = []
    for proc, out in procs:
        proc.wait()
        if not out.exists():
            raise SystemExit(f"a load tester failed (exit {proc.returncode}); run it by hand to see why")
        results.append(json.loads(out.read_text()))
    return results


def summary(results: list[dict]) -> dict:
    """Several load testers run at once: throughput adds up; latency is the worst of them."""
    runs = [r["summary"] for r in results]
    return {
        "throughput": sum(s["throughput_rps"] for s in runs),
        "p50_ms": max(s["latency_ms"]["p50"] for s in runs),
        "p99_ms": max(s["latency_ms"]["p99"] for s in runs),
        "errors": sum(s["requests"] - s["successes"] for s in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.replicas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per run (default 20)")
    parser.add_argument("--run-dir", default=str(ROOT / ".run"))
    args = parser.parse_args(argv)
    state = json.loads((Path(args.run_dir) / "run.json").read_text())
    urls = state["urls"]
    if state.get("replicas", 1) < 2:
        raise SystemExit("start the suite with two replicas first: make run REPLICAS=2")
    console = Console()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        def run(name: str, targets: list[tuple[str, int]], *, seed: bool = False) -> None:
            # The first run seeds BARBERS barbers (their configs); the later ones share them out, so
            # no load tester's seeding ever runs during another's measurement.
            console.print(f"[bold]{name}[/] ({args.duration:.0f} s) ...")
            share = BARBERS // len(targets)
            procs = [(load(url, secret=state["jwt_secret"], concurrency=c, duration=args.duration,
                           barber_id_start=FIRST_BARBER + share * i, barbers=share, seed=seed,
                           out=work / f"{name}-{i}.json"), work / f"{name}-{i}.json")
                     for i, (url, c) in enumerate(targets)]
            rows[name] = summary(finished(procs))

        run("one replica", [(urls["router"], 32)], seed=True)
        run("two replicas", [(urls["router"], 16), (urls["router-2"], 16)])
        run("two, via the gateway", [(urls["gateway"], 32)])
    ratio = rows["two replicas"]["throughput"] / rows["one replica"]["throughput"]
    table = Table(title=f"/route, router replicas (workers per replica: {state.get('workers_per_service')})")
    for column in ("run", "req/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    for name, row in rows.items():
        table.add_row(name, f"{row['throughput']:,.0f}", f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}",
                      str(row["errors"]))
    console.print(table)
    console.print(f"two replicas / one: {ratio:.2f}x")
    out = Path(args.run_dir) / "bench-replicas.json"
    out.write_text(json.dumps({"runs": rows, "two_over_one": ratio}, indent=2))
    console.print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
