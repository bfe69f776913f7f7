"""The TypeScript client (clients/typescript): its generated types are what the committed OpenAPI
documents say (regenerated, then `git diff --exit-code`, as CI must), it type-checks (`tsc`), and
its own tests (node's test runner) pass against `make run`: options, pay, refund, a declined card."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.console_support import ADMIN_ID, token
from tests.e2e.ledger import call
from tests.run_support import make_run

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"


def run(*command: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=CLIENT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def built() -> Path:
    """`npm ci` (the pinned packages of package-lock.json), then the types regenerated and compiled."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        message = "node and npm not installed: apt-get install nodejs npm"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    for step in (("npm", "ci", "--no-audit", "--no-fund"), ("npm", "run", "generate")):
        done = run(*step)
        assert done.returncode == 0, f"{' '.join(step)}:\n{done.stdout}\n{done.stderr}"
    return CLIENT


def test_the_generated_types_are_those_of_the_committed_documents(built: Path) -> None:
    diff = subprocess.run(["git", "diff", "--exit-code", "--stat", "--", "clients/typescript/src/generated"],
                          cwd=ROOT, capture_output=True, text=True)
    assert diff.returncode == 0, f"regenerated types differ from the committed ones (run `make client`):\n{diff.stdout}"
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "clients/typescript/src"],
                               cwd=ROOT, capture_output=True, text=True).stdout
    assert untracked == ""


def test_the_client_type_checks(built: Path) -> None:
    checked = run("npx", "tsc", "--noEmit", "-p", "tsconfig.json")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture(scope="module")
def suite(service_env, tmp_path_factory):
    with make_run(service_env, tmp_path_factory.mktemp("ts-client")) as running:
        yield running


async def test_the_clients_own_tests_pass_against_make_run(built: Path, suite) -> None:
    barber = 890_001
    async with aiohttp.ClientSession(base_url=suite.state["urls"]["gateway"]) as http:
        status, _ = await call(http, "PUT", f"/api/v1/hybrid-payments/config/{barber}",
                               {"Authorization": f"Bearer {token(suite.state, ADMIN_ID, 'admin')}"},
                               {"connect_account_id": f"acct_ts{barber}"})
        assert status == 200
    compiled = run("npx", "tsc", "-p", "tsconfig.json")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    tested = run("node", "--test", "dist/test/", env={
        "HP_BASE_URL": suite.state["urls"]["gateway"], "HP_BARBER_ID": str(barber),
        "HP_BARBER_TOKEN": token(suite.state, barber, "barber")})
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    assert "# pass 5" in tested.stdout and "# skipped 0" in tested.stdout, tested.stdout[-2000:]
