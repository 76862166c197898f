"""The console's live board in a real browser: a leak from a real detector through the real
gateway appears without a reload and shows its valve confirmed closed after the meter's
ack; a riser incident is one row with its households; acknowledging (also an alarm that
returned to normal) and shelving; a viewer sees no action; the two languages."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time

import psycopg
import pytest
from console_pages import cell, sign_in

pytestmark = pytest.mark.services

CJK = re.compile(r"[\u4e00-\u9fff]")


async def _no_reload_marker(page) -> None:
    await page.evaluate("window.__sameDocument = true")


async def _same_document(page) -> bool:
    return await page.evaluate("window.__sameDocument === true")


async def test_leak_appears_live_and_valve_confirmed(api, users, own_gateway, fleet, devices, dsn,
                                                     new_page, shot) -> None:
    house = fleet(1)[0]
    own_gateway.wait_devices(dsn)
    meter = devices(house.meter.id)
    det = devices(house.detectors[0].id)
    page = await new_page()
    await sign_in(page, api.base_url, users["operator"])
    await _no_reload_marker(page)
    row = f'tr[data-household="{house.id}"]'

    sent = await asyncio.to_thread(det.detector, 48.0)
    await page.wait_for_selector(row, timeout=5_000)
    appeared_s = time.time() - sent
    print(f"leak on the board {appeared_s:.2f} s after the detector published it")
    assert appeared_s < 2.0
    assert await cell(page, f"{row} .sev") == "Critical"
    assert house.address.split()[0] in await cell(page, f"{row} .addr")

    _, cmd = await asyncio.to_thread(meter.commands.get, True, 5)
    assert cmd["action"] == "valve_close"
    await asyncio.to_thread(meter.ack, cmd["cmd_id"])
    await page.wait_for_selector(f'{row} [data-valve="closed"]', timeout=5_000)
    assert await cell(page, f"{row} .valve") == "Confirmed closed"
    assert await cell(page, f"{row} .order") != "—"  # the leak's work order, with its SLA
    assert await _same_document(page)
    await shot(page, "board-leak-closed")


async def _riser(dsn: str, houses, building: str, community: str) -> tuple[int, list[int]]:
    """What the gateway writes for a riser leak: one incident, one alarm per household."""
    now = dt.datetime.now(dt.UTC)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        inc = (await (await conn.execute(
            "INSERT INTO incidents (building, community, kind, opened_at, households)"
            " VALUES (%s, %s, 'leak', %s, %s) RETURNING id",
            (building, community, now, len(houses)))).fetchone())[0]
        ids = []
        for h in houses:
            aid = (await (await conn.execute(
                "INSERT INTO alarms (device_id, household_id, kind, severity, value, raised_at,"
                " incident_id) VALUES (%s, %s, 'leak', 'critical', 30, %s, %s) RETURNING id",
                (h.detectors[0].id, h.id, now, inc))).fetchone())[0]
            ids.append(aid)
            await conn.execute("SELECT pg_notify('gas_events', %s)", (json.dumps({
                "type": "alarm.raised", "alarm_id": aid, "household_id": h.id,
                "kind": "leak", "severity": "critical"}),))
    return inc, ids


async def test_riser_incident_is_one_row(api, users, city, dsn, new_page, shot) -> None:
    page = await new_page()
    await sign_in(page, api.base_url, users["viewer"])
    houses = city[:3]
    inc, _ = await _riser(dsn, houses, f"{houses[0].id}-riser", houses[0].community)
    row = f'tr[data-incident="{inc}"]'
    await page.wait_for_selector(row)
    # the three alarms arrive as three events: the row fills as each is read
    await page.locator(f"{row} li[data-household]").nth(2).wait_for()
    assert await page.locator(f"{row} li[data-household]").count() == 3
    for h in houses:  # none of them has a row of its own
        assert await page.locator(f'tr[data-household="{h.id}"]').count() == 0
    assert "3 households" in await page.inner_text(row)
    await shot(page, "board-riser-incident")


async def test_acknowledge_shelve_and_viewer(api, users, city, dsn, raise_alarm, new_page,
                                             shot) -> None:
    leak, _ = await raise_alarm(city[0])
    offline, _ = await raise_alarm(city[1], kind="offline", severity="warning", cause=None)
    returned, _ = await raise_alarm(city[2], kind="rising", severity="warning", cause=None)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("UPDATE alarms SET state = 'cleared', cleared_at = now()"
                           " WHERE id = %s", (returned,))

    viewer = await new_page()
    await sign_in(viewer, api.base_url, users["viewer"])
    await viewer.wait_for_selector(f'tr[data-alarm="{leak}"]')
    assert await viewer.locator("td.actions button").count() == 0
    await shot(viewer, "board-viewer")

    page = await new_page()
    await sign_in(page, api.base_url, users["operator"])
    # a critical alarm cannot be shelved; the others can
    assert await page.locator(f'tr[data-alarm="{leak}"] button.shelve').count() == 0
    assert "Returned to normal" in await cell(page, f'tr[data-alarm="{returned}"] .state')

    for alarm_id, comment in ((leak, "crew called"), (returned, "seen, back to normal")):
        await page.click(f'tr[data-alarm="{alarm_id}"] button.ack')
        await page.fill("#act textarea", comment)
        await page.click("#act-ok")
        await page.wait_for_selector(f'tr[data-alarm="{alarm_id}"] button.ack', state="detached")
    # the acknowledged leak stays (not cleared); the returned one leaves the board
    assert await cell(page, f'tr[data-alarm="{leak}"] .state') == "Acknowledged"
    await page.wait_for_selector(f'tr[data-alarm="{returned}"]', state="detached")
    # ...and the viewer's board followed without a reload
    await viewer.wait_for_selector(f'tr[data-alarm="{returned}"]', state="detached")

    shelved_before = int(await page.inner_text('[data-count="shelved"] b'))
    await page.click(f'tr[data-alarm="{offline}"] button.shelve')
    await page.fill("#act input[name=minutes]", "30")
    await page.fill("#act textarea", "detector chattering, crew booked")
    await page.click("#act-ok")
    await page.wait_for_selector(f'tr[data-alarm="{offline}"]', state="detached")
    assert int(await page.inner_text('[data-count="shelved"] b')) >= shelved_before + 1
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute(
            "SELECT shelved_by, shelve_reason, acknowledged_by, ack_comment, state"
            " FROM alarms WHERE id = ANY(%s) ORDER BY id", ([leak, offline, returned],))
                     ).fetchall()
    assert row[0][2:] == ("operator.one", "crew called", "acknowledged")
    assert row[1][:2] == ("operator.one", "detector chattering, crew booked")
    assert row[2][2:] == ("operator.one", "seen, back to normal", "cleared")
    await shot(page, "board-operator")


async def test_language_switch_changes_every_label(api, users, city, raise_alarm, new_page,
                                                   shot) -> None:
    await raise_alarm(city[0])
    page = await new_page()
    await sign_in(page, api.base_url, users["operator"], language="zh-CN")
    await page.wait_for_selector("tr[data-alarm]")
    labels = page.locator("[data-i18n]:visible")
    zh = await labels.all_inner_texts()
    assert zh and all(CJK.search(text) for text in zh), zh
    await shot(page, "board-zh-CN")

    await page.select_option("#lang", "en")
    en = await labels.all_inner_texts()
    assert len(en) == len(zh) and all(a != b for a, b in zip(zh, en, strict=True))
    text = await page.inner_text("body")
    leftover = [line for line in text.splitlines() if CJK.search(line) and "中文" not in line]
    # addresses are data (generated city names may be Chinese); labels are not
    addresses = set(await page.locator("td.addr, td.addr li").all_inner_texts())
    assert [x for x in leftover if not any(x in a or a in x for a in addresses)] == []
    await shot(page, "board-en")
