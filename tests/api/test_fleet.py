"""Households and devices: filters, health and service life, the fleet summary, masked
contact details for viewers, stable pagination, registration, and the 404/422 cases."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from gateway.ops.provision import generate_city, provision

pytestmark = pytest.mark.services


async def _set_state(dsn: str, rows: list[tuple]) -> None:
    """device_state rows as the gateway upserts them: (device, online, batt_v, fault)."""
    now = dt.datetime.now(dt.UTC)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for device_id, online, batt, fault in rows:
            await conn.execute(
                "INSERT INTO device_state (device_id, online, last_seen, batt_v, fault, ch4_lel,"
                " flow_m3h, vol_m3, valve, rssi) VALUES (%s, %s, %s, %s, %s, 1.5, 0.2, 10.5,"
                " 'open', -80)", (device_id, online, now, batt, fault))


async def test_households_and_device_health(client, city, as_role, dsn) -> None:
    community = city[0].community
    m0, d0 = city[0].meter, city[0].detectors[0]
    await _set_state(dsn, [(m0.id, True, 3.1, 0), (d0.id, False, None, 4)])

    r = await client.get("/households", params={"community": community},
                         headers=as_role["operator"])
    assert r.status_code == 200
    items = r.json()["items"]
    assert [h["id"] for h in items] == sorted(h.id for h in city)
    assert items[0]["owner_phone"] == city[0].owner_phone
    assert items[0]["devices"] == len(city[0].devices)

    # Viewers see contact details masked.
    v = (await client.get(f"/households/{city[0].id}", headers=as_role["viewer"])).json()
    assert v["owner_phone"].endswith(city[0].owner_phone[-4:])
    assert v["owner_phone"] != city[0].owner_phone and "*" in v["owner_phone"]
    assert v["owner_email"].startswith(city[0].owner_email[0]) and "***@" in v["owner_email"]

    devices = {d["id"]: d for d in v["device_list"]}
    meter = devices[m0.id]
    assert meter["health"]["online"] is True
    assert meter["health"]["battery_low"] is True
    assert meter["health"]["last_reading"]["valve"] == "open"
    assert meter["health"]["service_life_years"] == 10
    ends = dt.date.fromisoformat(meter["health"]["service_life_ends"])
    assert (ends.year - m0.installed_on.year, ends.month, ends.day) == (
        10, m0.installed_on.month, m0.installed_on.day)
    assert meter["health"]["past_service_life"] == (ends < dt.date.today())
    detector = devices[d0.id]
    assert detector["health"]["online"] is False and detector["health"]["faults"] == 4
    assert detector["health"]["last_reading"] == {"ch4_lel": 1.5, "fault": 4, "flow_m3h": None,
                                                  "vol_m3": None, "valve": None,
                                                  "batt_v": None, "rssi": None}
    assert detector["health"]["service_life_years"] == 5
    never = devices.get(city[0].detectors[1].id) if len(city[0].detectors) > 1 else None
    if never:
        assert never["health"]["last_seen"] is None and never["health"]["last_reading"] is None


async def test_device_filters_and_summary(client, city, as_role, dsn) -> None:
    community = city[0].community
    meters = [h.meter for h in city]
    await _set_state(dsn, [(meters[0].id, True, 3.6, 0), (meters[1].id, False, 3.2, 0),
                           (city[2].detectors[0].id, True, None, 1)])
    h = as_role["viewer"]

    async def ids(**params) -> list[str]:
        r = await client.get("/devices", params={"community": community, **params}, headers=h)
        assert r.status_code == 200, r.text
        return [d["id"] for d in r.json()["items"]]

    assert await ids(kind="meter") == sorted(m.id for m in meters)
    assert await ids(online=True) == sorted([meters[0].id, city[2].detectors[0].id])
    assert await ids(building=city[0].building, kind="meter") == sorted(
        h.meter.id for h in city if h.building == city[0].building)
    model = meters[0].model
    assert await ids(model=model, kind="meter") == sorted(m.id for m in meters if m.model == model)
    assert await ids(status="retired") == []
    assert await ids(household_id=city[3].id) == sorted(d.id for d in city[3].devices)

    s = (await client.get("/fleet/summary", params={"community": community}, headers=h)).json()
    total = sum(len(x.devices) for x in city)
    today = dt.date.today()
    past = sum(1 for x in city for d in x.devices
               if d.installed_on.replace(year=d.installed_on.year
                                         + (10 if d.kind == "meter" else 5)) < today)
    assert s["devices"] == total
    assert s["by_kind"] == {"meter": 4, "detector": total - 4}
    assert (s["online"], s["offline"], s["never_seen"]) == (2, 1, total - 3)
    assert s["low_battery"] == 1 and s["faulted"] == 1
    assert s["past_service_life"] == past


async def test_pagination_is_stable_while_rows_arrive(client, city, as_role, dsn,
                                                      prefix) -> None:
    community = city[0].community
    seen: list[str] = []
    cursor = None
    added = False
    while True:
        params = {"community": community, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/devices", params=params, headers=as_role["viewer"])).json()
        seen += [d["id"] for d in page["items"]]
        if not added:  # new devices at both ends of the order, between two pages
            extra = generate_city(2, seed=9, prefix=prefix, start=4)
            provision(dsn, extra, None, None)
            added = True
        cursor = page["next_cursor"]
        if cursor is None:
            break
    original = sorted(d.id for h in city for d in h.devices)
    assert len(seen) == len(set(seen)), "a row was repeated"
    assert set(original) <= set(seen), "a row was skipped"
    assert seen == sorted(seen)


async def test_unknown_ids_and_bad_filters(client, as_role) -> None:
    h = as_role["viewer"]
    r = await client.get("/households/nope", headers=h)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert (await client.get("/devices/nope", headers=h)).status_code == 404
    r = await client.get("/devices", params={"kind": "boiler"}, headers=h)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "kind" and r.json()["errors"][0]["in"] == "query"
    r = await client.get("/devices", params={"limit": 501}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "limit"
    r = await client.get("/devices", params={"cursor": "garbage!"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cursor"
    r = await client.get("/devices/bad id", headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "device_id"


async def test_register_household_and_retire_device(client, as_role, prefix) -> None:
    hid, mid, did = f"{prefix}hnew", f"{prefix}mnew", f"{prefix}dnew"
    body = {"id": hid, "address": "1 Harbour Road, unit 1-01", "community": f"{prefix}C99",
            "building": f"{prefix}C99-B001", "unit": "1-01", "owner_name": "Mina Kim",
            "owner_phone": "+15559000001", "qmax_m3h": 4.0,
            "devices": [{"id": mid, "kind": "meter", "model": "GM-G2.5",
                         "installed_on": "2026-10-01"},
                        {"id": did, "kind": "detector", "model": "LD-100",
                         "installed_on": "2026-10-01"}]}
    assert (await client.post("/households", json=body,
                              headers=as_role["operator"])).status_code == 403
    r = await client.post("/households", json=body, headers=as_role["admin"])
    assert r.status_code == 201, r.text
    assert sorted(d["id"] for d in r.json()["device_list"]) == sorted([mid, did])
    assert (await client.post("/households", json=body,
                              headers=as_role["admin"])).status_code == 409
    two_meters = {**body, "id": f"{prefix}hnew2",
                  "devices": [{**body["devices"][0], "id": f"{prefix}ma"},
                              {**body["devices"][0], "id": f"{prefix}mb"}]}
    r = await client.post("/households", json=two_meters, headers=as_role["admin"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "devices"
    r = await client.post("/households", json={**body, "qmax_m3h": -1}, headers=as_role["admin"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "qmax_m3h"
    r = await client.post("/households", json={**body, "surprise": 1}, headers=as_role["admin"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "surprise"

    r = await client.patch(f"/devices/{did}", json={"status": "retired"}, headers=as_role["admin"])
    assert r.status_code == 200 and r.json()["status"] == "retired"
    audit = (await client.get("/audit", params={"entity_id": did},
                              headers=as_role["admin"])).json()["items"]
    assert [(a["actor"], a["action"]) for a in audit] == [("admin.one", "device.update")]
