"""Fuzz fixtures: the four services as real processes on sockets (as the integration tests start
them), against the processor simulators as processes of their own, each service logging at info
level into a directory kept after the run (its tracebacks are quoted in the failure messages).

`FUZZ_LOG_DIR` puts the logs in a directory of your choosing (a subdirectory per pytest-xdist worker,
`gw0`, `gw1`, under `make test`); otherwise they go under pytest's
tmp_path (`/tmp/pytest-of-$USER/pytest-N/fuzz-logs0/`, the last three runs kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.support import free_port, running_process

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("router", "external", "collections", "analytics")

# (service, role) -> {status: responses}, shown at the end of the run (`pytest_terminal_summary`).
STATUSES: dict[tuple[str, str], Counter] = defaultdict(Counter)


@pytest.fixture(scope="module")
def fuzz_log_dir(tmp_path_factory) -> Path:
    chosen = os.environ.get("FUZZ_LOG_DIR")
    if chosen:
        # Under pytest-xdist each worker starts the services of its own: a directory each.
        path = Path(chosen) / os.environ.get("PYTEST_XDIST_WORKER", "")
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("fuzz-logs")


class ServiceLog:
    """A service's JSON log file, searched by request id for the traceback of a 5xx."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries_for(self, request_id: str, *, wait: float = 1.0) -> list[dict]:
        deadline = time.monotonic() + wait
        while True:
            found = []
            try:
                text = self.path.read_text(errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                if request_id not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    found.append({"event": line})
                    continue
                if entry.get("request_id") == request_id:
                    found.append(entry)
            if any("exception" in e for e in found) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def traceback_for(self, request_id: str | None) -> str:
        if not request_id:
            return f"(no x-request-id on the response; see {self.path})"
        entries = self.entries_for(request_id)
        if not entries:
            return f"(no log line with request_id={request_id} in {self.path})"
        parts = []
        for e in entries:
            head = {k: v for k, v in e.items() if k not in ("exception", "timestamp")}
            parts.append(json.dumps(head, default=str))
            if "exception" in e:
                parts.append(condense(e["exception"]))
        parts.append(f"(the project's frames only; the whole traceback is in {self.path})")
        return "\n".join(parts)


def condense(traceback: str, width: int = 400) -> str:
    """A logged traceback with only the project's own frames (not the venv's or the standard
    library's), each chained exception's message kept, long lines (SQL) cut."""
    lines = traceback.rstrip().splitlines()
    out: list[str] = []
    keep_code = False
    for line in lines:
        if line.startswith("  File "):
            keep_code = line.startswith(f'  File "{ROOT}/') and "/.venv/" not in line
            if keep_code:
                out.append(line)
            continue
        if line.startswith("    "):  # a frame's source line, or its ^^^ markers
            if keep_code and line.strip(" ^~"):
                out.append(line)
            keep_code = False
            continue
        keep_code = False
        if out and out[-1].startswith("Traceback (most recent call last)"):
            out.pop()
        out.append(line if len(line) <= width else line[:width] + " ...")
    return "\n".join(out)


class Stack:
    """Starts each service on first use and keeps it until the module ends (the router needs the
    external service, which is started first)."""

    def __init__(self, service_env, sims: dict[str, str], log_dir: Path, exits: contextlib.ExitStack) -> None:
        self.service_env = service_env
        self.sims = sims
        self.log_dir = log_dir
        self.exits = exits
        self.urls: dict[str, str] = {}
        self.logs: dict[str, ServiceLog] = {}

    def url(self, name: str) -> str:
        if name not in self.urls:
            self.urls[name] = self._start(name)
        return self.urls[name]

    def _start(self, name: str) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, **self.service_env, "PORT": str(port), "LOG_LEVEL": "info", "LOG_JSON": "true",
               "RATE_LIMIT_PER_MINUTE": "10000000"}
        if name in ("router", "collections"):
            # The platform's own Stripe account (centralized payments, commission collection).
            env |= {"STRIPE_SECRET_KEY": f"sk_test_platform_fuzz_{name}", "STRIPE_API_BASE": self.sims["stripe"],
                    "STRIPE_TIMEOUT": "3"}
        if name == "router":
            env |= {"EXTERNAL_SERVICE_URL": self.url("external"), "EXTERNAL_TIMEOUT": "10"}
        if name == "external":
            env |= {"WEBHOOK_BASE_URL": url, "STRIPE_API_BASE": self.sims["stripe"],
                    "SQUARE_API_BASE": self.sims["square"], "PAYPAL_API_BASE": self.sims["paypal"],
                    "PROCESSOR_TIMEOUT": "3"}
        log = self.log_dir / f"{name}.log"
        self.exits.enter_context(running_process([f"services.{name}"], env, ready_url=url + "/health/ready", log=log))
        self.logs[name] = ServiceLog(log)
        return url


@pytest.fixture(scope="module")
def stack(service_env, stripe_sim, square_sim, paypal_sim, fuzz_log_dir):
    with contextlib.ExitStack() as exits:
        yield Stack(service_env, {"stripe": stripe_sim, "square": square_sim, "paypal": paypal_sim},
                    fuzz_log_dir, exits)


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request):
    """schemathesis 4.32's lazy schemas (`schemathesis.pytest.from_fixture`) read and write the
    test item's `_nodeid`, which pytest 9.2 no longer has (it keeps a structured `_id`); give the
    item one so the per-operation subtests run. Remove when schemathesis stops using it."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def pytest_sessionfinish(session):
    """Under pytest-xdist a worker hands its counts to the controller, which prints the summary."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fuzz_statuses"] = [[service, role, dict(counts)]
                                                        for (service, role), counts in STATUSES.items()]


def pytest_testnodedown(node, error):
    for service, role, counts in getattr(node, "workeroutput", {}).get("fuzz_statuses", []):
        STATUSES[service, role].update({int(status): n for status, n in counts.items()})


def pytest_terminal_summary(terminalreporter):
    if not STATUSES:
        return
    terminalreporter.section("schemathesis: responses by status")
    for (service, role), counts in sorted(STATUSES.items()):
        shown = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
        terminalreporter.write_line(f"{service:<12} {role:<7} {sum(counts.values()):>5} requests  ({shown})")
