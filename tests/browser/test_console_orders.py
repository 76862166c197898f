"""A leak worked through the console by three people, with the real gateway and devices: the
operator acknowledges it and assigns the order to an engineer's account; the engineer, on a
phone-sized screen, goes on site and resolves it; the reopen is refused with the interlock's
reason before and accepted after, and once a supervisor confirms it on the console's reopen
queue, valve_open reaches the meter."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from console_pages import sign_in
from support import wait_until_async

pytestmark = pytest.mark.services


async def test_leak_worked_from_board_to_reopen(api, users, as_role, own_gateway, fleet, devices,
                                                dsn, new_page, shot) -> None:
    house = fleet(1)[0]
    own_gateway.wait_devices(dsn)
    meter = devices(house.meter.id)
    det = devices(house.detectors[0].id)

    op = await new_page()
    await sign_in(op, api.base_url, users["operator"])
    await asyncio.to_thread(det.detector, 48.0)
    _, cut = await asyncio.to_thread(meter.commands.get, True, 5)
    await asyncio.to_thread(meter.ack, cut["cmd_id"])
    row = f'tr[data-household="{house.id}"]'
    await op.wait_for_selector(f'{row} [data-valve="closed"]')

    # the operator acknowledges
    await op.click(f"{row} button.ack")
    await op.fill("#act textarea", "owner called, crew on the way")
    await op.click("#act-ok")
    await op.wait_for_selector(f"{row} button.ack", state="detached")

    async with httpx.AsyncClient(base_url=api.base_url, timeout=20) as client:
        r = await client.get("/work-orders", params={"household_id": house.id},
                             headers=as_role["viewer"])
        wo = r.json()["items"][0]["id"]

        # the dispatcher assigns it to the engineer's account
        await op.goto(api.base_url + "/#orders")
        card = f'[data-column="open"] [data-order="{wo}"]'
        await op.click(f"{card} button.assign")
        await op.select_option("#assign select[name=engineer]", users["engineer"])
        await op.fill("#assign input[name=crew]", "crew-7")
        await op.click("#assign-ok")
        moved = f'[data-column="dispatched"] [data-order="{wo}"]'
        await op.wait_for_selector(moved)
        assert f"Engineer {users['engineer']}" in await op.inner_text(moved)
        await shot(op, "orders-board")

        # the engineer, on a phone
        eng = await new_page(width=390, height=844)
        await sign_in(eng, api.base_url, users["engineer"])
        mine = f'#mine [data-order="{wo}"]'
        await eng.wait_for_selector(mine)
        assert house.meter.id in await eng.inner_text(mine)  # the household's devices

        # a reopen now is refused, with the interlock's reason
        await eng.click(f"{mine} button.reopen")
        await eng.fill("#act textarea", "wants the gas back")
        await eng.click("#act-ok")
        await eng.wait_for_selector("#act-error:not(:empty)")
        refusal = await eng.inner_text("#act-error")
        print(f"reopen refused: {refusal}")
        await shot(eng, "phone-reopen-refused")
        await eng.click("#act button[value=cancel]")

        await eng.click(f"{mine} button.on-site")
        await eng.wait_for_selector(f'{mine} [data-status="on_site"]')
        # resolving while gas is detected is refused too, with its reason
        await eng.click(f"{mine} button.resolve")
        await eng.fill("#act textarea", "loose hose clamp replaced")
        await eng.click("#act-ok")
        await eng.wait_for_selector("#act-error:not(:empty)")
        assert "gas" in (await eng.inner_text("#act-error")).lower()
        await eng.click("#act button[value=cancel]")

        for _ in range(3):  # the room airs out: the gateway clears the alarm
            await asyncio.to_thread(det.detector, 0.5)

        async def gas_cleared() -> bool:
            r = await client.get("/alarms", params={"household_id": house.id, "active": "true"},
                                 headers=as_role["viewer"])
            return not [a for a in r.json()["items"] if a["kind"] in ("leak", "prealarm")]

        await wait_until_async(gas_cleared, 10, what="the gas alarm cleared")
        await eng.click(f"{mine} button.resolve")
        await eng.fill("#act textarea", "loose hose clamp replaced")
        await eng.click("#act-ok")
        await eng.wait_for_selector(f'{mine} [data-status="resolved"]')

        # now the reopen is accepted: the resolver's own request waits for a supervisor
        await eng.click(f"{mine} button.reopen")
        await eng.fill("#act textarea", "repaired and tested")
        await eng.click("#act-ok")
        await eng.wait_for_selector(f"{mine} .note")
        assert "supervisor" in await eng.inner_text(f"{mine} .note")
        await shot(eng, "phone-resolved")

        r = await client.get("/valves/reopen-requests", params={"status": "pending"},
                             headers=as_role["viewer"])
        req = next(q for q in r.json() if q["meter_id"] == house.meter.id)
        assert req["requested_by"] == users["engineer"] and req["address"] == house.address

        # a supervisor confirms it in the console, as the second person
        sup = await new_page()
        await sign_in(sup, api.base_url, users["admin"])
        await sup.goto(api.base_url + "/#reopens")
        row = f'#reopen-rows tr[data-request="{req["id"]}"]'
        await sup.wait_for_selector(f'{row}[data-status="pending"]')
        await shot(sup, "supervisor-reopens")
        await sup.click(f"{row} button.confirm-reopen")
        await sup.fill("#reopen-form textarea", "confirmed with the engineer by phone")
        await sup.click("#reopen-ok")
        await sup.wait_for_selector(f'{row}[data-status="confirmed"]')
        assert "valve_open" not in await sup.inner_text("#reopens-note")  # words, not codes
        assert await sup.inner_text("#reopens-note")
    _, reopen = await asyncio.to_thread(meter.commands.get, True, 5)
    assert reopen["action"] == "valve_open"
    assert refusal  # the first refusal said why
