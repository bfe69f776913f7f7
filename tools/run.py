"""`make run`: the whole suite in the foreground on one machine — Postgres and NATS (configured or
embedded), migrations, the processor simulators, the four services and the dev gateway.

Ctrl-C or SIGTERM stops everything it started (pressing it again while it stops is only noted: the
cleanup still runs to its end); a child that dies stops the rest (exit 1).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from rich.console import Console
from rich.table import Table
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"router": 8001, "external": 8002, "collections": 8003, "analytics": 8004}
CONSOLE_PORT = 8005  # the console (services/console): pages only, behind the gateway at /console
ADMIN_SUBJECT = 1000  # the printed admin token's `sub`: services accept only positive integer ids


@dataclass(frozen=True)
class Simulator:
    name: str
    module: str
    port: int
    base_var: str  # when this is configured, the real (or another) API is used instead
    defaults: dict[str, str] = field(default_factory=dict)


# One line per processor sandbox; a module that does not exist yet is skipped with a note.
SIMULATORS = (
    Simulator(
        "stripe",
        "sandbox.stripe_sim",
        12111,
        "STRIPE_API_BASE",
        {"STRIPE_SECRET_KEY": "sk_test_sandbox"},
    ),
    Simulator("square", "sandbox.square_sim", 12112, "SQUARE_API_BASE"),
    Simulator("paypal", "sandbox.paypal_sim", 12113, "PAYPAL_API_BASE"),
)

console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)


class Shutdown(Exception):
    """SIGINT or SIGTERM arrived."""


class Failure(Exception):
    """Startup or a child failed; the message says which and why."""


# --- signals ---------------------------------------------------------------------------------
# The first SIGINT/SIGTERM switches the process into "shutting down" and raises Shutdown, except
# inside `deferred()`, where it only takes effect once the block is done: a half-started Postgres
# or an unrecorded child would otherwise leak. Every later signal is only noted: raising again
# would break out of the cleanup (or out of the `except Shutdown` clause before the cleanup even
# began, which ended in a traceback) and leave children or embedded servers running.
_deferring = 0
_pending: int | None = None  # the first signal; set once, never cleared
_delivered = False  # Shutdown has been raised for it
_repeats = 0  # signals after the first one


def _on_signal(signum: int, _frame: object) -> None:
    global _pending, _repeats
    if _pending is not None:  # already shutting down
        _repeats += 1
        if _repeats == 1:
            # os.write, not print: a buffered write interrupted by this handler must not be re-entered.
            with contextlib.suppress(OSError):
                name = signal.Signals(signum).name
                os.write(sys.stderr.fileno(), f"\n{name}: already stopping …\n".encode())
        return
    _pending = signum
    if not _deferring:
        _deliver()


def _deliver() -> None:
    global _delivered
    _delivered = True
    raise Shutdown(signal.Signals(_pending).name)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None and not _delivered:
            _deliver()


def hold_signals() -> None:
    """From here on no signal raises (the cleanup runs to its end); a first one is still noted."""
    global _deferring
    _deferring += 1


# --- children --------------------------------------------------------------------------------
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children just will not notice our SIGKILL
    _prctl = None


def _child_setup() -> None:
    # Runs in the child before exec: SIGTERM it if this process dies without cleaning up.
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path
    url: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # A service replica is restarted when it dies (as systemd's Restart= or a k8s Deployment
    # would); anything else (gateway, simulators) dying ends the run.
    restart: bool = False
    started_at: float = field(default_factory=time.monotonic)
    quick_exits: int = 0
    # How long a stop waits for it after SIGTERM before SIGKILL, and whether it stops after the rest.
    stop_grace: float = 5.0
    stops_last: bool = False

    def signal_group(self, sig: int) -> None:
        # Each child leads its own process group, so its workers go with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def spawn(
    children: list[Child], name: str, args: list[str], env: dict[str, str], logs: Path, url: str,
    *, restart: bool = False, stop_grace: float = 5.0, stops_last: bool = False,
) -> None:
    """Start `python -m *args` in its own session, output to logs/<name>.log, and record it."""
    log = logs / f"{name}.log"
    children.append(Child(name, _popen(args, env, log, "wb"), log, url, args, env, restart,
                          stop_grace=stop_grace, stops_last=stops_last))


def _popen(args: list[str], env: dict[str, str], log: Path, mode: str) -> subprocess.Popen:
    with open(log, mode) as out, deferred():
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Safe: Popen forks with the GIL held; the hook only calls prctl.
            preexec_fn=_child_setup,  # noqa: PLW1509
        )


# A replica that dies this soon after its start, this many times in a row, is crash-looping: the
# run stops and says why, rather than restarting it forever.
QUICK_EXIT_SECONDS = 10.0
QUICK_EXITS_ALLOWED = 3


def restart(child: Child) -> None:
    """Start a dead service replica again on its port (its log goes on in the same file)."""
    child.quick_exits = child.quick_exits + 1 if time.monotonic() - child.started_at < QUICK_EXIT_SECONDS else 0
    if child.quick_exits >= QUICK_EXITS_ALLOWED:
        raise Failure(
            f"{child.name} keeps exiting (code {child.proc.returncode}, {QUICK_EXITS_ALLOWED} times within "
            f"{QUICK_EXIT_SECONDS:.0f} s of its start). Last lines of {child.log}:\n{tail(child.log)}"
        )
    child.signal_group(signal.SIGKILL)  # whatever is left of its group (its workers)
    with open(child.log, "ab") as out:
        out.write(f"\n--- make run: exited with code {child.proc.returncode}; restarting ---\n".encode())
    child.proc = _popen(child.args, child.env, child.log, "ab")
    child.started_at = time.monotonic()


# A simulator writes what it was sent when it stops: after `make bench` the Stripe one's 415 MB took
# 4.5 s on a slow machine, so it gets longer than the services' 5 s before SIGKILL.
SIMULATOR_STOP_GRACE = 60.0
# Past this much kept sandbox state a start says so: every `make bench` adds about 0.6 GB to the
# files and 1.2 GB to the Stripe simulator's memory once read back (3.6 GB after three runs).
SANDBOX_NOTE_BYTES = 1_000_000_000


def sandbox_note(directory: Path) -> str | None:
    """A note for the console when the simulators' kept state (`<processor>.json`) is large."""
    kept = sum(path.stat().st_size for path in directory.glob("*.json")) if directory.is_dir() else 0
    if kept < SANDBOX_NOTE_BYTES:
        return None
    return (f"The sandbox keeps {kept / 1e9:.1f} GB from earlier runs in {directory} (benchmark payments "
            f"among them): the simulators read it all back into memory, which takes a while. For an empty "
            f"sandbox, stop make run and delete {directory}.")


def stop_children(children: list[Child]) -> None:
    """SIGTERM, then SIGKILL after each child's own grace: first everything but the simulators
    (gateway and services at once), then the simulators, so that what a simulator keeps includes
    every call a service was still finishing."""
    for group in ([c for c in children if not c.stops_last], [c for c in children if c.stops_last]):
        for child in group:
            child.signal_group(signal.SIGTERM)
        stopped = time.monotonic()
        for child in group:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.0, stopped + child.stop_grace - time.monotonic()))
        for child in group:
            child.signal_group(signal.SIGKILL)  # whatever is left of each group, leader or not
            child.proc.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text) or "    (empty log)"


# How often the supervisor looks at its children (restarting one that died) and echoes their new
# log lines. At 0.2 s the supervisor took 0.3 % of a core on an idle suite, at 0.5 s 0.2 % (the
# `idle` aim is the whole suite under 3 %); a restart or a log line half a second later costs nothing.
WATCH_SECONDS = 0.5


class LogFollower(threading.Thread):
    """Echoes new lines of every child's log file to the console, prefixed with its name."""

    STYLES = (
        "cyan",
        "magenta",
        "green",
        "yellow",
        "blue",
        "bright_cyan",
        "bright_magenta",
        "bright_green",
    )

    def __init__(self, children: list[Child]) -> None:
        super().__init__(daemon=True, name="log-follower")
        self.files = []
        for i, child in enumerate(children):
            handle = open(child.log, "rb")  # noqa: SIM115 (open while following)
            handle.seek(0, os.SEEK_END)  # startup output stays in the files
            self.files.append((child.name, self.STYLES[i % len(self.STYLES)], handle))
        self.width = max(len(c.name) for c in children)
        self.done = threading.Event()

    def drain(self) -> None:
        for name, style, handle in self.files:
            while line := handle.readline():
                console.print(
                    Text.assemble(
                        (f"{name:<{self.width}} | ", style),
                        line.decode(errors="replace").rstrip("\n"),
                    )
                )

    def run(self) -> None:
        while not self.done.wait(WATCH_SECONDS):
            self.drain()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.drain()  # the children's shutdown lines
        for _, _, handle in self.files:
            handle.close()


# --- helpers ---------------------------------------------------------------------------------
def setting(config: dict[str, str], name: str, default: int) -> int:
    raw = config.get(name) or str(default)
    try:
        port = int(raw)
    except ValueError:
        raise Failure(f"{name}: expected a port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise Failure(f"{name}: expected a port number, got {raw!r}")
    return port or free_port()


def replica_ports(config: dict[str, str], name: str, default: int, replicas: int) -> list[int]:
    """Ports of a service's replicas: `<NAME>_PORT` as a comma list, one per replica, or one port
    whose replicas follow it 100 apart (8001, 8101, ...; 0 anywhere: free ports)."""
    var = f"{name.upper()}_PORT"
    raw = [p.strip() for p in (config.get(var) or str(default)).split(",") if p.strip()]
    if len(raw) > 1:
        if len(raw) != replicas:
            raise Failure(f"{var}: {len(raw)} ports for REPLICAS={replicas}")
        return [setting({var: p}, var, default) for p in raw]
    first = setting({var: raw[0] if raw else ""}, var, default)
    step = 0 if raw and raw[0] == "0" else 100
    return [first] + [(first + step * k) if step else free_port() for k in range(1, replicas)]


def replica_name(name: str, k: int) -> str:
    """`router`, then `router-2`, `router-3`, ...: one replica keeps the plain names."""
    return name if k == 1 else f"{name}-{k}"


def replica_count(config: dict[str, str]) -> int:
    raw = config.get("REPLICAS") or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 16:
        raise Failure(f"REPLICAS: expected a whole number from 1 to 16, got {raw!r}")
    return int(raw)


# Connections one service process may open besides its two pools: the relay's LISTEN, a job's lock.
EXTRA_CONNECTIONS = 3
RESERVED_CONNECTIONS = 5


def pool_size_for(available: int, processes: int) -> int:
    """DB_POOL_SIZE that keeps every service process within Postgres' connection slots: each holds
    up to two pools of that size (SQLAlchemy's and the hot path's) plus EXTRA_CONNECTIONS, and
    RESERVED_CONNECTIONS stay free for migrations, tools, psql and a restarted replica's overlap.
    10 (the services' default) when it fits; never under 2."""
    return max(2, min(10, ((available - RESERVED_CONNECTIONS) // processes - EXTRA_CONNECTIONS) // 2))


def default_workers(cores: int | None = None) -> int:
    """Worker processes per service: a quarter of the cores, at least one. Four services share the
    machine with Postgres, NATS and the simulators; on 2 cores a second router worker measured
    slower (186 vs 211 route-and-pay/s, tests/load/README.md), the cores being already busy."""
    return max(1, (cores or os.cpu_count() or 1) // 4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_free(host: str, port: int, what: str) -> None:
    with socket.socket() as s:
        # SO_REUSEADDR: only a listener (not TIME_WAIT leftovers of a previous run) blocks the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise Failure(
                f"port {port} ({what}) is already in use on {host}: {exc.strerror}. "
                f"Stop whatever listens there or set another port (`python -m tools.run --help`)."
            ) from None


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def listening(url: str) -> bool:
    parts = urlsplit(url)
    with (
        contextlib.suppress(OSError),
        socket.create_connection((parts.hostname, parts.port), timeout=0.5),
    ):
        return True
    return False


def mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def wait_ready(children: list[Child], checks: dict[str, str | None], timeout: float) -> None:
    """Wait until every check answers 200 (None: the port accepts connections)."""
    pending = {c.name: c for c in children}
    last: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for name, child in list(pending.items()):
            if child.proc.poll() is not None:
                raise Failure(
                    f"{name} exited with code {child.proc.returncode} during startup. "
                    f"Last lines of {child.log}:\n{tail(child.log)}"
                )
            path = checks.get(name)
            if path is None:
                ok = listening(child.url)
            else:
                last[name] = http_status(child.url + path)
                ok = last[name] == 200
            if ok:
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            lines = [f"not ready after {timeout:.0f}s: {', '.join(pending)}"]
            for name, child in pending.items():
                answer = (
                    f"/health/ready answered {last[name] or 'nothing (no connection)'}"
                    if name in last
                    else "not listening"
                )
                lines.append(
                    f"{name} ({child.url}, {answer}); last lines of {child.log}:\n{tail(child.log)}"
                )
            raise Failure("\n".join(lines))
        time.sleep(0.2)


# --- the suite -------------------------------------------------------------------------------
class Suite:
    """Everything one `make run` starts, in start order; `stop()` undoes whatever got started."""

    def __init__(self, config: dict[str, str]) -> None:
        self.config = config
        self.run_dir = (ROOT / config.get("RUN_DIR", ".run")).resolve()
        self.state_file = self.run_dir / "run.json"
        self.host = config.get("HOST", "127.0.0.1")
        self.children: list[Child] = []
        self.infra = None
        self.follower: LogFollower | None = None
        self.tokens: dict[str, str] = {}
        self.generated_secret: str | None = None
        self.database_url = ""
        self.workers = "1"
        self.replicas = 1
        self.pool_size = "10"

    def start(self) -> None:
        config, host = self.config, self.host
        gateway_port = setting(config, "GATEWAY_PORT", 8000)
        self.replicas = replicas = replica_count(config)
        # Each service's replicas: name -> ports, one per replica.
        ports = {name: replica_ports(config, name, port, replicas) for name, port in SERVICES.items()}
        console_ports = replica_ports(config, "console", CONSOLE_PORT, replicas)
        sims = []
        for sim in SIMULATORS:
            if config.get(sim.base_var):
                continue  # configured: use that API
            if importlib.util.find_spec(sim.module) is None:
                console.print(
                    f"[yellow]note:[/] no {sim.module} yet; {sim.name} is not simulated "
                    f"({sim.base_var} keeps the service default)"
                )
                continue
            sims.append((sim, setting(config, f"{sim.name.upper()}_SIM_PORT", sim.port)))
        for name, port in [("gateway", gateway_port),
                           *((replica_name(n, k), p) for n, ps in [*ports.items(), ("console", console_ports)]
                             for k, p in enumerate(ps, 1))]:
            ensure_free(host, port, name)
        for sim, port in sims:
            ensure_free("127.0.0.1", port, f"{sim.name} simulator")

        from tools.devinfra import create_database, start_infra

        with deferred():
            self.infra = start_infra(
                self.run_dir,
                force_embedded=config.get("RUN_EMBEDDED", "") in ("1", "true"),
                env=config,
            )
        db_name = (
            unquote(urlsplit(config.get("DATABASE_URL", "")).path.lstrip("/")) or "hybrid_payments"
        )
        create_database(self.infra.postgres_url, db_name)
        self.database_url = self.infra.database_url(db_name)
        from shared import migrations

        for service in migrations.SERVICES:
            migrations.upgrade(service, self.database_url)

        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "NATS_URL": self.infra.nats_url,
            "HOST": host,
            "LOG_JSON": config.get("LOG_JSON", "false"),  # readable console lines
            # The router calls external's internal API, taking its replicas in turn (shared.balancing).
            "EXTERNAL_SERVICE_URL": config.get(
                "EXTERNAL_SERVICE_URL", ",".join(f"http://127.0.0.1:{p}" for p in ports["external"])
            ),
            "WEBHOOK_BASE_URL": config.get("WEBHOOK_BASE_URL", f"http://127.0.0.1:{gateway_port}"),
            "WEB_CONCURRENCY": config.get("WEB_CONCURRENCY") or str(default_workers()),
        }
        self.workers = env["WEB_CONCURRENCY"]
        if not config.get("DB_POOL_SIZE"):
            from tools.devinfra import max_connections

            processes = len(SERVICES) * replicas * int(self.workers)
            env["DB_POOL_SIZE"] = str(pool_size_for(max_connections(self.infra.postgres_url), processes))
        self.pool_size = env["DB_POOL_SIZE"]
        if not config.get("JWT_SECRET") and not config.get("JWT_PUBLIC_KEY"):
            self.generated_secret = env["JWT_SECRET"] = secrets.token_urlsafe(32)
        if not config.get("CONNECTION_ENCRYPTION_KEYS"):
            # Kept in RUN_DIR and reused: a new key each run would leave every connection stored
            # by an earlier run unopenable (the database outlives the run).
            env["CONNECTION_ENCRYPTION_KEYS"] = self.dev_encryption_key()
        for sim, port in sims:
            env[sim.base_var] = f"http://127.0.0.1:{port}"
            env.update({var: config.get(var) or value for var, value in sim.defaults.items()})

        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        sandbox = self.run_dir / "sandbox"  # what the simulators keep across restarts
        if sims and (note := sandbox_note(sandbox)):
            console.print(f"[yellow]{note}[/]")
        for sim, port in sims:
            spawn(
                self.children,
                f"{sim.name}-sim",
                # What the sandbox processors were sent outlives a restart, as at a real processor.
                [sim.module, "--port", str(port), "--state-file", str(sandbox / f"{sim.name}.json")],
                env,
                logs,
                env[sim.base_var],
                stop_grace=SIMULATOR_STOP_GRACE,
                stops_last=True,
            )
        for name, replica_ports_ in ports.items():
            for k, port in enumerate(replica_ports_, 1):
                spawn(
                    self.children,
                    replica_name(name, k),
                    [f"services.{name}"],
                    {**env, "PORT": str(port)},
                    logs,
                    f"http://{_dial(host)}:{port}",
                    restart=True,
                )
        # The console calls the services with the signed-in user's token: directly, or through the
        # gateway when there are replicas to balance.
        service_urls = {
            f"{n.upper()}_URL": f"http://{_dial(host)}:{ps[0]}" if replicas == 1 else f"http://{_dial(host)}:{gateway_port}"
            for n, ps in ports.items()
        }
        for k, port in enumerate(console_ports, 1):
            spawn(
                self.children,
                replica_name("console", k),
                ["services.console"],
                {**env, "PORT": str(port), **service_urls},
                logs,
                f"http://{_dial(host)}:{port}",
                restart=True,
            )
        upstreams = [f"--upstream={n}=" + ",".join(f"http://{_dial(host)}:{p}" for p in ps)
                     for n, ps in [*ports.items(), ("console", console_ports)]]
        spawn(
            self.children,
            "gateway",
            [
                "tools.gateway",
                "--host",
                host,
                "--port",
                str(gateway_port),
                "--access-log",
                *upstreams,
            ],
            env,
            logs,
            f"http://{_dial(host)}:{gateway_port}",
        )
        checks = {c.name: "/health/ready" for c in self.children if c.restart} | {"gateway": "/health/live"}
        # Every process imports the whole stack at once: on two slow cores ten of them (REPLICAS=2)
        # took over 30 s to be ready, so the default grows with the replicas.
        wait_ready(self.children, checks, float(config.get("RUN_READY_TIMEOUT", str(60 * replicas))))

        secret = self.generated_secret or config.get("JWT_SECRET")
        if secret and not config.get("JWT_PUBLIC_KEY"):  # with a public key we cannot mint tokens
            from shared.auth import issue_token

            self.tokens = {
                "jwt_secret": secret,  # so `make load` can mint barber tokens for a generated secret
                # Subjects are positive integer ids for every role; 1000 stands for the operator.
                "admin_token": issue_token(secret, ADMIN_SUBJECT, "admin", ttl_seconds=86400),
                "barber_token": issue_token(secret, 1, "barber", ttl_seconds=86400),
            }
        self.report()
        self.write_state()
        if config.get("RUN_FOLLOW_LOGS", "1") not in ("0", "false"):
            self.follower = LogFollower(self.children)
            self.follower.start()

    def dev_encryption_key(self) -> str:
        from cryptography.fernet import Fernet

        path = self.run_dir / "connection-encryption-key"
        if path.exists():
            return path.read_text().strip()
        key = Fernet.generate_key().decode()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key

    def watch(self) -> None:
        while True:
            for child in self.children:
                if child.proc.poll() is None:
                    continue
                if not child.restart:
                    raise Failure(
                        f"{child.name} exited unexpectedly with code {child.proc.returncode}. "
                        f"Last lines of {child.log}:\n{tail(child.log)}"
                    )
                console.print(f"[yellow]{child.name} exited with code {child.proc.returncode}; restarting[/]")
                restart(child)
                self.write_state()
            time.sleep(WATCH_SECONDS)

    def stop(self) -> None:
        stop_children(self.children)
        if self.follower is not None:
            self.follower.stop()
        if self.infra is not None:
            self.infra.stop()
        self.state_file.unlink(missing_ok=True)

    def write_state(self) -> None:
        # For scripts and tests: who runs where, and the tokens (the file is private to the user).
        infra = self.infra
        # Written beside and renamed over, so a reader (a test polling for restarted children)
        # never sees the file empty or half-written.
        partial = self.state_file.with_name(self.state_file.name + ".partial")
        partial.touch(mode=0o600)
        partial.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "started_at": time.time(),
                    "children": {c.name: c.proc.pid for c in self.children},
                    "urls": {c.name: c.url for c in self.children},
                    "database_url": self.database_url,
                    "nats_url": infra.nats_url,
                    "workers_per_service": int(self.workers),
                    "replicas": self.replicas,
                    # The services' stream and subject prefix, so operator tools write and look where they do.
                    "event_stream": self.config.get("EVENT_STREAM") or "PAYMENTS",
                    "event_subject_prefix": self.config.get("EVENT_SUBJECT_PREFIX", ""),
                    "embedded": {
                        "postgres": infra.postgres_pid if infra.embedded_postgres else None,
                        "nats": infra.nats_pid if infra.embedded_nats else None,
                    },
                    **self.tokens,
                },
                indent=2,
            )
        )
        partial.chmod(0o600)
        os.replace(partial, self.state_file)

    def report(self) -> None:
        infra = self.infra
        table = Table(title="Hybrid Payments — make run", title_justify="left")
        for column in ("part", "listens on", "pid", "log / notes"):
            table.add_column(column, overflow="fold")
        table.add_row(
            "postgres",
            mask_url(self.database_url),
            "",
            "embedded" if infra.embedded_postgres else "configured / local",
        )
        table.add_row(
            "nats", infra.nats_url, "", "embedded" if infra.embedded_nats else "configured / local"
        )
        for child in self.children:
            table.add_row(child.name, child.url, str(child.proc.pid), os.path.relpath(child.log))
        console.print(table)
        console.print(f"Replicas per service: {self.replicas} (REPLICAS; the gateway takes them in turn); "
                      f"workers per replica: {self.workers} (WEB_CONCURRENCY; default a quarter of the cores); "
                      f"database pools of {self.pool_size} (DB_POOL_SIZE; default: what Postgres' max_connections allows)")
        console.print(
            f"Logs go to {self.run_dir / 'logs'}/<name>.log; new lines are echoed below, prefixed "
            f"with the name (RUN_FOLLOW_LOGS=0 turns that off). State: {self.state_file}"
        )
        if self.generated_secret:
            console.print(
                f"JWT_SECRET={self.generated_secret}   (generated; set it to reuse tokens)"
            )
        gateway = next(c.url for c in self.children if c.name == "gateway")
        console.print(f"API docs: {gateway}/docs (each service's docs page and OpenAPI document)")
        console.print(f"Console: {gateway}/console (sign in with a token below; as the operator: "
                      f"{gateway}/console/?token=$ADMIN_TOKEN)")
        if self.tokens:
            console.print(f"ADMIN_TOKEN={self.tokens['admin_token']}   (admin {ADMIN_SUBJECT})")
            console.print(
                f"BARBER_TOKEN={self.tokens['barber_token']}   (barber 1; both valid 24 h)"
            )
            console.print(
                'try: curl -H "Authorization: Bearer $ADMIN_TOKEN" '
                f"{gateway}/api/v1/hybrid-payments/config/1"
            )
        console.print("Ctrl-C stops everything.", style="bold")


def _dial(host: str) -> str:
    # Where to connect to reach something bound to `host`.
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


ENV_HELP = """\
environment (also read from .env; the environment wins):
  DATABASE_URL, NATS_URL      use these servers (else local ones on the default ports, else embedded
                              ones); the database (default hybrid_payments) is created if missing
  RUN_EMBEDDED=1              always start embedded Postgres and NATS
  RUN_DIR                     state (run.json), logs/ and embedded data (default .run)
  HOST                        bind address of the services, gateway (default 127.0.0.1)
  GATEWAY_PORT                8000; ROUTER_PORT 8001, EXTERNAL_PORT 8002, COLLECTIONS_PORT 8003,
                              ANALYTICS_PORT 8004, CONSOLE_PORT 8005; STRIPE_SIM_PORT 12111,
                              SQUARE_SIM_PORT 12112, PAYPAL_SIM_PORT 12113 (0 anywhere: a free port)
  REPLICAS                    processes of each service (and of the console), default 1; replica k
                              listens 100*(k-1) above its service's port (or give <NAME>_PORT as a
                              comma list); the gateway takes them in turn; a replica that dies is
                              restarted (the run stops if one keeps dying within 10 s of its start)
  STRIPE_API_BASE, SQUARE_API_BASE, PAYPAL_API_BASE
                              set one to use that API instead of its simulator
  STRIPE_SECRET_KEY           default sk_test_sandbox with the simulator
  JWT_SECRET                  generated and printed when neither it nor JWT_PUBLIC_KEY is set;
                              admin and barber-1 tokens are printed whenever it is known
  CONNECTION_ENCRYPTION_KEYS  when unset, a Fernet key generated once and kept in
                              RUN_DIR/connection-encryption-key (so stored connections stay readable)
  EXTERNAL_SERVICE_URL, WEBHOOK_BASE_URL   default to the local external service and gateway
  LOG_JSON                    default false under make run
  RUN_READY_TIMEOUT           seconds to wait for every /health/ready (default 60 per replica)
  RUN_FOLLOW_LOGS=0           do not echo the children's logs on the console
  everything else (EVENT_STREAM, EVENT_SUBJECT_PREFIX, LOG_LEVEL, ...) passes through to
  the services
"""


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(
        prog="python -m tools.run",
        description=__doc__,
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    from shared.config import read_dotenv

    suite = Suite(
        {**read_dotenv(ROOT / ".env"), **os.environ}
    )  # the environment wins, as in the services
    code = 1
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        try:
            suite.start()
            suite.watch()
        finally:
            # However the run ends, a signal from now on (a first one after a failure, too) is only
            # noted: it must not cut the report or the cleanup short.
            hold_signals()
    except Shutdown as stop:
        console.print(f"\n{stop.args[0]}: stopping …")
        code = 0
    except Failure as exc:
        console.print(f"[bold red]error:[/] {exc}")
    finally:  # anything else propagates with its traceback, after the cleanup
        suite.stop()
    console.print("stopped" if code == 0 else "stopped after a failure")
    return code


if __name__ == "__main__":
    sys.exit(main())
