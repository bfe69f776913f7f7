"""Helpers for the router tests: a Stripe simulator process, tokens, database peeks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import aiohttp

from shared.auth import issue_token
from tests.conftest import JWT_SECRET

BASE = "/api/v1/hybrid-payments"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sim(module: str, *args: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A processor simulator as its own process, as it runs in the sandbox (apps under test in
    the in-process test client run on another loop, so an in-loop server could not answer them);
    `args` are more of its command-line flags."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{module} did not start")


def start_stripe_sim() -> tuple[subprocess.Popen, str]:
    return start_sim("sandbox.stripe_sim")


def barber(barber_id: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(JWT_SECRET, barber_id, 'barber')}"}


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(JWT_SECRET, 1000, 'admin')}"}


async def sim_post(control: aiohttp.ClientSession, path: str, body: dict) -> dict:
    """POST to a simulator's /_sim control through the `control` session; it must answer 200."""
    async with control.post(path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def sim_call(url: str, method: str, path: str, json: dict | None = None) -> dict:
    async with aiohttp.ClientSession() as http, http.request(method, url + path, json=json) as response:
        return await response.json()
