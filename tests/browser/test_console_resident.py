"""The residents' page on a phone (390x844) and the operators' upgrade page: a resident
books a place and the community's count drops; a booking beyond the quota is refused with
a clear message; a booking is cancelled and its place returns; a resident signs in with the
one-time code texted through the fake SMS gateway and sees the month's gas use computed
from the meter's readings (seeded here), and the safety notices sent to the household."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import itertools
import re
import zoneinfo

import httpx
import psycopg
import pytest
from console_pages import cell, sign_in

from gateway.ops.provision import generate_city, provision

pytestmark = pytest.mark.services

PHONE = {"width": 390, "height": 844}


def _client(prefix: str, who: str) -> dict[str, str]:
    n = int.from_bytes(hashlib.sha256(f"page/{prefix}/{who}".encode()).digest()[:3], "big")
    return {"X-Forwarded-For": str(ipaddress.IPv4Address(0x64C00000 + n))}


@pytest.fixture
def block(dsn, prefix):
    houses = generate_city(4, seed=11, prefix=prefix)
    provision(dsn, houses, None, None)
    assert len({h.community for h in houses}) == 1
    return houses


async def _resident_page(new_page, base_url: str, house, prefix: str):
    page = await new_page(**PHONE)
    await page.set_extra_http_headers(_client(prefix, house.id))
    await page.goto(base_url + "/resident")
    await page.fill("#ask-form input[name=household_id]", house.id)
    await page.fill("#ask-form input[name=phone]", house.owner_phone)
    return page


async def _remaining(page, n: int) -> None:
    await page.wait_for_selector(f'#remaining[data-remaining="{n}"]')


async def test_resident_books_cancels_and_is_refused_past_quota(api, users, as_role, block,
                                                                prefix, new_page, shot) -> None:
    a, b, c = block[0], block[1], block[2]
    community = a.community
    async with httpx.AsyncClient(base_url=api.base_url, timeout=20) as client:
        r = await client.put(f"/upgrades/quotas/{community}", json={"places": 2},
                             headers=as_role["admin"])
        assert r.status_code == 200

        page = await _resident_page(new_page, api.base_url, a, prefix)
        # Chinese by default, English on the switch
        assert await page.inner_text(".brand") == "燃气安全 · 居民服务"
        await page.select_option("#lang", "en")
        assert await page.inner_text("#lookup") == "See places"
        await page.click("#lookup")
        await _remaining(page, 2)
        await shot(page, "resident-places")
        await page.click("#book")
        await _remaining(page, 1)  # the community's count drops
        assert "Visit booked" in await page.inner_text("#booking-text")
        await shot(page, "resident-booked")

        # resident c looks while one place is left ...
        late = await _resident_page(new_page, api.base_url, c, prefix)
        await late.select_option("#lang", "en")
        await late.click("#lookup")
        await _remaining(late, 1)
        # ... b takes it meanwhile ...
        slot = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).replace(minute=0, second=0,
                                                                        microsecond=0)
        r = await client.post("/upgrades/resident/bookings", headers=_client(prefix, b.id),
                              json={"household_id": b.id, "phone": b.owner_phone,
                                    "slot_start": slot.isoformat()})
        assert r.status_code == 201, r.text
        # ... and c's booking beyond the quota is refused, with the count brought up to date
        await late.click("#book")
        await late.wait_for_selector("#places-error:has-text('No places left')")
        assert (await late.inner_text("#places-error")) == (
            "No places left in your community: the booking was refused")
        await _remaining(late, 0)
        await shot(late, "resident-refused")
        r = await client.get("/upgrades/bookings", params={"household_id": c.id},
                             headers=as_role["viewer"])
        assert r.json()["items"] == []

        # a cancels: the place goes back
        await page.click("#cancel")
        await page.wait_for_selector("#places-msg:has-text('Booking cancelled')")
        await _remaining(page, 1)  # b holds the other place
        assert await page.is_visible("#book")

        # the operators' page: the community's places and b's booking; an admin adds a place
        op = await new_page()
        await sign_in(op, api.base_url, users["admin"])
        await op.goto(api.base_url + "/#upgrades")
        row = f'#upg-quotas tr[data-community="{community}"]'
        await op.wait_for_selector(row)
        assert await cell(op, f"{row} .remaining") == "1"
        booking = r.json()
        r = await client.get("/upgrades/bookings", params={"household_id": b.id},
                             headers=as_role["viewer"])
        booking = r.json()["items"][0]
        await op.wait_for_selector(f'#upg-bookings tr[data-booking="{booking["id"]}"]')
        await op.fill(f"{row} input.places", "3")
        await op.click(f"{row} button.save")
        await op.wait_for_selector(f'{row} .remaining:text-is("2")')
        await shot(op, "console-upgrades")
        # a viewer sees the lists without the buttons
        viewer = await new_page()
        await sign_in(viewer, api.base_url, users["viewer"])
        await viewer.goto(api.base_url + "/#upgrades")
        await viewer.wait_for_selector(f'#upg-bookings tr[data-booking="{booking["id"]}"]')
        assert await viewer.locator("#upgrades button.cancel, #upgrades button.save").count() == 0


async def test_resident_signs_in_with_texted_code_and_sees_usage(api, phones, block, dsn, prefix,
                                                                 new_page, shot) -> None:
    house = block[3]
    now = dt.datetime.now(dt.UTC)
    points = [(now - dt.timedelta(days=400), 1000.0), (now - dt.timedelta(hours=3), 1002.5),
              (now - dt.timedelta(hours=2), 1004.0), (now - dt.timedelta(hours=1), 1006.125)]
    zone = zoneinfo.ZoneInfo(api.settings.api.time_zone)
    this_month = now.astimezone(zone).strftime("%Y-%m")
    expected = sum(vol - before for (_, before), (at, vol) in itertools.pairwise(points)
                   if at.astimezone(zone).strftime("%Y-%m") == this_month)
    with psycopg.connect(dsn) as conn:
        for seq, (at, vol) in enumerate(points, 1):
            conn.execute("INSERT INTO meter_readings (time, device_id, seq, vol_m3, flow_m3h,"
                         " valve, batt_v, rssi, received_at) VALUES (%s, %s, %s, %s, 0.4, 0,"
                         " 3.6, -80, %s)", (at, house.meter.id, seq, vol, at))
        conn.execute("INSERT INTO notifications (household_id, kind, channel, recipient, body,"
                     " dedupe_key, state, delivered_at) VALUES (%s, 'leak', 'sms', %s, %s, %s,"
                     " 'sent', now())", (house.id, house.owner_phone,
                                         "Gas leak detected: the gas was cut off.",
                                         f"resident-test-{house.id}"))

    page = await _resident_page(new_page, api.base_url, house, prefix)
    await page.select_option("#lang", "en")
    await page.click("#get-code")
    await page.wait_for_selector("#code:not([hidden])")
    assert house.owner_phone[-4:] in await page.inner_text("#code-sent")
    texts = [c for c in phones.calls("sms") if c.doc.get("household_id") == house.id]
    assert len(texts) == 1 and texts[0].to == house.owner_phone
    code = re.search(r"\b(\d{6})\b", texts[0].body).group(1)

    await page.fill("#code-form input[name=code]", code)
    await page.click("#verify")
    await page.wait_for_selector("#home:not([hidden])")
    month = f'#usage li[data-period="{this_month}"] .vol'
    assert await page.inner_text(month) == f"{expected:.3f} m³"
    assert "Gas leak detected" in await page.inner_text("#notices")
    await shot(page, "resident-home-month")
    await page.click("#by-day")
    await page.wait_for_selector('#by-day[aria-selected="true"]')
    assert len(await page.query_selector_all("#usage li")) == 31
    await page.select_option("#lang", "zh-CN")
    assert await page.inner_text("#by-month") == "按月"
    await shot(page, "resident-home-day-zh")

    await page.click("#sign-out")
    await page.wait_for_selector("#ask:not([hidden])")
    assert await page.evaluate("sessionStorage.getItem('gas-safety.resident.token')") is None
