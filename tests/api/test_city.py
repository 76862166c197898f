"""The console's aggregate reads: the city schematic's household states, the fleet health by
community and its CSV export, and a household's audit trail (operators only)."""

from __future__ import annotations

import csv
import datetime as dt
import io

import psycopg
import pytest

pytestmark = pytest.mark.services


async def _states(dsn: str, city) -> None:
    """h0: a leak; h1: valve cut; h2: detectors offline; h3: meter past its life, battery low."""
    now = dt.datetime.now(dt.UTC)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for i, house in enumerate(city):
            for d in house.devices:
                online = not (i == 2 and d.kind == "detector")
                valve = "closed" if (i == 1 and d.kind == "meter") else "open"
                batt = 2.9 if (i == 3 and d.kind == "meter") else 3.6
                await conn.execute(
                    "INSERT INTO device_state (device_id, online, last_seen, batt_v, valve)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (d.id, online, now, batt, valve),
                )
            # every device well within its life except h3's meter
            await conn.execute(
                "UPDATE devices SET installed_on = %s WHERE household_id = %s",
                (dt.date.today() - dt.timedelta(days=200), house.id),
            )
        await conn.execute(
            "UPDATE devices SET installed_on = %s WHERE id = %s",
            (dt.date.today() - dt.timedelta(days=11 * 366), city[3].meter.id),
        )


async def test_city_states_and_click_through(client, city, as_role, dsn, raise_alarm) -> None:
    await _states(dsn, city)
    await raise_alarm(city[0], cause=None)
    community = city[0].community
    h = as_role["viewer"]

    whole = (await client.get("/city", headers=h)).json()
    mine = next(c for c in whole["communities"] if c["community"] == community)
    assert mine["households"] == 4
    assert mine["states"] == {"leak": 1, "valve_cut": 1, "offline": 1, "past_life": 1, "ok": 0}
    assert whole["buildings"] == [] and whole["households"] >= 4

    r = await client.get("/city", params={"community": community}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    states = {x["id"]: x["state"] for b in body["buildings"] for x in b["household_list"]}
    assert states == {
        city[0].id: "leak",
        city[1].id: "valve_cut",
        city[2].id: "offline",
        city[3].id: "past_life",
    }
    assert sum(b["households"] for b in body["buildings"]) == 4

    r = await client.get("/city", params={"community": "nowhere-at-all"}, headers=h)
    assert r.status_code == 404 and "no community nowhere-at-all" in r.json()["detail"]
    r = await client.get("/city", params={"community": "x" * 101}, headers=h)
    assert r.status_code == 422
    assert (await client.get("/city")).status_code == 401


async def test_fleet_health_and_csv(client, city, as_role, dsn) -> None:
    await _states(dsn, city)
    community = city[0].community
    h = as_role["viewer"]
    r = await client.get("/fleet/health", params={"community": community}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["meter_life_years"] == 10 and body["detector_life_years"] == 5
    [row] = body["communities"]
    detectors_h2 = len(city[2].detectors)
    assert row == {
        "community": community,
        "households": 4,
        "offline_households": 1,
        "unprotected_households": 1,
        "never_seen": 0,
        "offline_devices": detectors_h2,
        "low_battery": 1,
        "past_life_meters": 1,
        "past_life_detectors": 0,
    }

    async with await psycopg.AsyncConnection.connect(dsn) as conn:  # a formula in the data
        await conn.execute("UPDATE households SET address = '=HYPERLINK(\"x\")' WHERE id = %s",
                           (city[3].id,))
    r = await client.get("/fleet/health.csv", params={"community": community}, headers=h)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    got = {x["device_id"]: x["issues"] for x in rows}
    expected = {d.id: "offline" for d in city[2].detectors}
    expected[city[3].meter.id] = "low_battery;past_service_life"
    assert got == expected
    assert rows[0]["community"] == community and rows[0]["address"]
    meter = next(x for x in rows if x["device_id"] == city[3].meter.id)
    assert meter["address"] == "'=HYPERLINK(\"x\")"  # not a formula in a spreadsheet
    assert dt.datetime.fromisoformat(meter["last_seen"]).tzinfo is not None
    assert float(meter["battery_v"]) < 3.0

    r = await client.get(
        "/fleet/health.csv",
        params={"community": community, "issue": "past_service_life"},
        headers=h,
    )
    assert [x["device_id"] for x in csv.DictReader(io.StringIO(r.text))] == [city[3].meter.id]
    r = await client.get("/fleet/health.csv", params={"issue": "bogus"}, headers=h)
    assert r.status_code == 422 and "issue" in r.json()["detail"]


async def test_household_audit(client, city, as_role, dsn) -> None:
    meter = city[1].meter.id
    r = await client.post(
        f"/valves/{meter}/close", json={"reason": "smell reported"}, headers=as_role["operator"]
    )
    assert r.status_code == 202, r.text
    r = await client.post(
        f"/valves/{meter}/reopen", json={"reason": "too soon"}, headers=as_role["engineer"]
    )
    assert r.status_code == 409

    r = await client.get(
        f"/households/{city[1].id}/audit", params={"limit": 2}, headers=as_role["operator"]
    )
    assert r.status_code == 200, r.text
    page = r.json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    r = await client.get(
        f"/households/{city[1].id}/audit",
        params={"cursor": page["next_cursor"]},
        headers=as_role["operator"],
    )
    actions = [e["action"] for e in page["items"] + r.json()["items"]]
    assert "valve.refused" in actions and "valve.valve_close" in actions
    assert "work_order.open" in actions
    # another household's trail does not carry them
    other = (await client.get(f"/households/{city[0].id}/audit", headers=as_role["admin"])).json()[
        "items"
    ]
    assert not any(e["action"].startswith("valve.") for e in other)

    assert (
        await client.get(f"/households/{city[1].id}/audit", headers=as_role["viewer"])
    ).status_code == 403
    assert (
        await client.get("/households/h-none-such/audit", headers=as_role["operator"])
    ).status_code == 404
