"""Helpers of the console's browser tests (a module of its own: `conftest` is a name every
test folder uses)."""

from __future__ import annotations

from api_fixtures import PASSWORD
from playwright.async_api import Page


async def sign_in(page: Page, base_url: str, username: str, *, language: str = "en") -> None:
    await page.goto(base_url + "/")
    await page.select_option("#lang", language)
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#login", state="hidden")
    await page.wait_for_selector("body[data-live=on]")


async def cell(page: Page, selector: str) -> str:
    """A board cell's text whether or not its row is on screen: the board's rows skip
    rendering off screen (content-visibility), where innerText reads empty."""
    text = await page.text_content(selector)
    return " ".join((text or "").split())
