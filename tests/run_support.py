"""`make run` (`python -m tools.run`) as a real process on free ports, for the tests that need
the whole suite: the make-run tests themselves and the end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICE_PORTS = ("ROUTER_PORT", "EXTERNAL_PORT", "COLLECTIONS_PORT", "ANALYTICS_PORT")
OTHER_PORTS = ("GATEWAY_PORT", "STRIPE_SIM_PORT", "SQUARE_SIM_PORT", "PAYPAL_SIM_PORT", "CONSOLE_PORT")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def processes_with(marker: str) -> list[int]:
    """Pids whose environment carries `marker`: every descendant of the run inherits it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "environ").read_bytes():
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
    return found


@dataclass
class MakeRun:
    proc: subprocess.Popen
    run_dir: Path
    ports: dict[str, str]
    output: Path
    state: dict

    def printed(self) -> str:
        return self.output.read_text(errors="replace")

    def current_state(self) -> dict:
        """run.json as it is now (`make run` rewrites it when it restarts a dead replica)."""
        return json.loads((self.run_dir / "run.json").read_text())


@contextlib.contextmanager
def make_run(service_env: dict[str, str], tmp_path: Path, *, replicas: int = 1) -> Iterator[MakeRun]:
    """`python -m tools.run` on free ports, ready (its run.json written); killed if still running.
    With `replicas`, REPLICAS=n and n free ports for each service and the console."""
    run_dir = tmp_path / "run"
    names = SERVICE_PORTS + OTHER_PORTS
    per_name = {name: replicas if name in SERVICE_PORTS + ("CONSOLE_PORT",) else 1 for name in names}
    free = iter(free_ports(sum(per_name.values())))
    ports = {name: ",".join(str(next(free)) for _ in range(n)) for name, n in per_name.items()}
    env = {**os.environ, **service_env, **ports, "RUN_DIR": str(run_dir), "RUN_FOLLOW_LOGS": "0",
           "REPLICAS": str(replicas)}
    # make run sizes its pools as if it had Postgres to itself; under `make test` the other
    # pytest-xdist worker's services share it (tools/run.py's own sizing has its unit tests).
    env.setdefault("DB_POOL_SIZE", "4")
    # Exercise the generated secret and tokens, and the simulators, whatever the caller's env says.
    for var in (
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "STRIPE_API_BASE",
        "SQUARE_API_BASE",
        "PAYPAL_API_BASE",
    ):
        env.pop(var, None)
    output = tmp_path / "run.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    state_file = run_dir / "run.json"
    state: dict = {}
    try:
        deadline = time.monotonic() + 30 + 60 * replicas  # make run's own wait, and then some
        while not state_file.exists():
            assert proc.poll() is None, f"make run exited {proc.returncode}:\n{output.read_text()}"
            assert time.monotonic() < deadline, f"make run not ready in time:\n{output.read_text()}"
            time.sleep(0.2)
        state.update(json.loads(state_file.read_text()))
        yield MakeRun(proc, run_dir, ports, output, state)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in state.get("children", {}).values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
