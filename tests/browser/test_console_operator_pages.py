"""The city view, fleet health and admin pages in a real browser: the city's schematic leads
from a community to a household's page; the fleet's CSV downloads with the devices to
replace; an admin creates a user and disables it; and the language switch leaves no English
label on any of these pages (data, such as ids and addresses, aside)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest
from api_fixtures import PASSWORD
from console_pages import sign_in
from household_data import fill

pytestmark = pytest.mark.services

# Labels in English on a zh-CN page: any run of two or more Latin letters outside data
# (elements with data-v), the language menu and the signed-in user's name. Units and format
# names are the same in both languages.
LEFTOVERS = """() => {
  const allowed = new Set(["LEL", "CSV"]);
  const out = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const host = n.parentElement;
    if (!host || host.closest("[data-v], #lang, #who, script, style, dialog:not([open])")) continue;
    if (!host.checkVisibility()) continue;
    for (const word of n.textContent.match(/[A-Za-z]{2,}/g) || []) {
      if (!allowed.has(word)) out.push(word + " in <" + host.tagName + " " + host.className + ">");
    }
  }
  for (const i of document.querySelectorAll("input[placeholder]")) {
    if (i.checkVisibility() && /[A-Za-z]{2,}/.test(i.placeholder)) {
      out.push("placeholder " + i.placeholder);
    }
  }
  return out;
}"""


async def test_city_click_through_to_household(api, users, city, dsn, raise_alarm, new_page,
                                               shot) -> None:
    await fill(dsn, city)
    await raise_alarm(city[0], cause=None)
    page = await new_page()
    await sign_in(page, api.base_url, users["viewer"])
    await page.click('#nav a[href="#city"]')
    tile = f'#city a[data-community="{city[0].community}"]'
    await page.wait_for_selector(tile)
    assert "leak 1" in await page.inner_text(tile)
    await shot(page, "city")
    await page.click(tile)
    for house, state in zip(city, ["leak", "valve_cut", "offline", "past_life"], strict=True):
        cell = f'#city .cell[data-household="{house.id}"][data-state="{state}"]'
        await page.wait_for_selector(cell)
    await shot(page, "city-community")
    await page.click(f'#city .cell[data-household="{city[1].id}"]')
    await page.wait_for_selector("#household .hh-address")
    assert await page.inner_text("#household .hh-address") == city[1].address
    assert await page.get_attribute("#household .valve-state", "data-valve") == "closed"


async def test_fleet_csv_downloads_the_devices_to_replace(api, users, city, dsn, new_page,
                                                          shot) -> None:
    await fill(dsn, city)
    page = await new_page()
    await sign_in(page, api.base_url, users["viewer"])
    await page.goto(api.base_url + "/#fleet")
    mine = f'#fleet tr[data-community="{city[0].community}"]'
    await page.wait_for_selector(mine)
    cell = await page.inner_text(f'{mine} [data-col="unprotected_households"]')
    assert cell == "1"
    await shot(page, "fleet")
    async with page.expect_download() as info:
        await page.click(f"{mine} button.csv")
    download = await info.value
    assert download.suggested_filename.startswith(f"fleet-health-{city[0].community}")
    text = Path(await download.path()).read_text(encoding="utf-8")
    rows = {r["device_id"]: r["issues"] for r in csv.DictReader(io.StringIO(text))}
    expected = {d.id: "offline" for d in city[2].detectors}
    expected[city[3].meter.id] = "low_battery;past_service_life"
    assert rows == expected

    await page.select_option("#fleet-issue", "past_service_life")
    async with page.expect_download() as info:
        await page.click(f"{mine} button.csv")
    text = Path(await (await info.value).path()).read_text(encoding="utf-8")
    assert [r["device_id"] for r in csv.DictReader(io.StringIO(text))] == [city[3].meter.id]


async def test_admin_creates_and_disables_a_user(api, users, prefix, new_page, shot) -> None:
    name = f"{prefix}.night".lower()
    page = await new_page()
    await sign_in(page, api.base_url, users["admin"])
    await page.click('#nav a[href="#admin"]')
    for _ in range(2):
        await page.fill("#user-create input[name=username]", name)
        await page.fill("#user-create input[name=password]", PASSWORD)
        await page.select_option("#user-create select[name=role]", "operator")
        await page.click("#user-create button[type=submit]")
        row = f'#admin tr[data-user="{name}"]'
        await page.wait_for_selector(row)
    # the second time, the API's refusal is shown
    await page.wait_for_selector("#admin-error:not(:empty)")
    assert "exists already" in await page.inner_text("#admin-error")
    assert await page.input_value(f"{row} select") == "operator"
    async with httpx.AsyncClient(base_url=api.base_url) as c:
        r = await c.post("/auth/token", data={"username": name, "password": PASSWORD})
        assert r.status_code == 200
        await page.click(f"{row} button.disable")
        await page.wait_for_selector(f'{row} [data-disabled="true"]')
        await shot(page, "admin")
        r = await c.post("/auth/token", data={"username": name, "password": PASSWORD})
        assert r.status_code == 401
    # the audit search finds the change
    await page.fill("#audit-search input[name=entity_id]", name)
    await page.click("#audit-search button[type=submit]")
    await page.wait_for_selector("#admin [data-audit]")
    assert "user.update" in await page.inner_text("#admin .panel:last-child")
    # a key for the user, shown once, then revoked
    await page.fill("#key-create input[name=username]", name)
    await page.click("#key-create button[type=submit]")
    await page.wait_for_selector("#admin .new-key")
    revoke = f'#admin tr[data-key]:has-text("{name}") button.revoke'
    await page.click(revoke)
    await page.wait_for_selector(revoke, state="detached")


async def test_language_switch_changes_every_label(api, users, city, dsn, raise_alarm,
                                                   new_page, shot) -> None:
    await fill(dsn, city)
    await raise_alarm(city[0], cause=None)
    page = await new_page()
    await sign_in(page, api.base_url, users["admin"])
    pages = {
        "household": (f"#household/{city[0].id}", '#household [data-chart="flow"] canvas'),
        "city": ("#city", f'#city a[data-community="{city[0].community}"]'),
        "community": (f"#city/{city[0].community}", "#city .cell"),
        "fleet": ("#fleet", "#fleet tr[data-community]"),
        "admin": ("#admin", "#admin [data-audit]"),
    }
    for name, (hash_, ready) in pages.items():
        await page.select_option("#lang", "en")
        await page.goto(api.base_url + "/" + hash_)
        await page.wait_for_selector(ready)
        english = await page.inner_text("main")
        await page.select_option("#lang", "zh-CN")
        await page.wait_for_selector(ready)
        await page.wait_for_timeout(300)  # the page re-reads in the new language
        left = await page.evaluate(LEFTOVERS)
        assert not left, f"{name}: English left in zh-CN: {left[:10]}"
        assert await page.inner_text("main") != english
        await shot(page, f"zh-{name}")
