"""Browser tests of the console: Debian's Chromium (installed by scripts/bootstrap.sh) driven
by Playwright for Python against the real API, database and, where a test says so, the real
gateway. Never `playwright install`: the browser is the system's /usr/bin/chromium, and a
missing one fails the tests instead of skipping them.

Each test saves screenshots under its own tmp dir and prints their paths.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        raise RuntimeError(
            f"no Chromium at {CHROMIUM}: run scripts/bootstrap.sh (it installs Debian's chromium)"
        )
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def new_page(browser: Browser) -> AsyncIterator[Any]:
    """`await new_page(width=1280, height=800)`: a page in a fresh context (its own storage)."""
    contexts = []

    async def make(width: int = 1400, height: int = 900) -> Page:
        ctx = await browser.new_context(viewport={"width": width, "height": height},
                                        locale="en-US")
        contexts.append(ctx)
        page = await ctx.new_page()
        page.set_default_timeout(10_000)
        return page

    yield make
    for ctx in contexts:
        await ctx.close()


@pytest.fixture
def shot(tmp_path: Path) -> Any:
    """`await shot(page, "name")`: a full-page screenshot under the test's tmp dir."""

    async def take(page: Page, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    return take


@pytest.fixture
def own_gateway(stack: Any) -> Any:
    """A gateway for this test only, stopped after it: the API tests play the gateway's part
    and assert exact lists, which a gateway left running (offline, service life...) would
    upset."""
    from support import GatewayProcess

    gw = GatewayProcess(stack).start()
    yield gw
    gw.stop()
