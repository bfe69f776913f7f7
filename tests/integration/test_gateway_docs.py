"""The API docs through the dev gateway: real Litestar apps built with `shared.docs.openapi_config`
served by granian (the services' server), the gateway in front on a real socket.

What must hold: `/docs` links every service; `/docs/<service>/` is that service's docs page, and the
spec URL written into the page, resolved against the gateway URL the browser used, is that
service's OpenAPI document (not another service's, not the gateway's); the page's script and
stylesheet resolve the same way to the vendored files, and it names no other origin.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
import pytest

from tools.gateway import GATEWAY_NAME, create_gateway_app, serve

ROOT = Path(__file__).resolve().parents[2]
# Each app has its own title and one route of its own, so a document shows whose it is.
APP_MODULE = textwrap.dedent(
    '''
    import os

    from litestar import Litestar, get

    from shared.docs import openapi_config

    PATH = os.environ["DOCS_TEST_ROUTE"]


    @get(PATH, sync_to_thread=False)
    def ping() -> dict[str, str]:
        return {"ok": "yes"}


    def create_app() -> Litestar:
        return Litestar([ping], openapi_config=openapi_config(title=os.environ["DOCS_TEST_TITLE"]))
    '''
)
SERVICES = {
    "router": ("Router API", "/api/v1/hybrid-payments/ping"),
    "external": ("External API", "/api/v1/external-payments/ping"),
}
SPEC_URL = re.compile(r'"url": "([^"]+)"')
ASSET_URL = re.compile(r'(?:src|href)="([^"]+)"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def docs_apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """router and external as granian processes; collections points at a port nobody serves."""
    app_dir = tmp_path_factory.mktemp("docs_apps")
    (app_dir / "docs_test_app.py").write_text(APP_MODULE)
    procs: list[tuple[subprocess.Popen, Path]] = []
    urls: dict[str, str] = {}
    try:
        for name, (title, route) in SERVICES.items():
            port = _free_port()
            log = app_dir / f"{name}.log"
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(app_dir)]),
                "DOCS_TEST_TITLE": title,
                "DOCS_TEST_ROUTE": route,
            }
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-ws",
                     "docs_test_app:create_app"],
                    cwd=app_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            procs.append((proc, log))
            urls[name] = f"http://127.0.0.1:{port}"
        for (proc, log), url in zip(procs, urls.values()):
            deadline = time.monotonic() + 30
            while not _answers(url + "/schema/openapi.json"):
                assert proc.poll() is None, f"granian exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"granian not up in 30 s:\n{log.read_text()}"
                time.sleep(0.1)
        urls["collections"] = f"http://127.0.0.1:{_free_port()}"  # down
        yield urls
    finally:
        for proc, _ in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.asynccontextmanager
async def _gateway(routes: dict[str, str]) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with (
        serve(create_gateway_app(routes), "127.0.0.1", 0) as (host, port),
        aiohttp.ClientSession() as client,
    ):
        yield client, f"http://{host}:{port}"


async def _spec_through(client: aiohttp.ClientSession, page_url: str) -> dict:
    """Fetch a docs page, take the spec URL it names, resolve it as a browser would, fetch that."""
    async with client.get(page_url, allow_redirects=False) as resp:
        assert resp.status == 200, (page_url, resp.status, await resp.text())
        assert resp.content_type == "text/html"
        page = await resp.text()
    found = SPEC_URL.search(page)
    assert found, f"no spec URL in {page_url}:\n{page[:2000]}"
    spec_url = urljoin(page_url, found.group(1))
    async with client.get(spec_url, allow_redirects=False) as resp:
        assert resp.status == 200, (spec_url, resp.status, await resp.text())
        return await resp.json(content_type=None)


async def test_a_services_docs_page_through_the_gateway_loads_that_services_document(
    docs_apps: dict[str, str],
) -> None:
    async with _gateway(docs_apps) as (client, gateway):
        for name, (title, route) in SERVICES.items():
            for page in (f"/docs/{name}/", f"/docs/{name}/swagger"):
                spec = await _spec_through(client, gateway + page)
                assert spec["info"]["title"] == title, (page, spec["info"])
                assert list(spec["paths"]) == [route], page
            async with client.get(f"{gateway}/docs/{name}/openapi.json") as resp:
                assert resp.status == 200
                assert (await resp.json(content_type=None))["info"]["title"] == title
                # A relayed answer keeps the service's own Server header.
                assert resp.headers.get("Server") == "granian"
                assert GATEWAY_NAME in resp.headers.get("Via", "")


async def test_the_same_pages_work_on_the_service_itself(docs_apps: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as client:
        base = docs_apps["router"]
        for page in ("/schema", "/schema/", "/schema/swagger", "/schema/swagger/"):
            spec = await _spec_through(client, base + page)
            assert spec["info"]["title"] == "Router API", page


async def test_the_pages_assets_are_the_vendored_files_and_nothing_is_from_another_origin(
    docs_apps: dict[str, str],
) -> None:
    vendored = ROOT / "shared" / "static" / "swagger-ui"
    async with _gateway(docs_apps) as (client, gateway):
        for page_url in (gateway + "/docs/external/", gateway + "/docs/external/swagger",
                         docs_apps["router"] + "/schema", docs_apps["router"] + "/schema/swagger/"):
            async with client.get(page_url) as resp:
                page = await resp.text()
            assert "SwaggerUIBundle" in page
            urls = ASSET_URL.findall(page)
            assert {u.rsplit("/", 1)[-1] for u in urls} >= {"swagger-ui.css", "swagger-ui-bundle.js"}, page
            for url in urls:
                if url.startswith("data:"):
                    continue
                assert "//" not in url and not url.startswith("/"), f"{page_url} names {url}"
                async with client.get(urljoin(page_url, url)) as resp:
                    assert resp.status == 200, (page_url, url)
                    assert await resp.read() == (vendored / url.rsplit("/", 1)[-1]).read_bytes()


async def test_the_docs_index_links_every_service(docs_apps: dict[str, str]) -> None:
    async with _gateway(docs_apps) as (client, gateway):
        async with client.get(gateway + "/docs") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert resp.headers["Server"] == GATEWAY_NAME
            page = await resp.text()
        for name in docs_apps:
            assert f'href="/docs/{name}/"' in page
            assert f'href="/docs/{name}/openapi.json"' in page
        # Every link in the index resolves (the down service's as a problem, below).
        for name in SERVICES:
            spec = await _spec_through(client, urljoin(gateway + "/docs", f"/docs/{name}/"))
            assert spec["info"]["title"] == SERVICES[name][0]
        async with client.get(gateway + "/docs", headers={"Accept": "application/json"}) as resp:
            assert await resp.json() == {
                name: {"docs": f"/docs/{name}/", "openapi": f"/docs/{name}/openapi.json"}
                for name in docs_apps
            }


async def test_docs_redirects_and_problems(docs_apps: dict[str, str]) -> None:
    async with _gateway(docs_apps) as (client, gateway):
        # Without the slash a relative spec URL would resolve beside the page, not below it.
        async with client.get(gateway + "/docs/router", allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (308, "/docs/router/")
        # The gateway fronts four documents, so its own /schema points at the index.
        for path in ("/schema", "/schema/openapi.json"):
            async with client.get(gateway + path, allow_redirects=False) as resp:
                assert (resp.status, resp.headers["Location"]) == (307, "/docs"), path
        for method, path, status, code in [
            ("GET", "/docs/nowhere/", 404, "not_found"),
            ("GET", "/docs/nowhere", 404, "not_found"),
            ("GET", "/docs/collections/", 502, "upstream_unavailable"),
            ("POST", "/docs/router/openapi.json", 405, "method_not_allowed"),
            ("DELETE", "/docs", 405, "method_not_allowed"),
        ]:
            async with client.request(method, gateway + path, allow_redirects=False) as resp:
                body = await resp.json(content_type=None)
                assert resp.content_type == "application/problem+json", (method, path)
                assert (resp.status, body["code"], body["status"]) == (status, code, status)
                assert resp.headers["Server"] == GATEWAY_NAME
                if status == 405:
                    assert resp.headers["Allow"] == "GET,HEAD"
