"""The household page in a real browser: a viewer sees the owner's phone masked and no valve
or other action buttons; an operator closes the valve from the page and the command appears
in its history; an engineer's reopen is refused with the interlock's reason; a supervisor
confirms a reopen held for a second person; the charts draw a day of readings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from console_pages import sign_in
from household_data import fill

pytestmark = pytest.mark.services

DOCS = Path(__file__).resolve().parents[2] / "docs"


async def test_viewer_sees_masked_phone_and_no_actions(api, users, city, dsn, new_page,
                                                       shot) -> None:
    await fill(dsn, city)
    house = city[0]
    page = await new_page()
    await sign_in(page, api.base_url, users["viewer"])
    await page.goto(f"{api.base_url}/#household/{house.id}")
    phone = await (await page.wait_for_selector("#household .owner-phone")).inner_text()
    assert phone != house.owner_phone and "*" in phone and phone.endswith(house.owner_phone[-4:])
    await page.wait_for_selector("#household [data-notification] .recipient")
    recipient = await page.inner_text("#household [data-notification] .recipient")
    assert recipient != house.owner_phone and "*" in recipient
    assert await page.locator("#household .valve-close").count() == 0
    assert await page.locator("#household .valve-reopen").count() == 0
    # the only buttons a viewer gets choose the charts' window
    labels = await page.locator("#household button:visible").evaluate_all(
        "bs => bs.map(b => b.dataset.range || b.textContent)")
    assert labels == ["hour", "day", "year"]
    assert not await page.locator("#household .hh-audit").is_visible()
    await shot(page, "household-viewer")


async def test_operator_closes_valve_and_engineer_is_refused(api, users, city, dsn, new_page,
                                                             shot) -> None:
    await fill(dsn, city)
    house = city[0]
    op = await new_page()
    await sign_in(op, api.base_url, users["operator"])
    await op.goto(f"{api.base_url}/#household/{house.id}")
    await op.wait_for_selector('#household [data-chart="methane"] canvas')
    await op.wait_for_selector('#household [data-chart="flow"] canvas')
    assert await op.inner_text("#household .owner-phone") == house.owner_phone
    assert await op.locator("#household .valve-reopen").count() == 0  # operators only close
    await op.fill("#household .valve-form input", "resident smells gas")
    await op.click("#household .valve-close")
    cmd = '#household tr[data-action="valve_close"]'
    await op.wait_for_selector(cmd)
    assert "resident smells gas" in await op.inner_text(cmd)
    note = op.locator("#hh-valve-note")
    await note.filter(has_text="Close command sent").wait_for()
    # the command's live event reloads the page 0.3 s later: the answer stays
    await op.wait_for_timeout(1200)
    assert "Close command sent" in await note.inner_text()
    await op.wait_for_selector('#household [data-audit]')
    assert "valve.valve_close" in await op.inner_text("#household .hh-audit")
    await op.click('#household [data-range="hour"]')
    await op.wait_for_selector('#household [data-chart="methane"] canvas')
    await op.click('#household [data-range="day"]')
    await op.wait_for_selector('#household [data-chart="methane"] canvas')
    path = await shot(op, "household-operator")
    if os.environ.get("DOCS_SCREENSHOTS"):  # refresh the README's picture on request
        shutil.copyfile(path, DOCS / "console-household.png")

    eng = await new_page()
    await sign_in(eng, api.base_url, users["engineer"])
    await eng.goto(f"{api.base_url}/#household/{house.id}")
    await eng.fill("#household .valve-form input", "resident wants the gas back")
    await eng.click("#household .valve-reopen")
    await eng.wait_for_selector("#hh-valve-error:not(:empty)")
    refusal = await eng.inner_text("#hh-valve-error")
    print(f"reopen refused: {refusal}")
    assert refusal.startswith("Refused:") and "order" in refusal
    await eng.wait_for_timeout(1200)  # past the live refresh its audit row brings
    assert await eng.inner_text("#hh-valve-error") == refusal
    await shot(eng, "household-reopen-refused")


async def test_board_address_leads_to_household(api, users, city, dsn, raise_alarm,
                                                new_page) -> None:
    await raise_alarm(city[0], cause=None)
    page = await new_page()
    await sign_in(page, api.base_url, users["operator"])
    await page.click(f'tr[data-household="{city[0].id}"] a.hh-link')
    await page.wait_for_selector("#household .hh-address")
    assert await page.inner_text("#household .hh-address") == city[0].address


async def test_supervisor_confirms_a_held_reopen(api, users, as_role, city, dsn, new_page,
                                                 shot) -> None:
    """The engineer who resolved the cut's order asks for the gas back: the request waits for
    a supervisor, who confirms it from the household page; valve_open is then a command."""
    await fill(dsn, city)
    house, meter = city[0], city[0].meter.id
    async with httpx.AsyncClient(base_url=api.base_url, timeout=20) as c:
        r = await c.post(f"/valves/{meter}/close", json={"reason": "smell in the stairwell"},
                         headers=as_role["operator"])
        assert r.status_code == 202, r.text
        wo = r.json()["work_order_id"]

        async def version() -> int:
            got = await c.get(f"/work-orders/{wo}", headers=as_role["viewer"])
            return int(got.json()["version"])

        steps = [("operator", "assign", {"engineer": users["engineer"]}),
                 ("engineer", "on-site", {}),
                 ("engineer", "resolve", {"findings": "hose clamp replaced, no gas"})]
        for role, step, body in steps:
            r = await c.post(f"/work-orders/{wo}/{step}", headers=as_role[role],
                             json={**body, "expected_version": await version()})
            assert r.status_code < 300, r.text
        r = await c.post(f"/valves/{meter}/reopen", json={"reason": "repaired"},
                         headers=as_role["engineer"])
        assert r.status_code == 202 and r.json()["request"], r.text

    page = await new_page()
    await sign_in(page, api.base_url, users["admin"])
    await page.goto(f"{api.base_url}/#household/{house.id}")
    await page.wait_for_selector("#household [data-request] button.reopen-confirm")
    await page.fill("#household .valve-form input", "checked the findings by phone")
    await page.click("#household [data-request] button.reopen-confirm")
    await page.wait_for_selector('#household tr[data-action="valve_open"]')
    assert "Confirmed" in await page.inner_text("#hh-valve-note")
    assert await page.locator("#household [data-request]").count() == 0
    await shot(page, "household-reopen-confirmed")
