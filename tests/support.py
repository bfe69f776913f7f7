"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web


async def eventually(predicate, *, timeout: float = 5.0, interval: float = 0.05):
    """Poll an async or sync predicate until it returns a truthy value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def count_body_reads(monkeypatch, request_class: type, method: str) -> list[str]:
    """The paths of the requests whose body Litestar read through `request_class.method` (a fast
    path reads the body itself, so it adds none): the edge layer's fast-path tests count them."""
    reads: list[str] = []
    original = getattr(request_class, method)

    async def counted(self):
        reads.append(self.url.path)
        return await original(self)

    monkeypatch.setattr(request_class, method, counted)
    return reads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_process(args: list[str], env: dict[str, str], *, ready_url: str, log: Path,
                    timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """`python -m <args>` as a real process, ready when `ready_url` answers 200; its output goes
    to `log` (shown when it fails to start); terminated and reaped afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args[0]} not ready after {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def scratch_database(infra, name: str, *, migrated: bool = True) -> Iterator[str]:
    """A database of its own on the run's Postgres (every service schema at head unless `migrated`
    is false), dropped afterwards; yields its URL (`postgresql+asyncpg://`)."""
    from shared.migrations import SERVICES, upgrade
    from tools.devinfra import create_database, drop_database

    create_database(infra.postgres_url, name)
    url = infra.database_url(name)
    try:
        if migrated:
            with ThreadPoolExecutor(1) as pool:  # Alembic runs its own event loop: off the test loop's thread
                for service in SERVICES:
                    pool.submit(upgrade, service, url).result()
        yield url
    finally:
        drop_database(infra.postgres_url, name)


@contextlib.asynccontextmanager
async def serving(method: str, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> AsyncIterator[str]:
    """An aiohttp server on a free local port with one route; yields its base URL."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def hang_up(request: web.Request) -> web.Response:
    """A server closing the connection without an answer (as a replica shutting down closes a
    kept-alive connection a request just went out on)."""
    await request.read()
    assert request.transport is not None
    request.transport.close()
    return web.Response()  # never sent: the connection is gone
