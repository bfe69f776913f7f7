"""End-to-end fixtures: one headless Chromium per test session for the browser tests (Debian's
`chromium` driven by the `playwright` package through `executable_path`; never `playwright
install`, which downloads a browser). Each test opens its own context on it."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "chromium not installed: apt-get install chromium (CI installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator:
    executable = chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        # --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start.
        launched = await playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        await launched.close()
