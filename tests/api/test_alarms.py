"""Alarms: filters and order, detail with evidence and the readings around it, and
acknowledgement (once, by an operator, with a comment)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

pytestmark = pytest.mark.services


async def test_filters_and_order(client, city, as_role, raise_alarm) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    a0, _ = await raise_alarm(city[0], kind="leak", severity="critical",
                              raised_at=now - dt.timedelta(minutes=30))
    a1, _ = await raise_alarm(city[1], kind="prealarm", severity="warning", cause=None,
                              raised_at=now - dt.timedelta(minutes=20))
    a2, _ = await raise_alarm(city[2], kind="leak", severity="critical",
                              raised_at=now - dt.timedelta(minutes=10))
    h = as_role["viewer"]
    community = city[0].community

    async def ids(**params) -> list[int]:
        r = await client.get("/alarms", params={"community": community, **params}, headers=h)
        assert r.status_code == 200, r.text
        return [a["id"] for a in r.json()["items"]]

    assert await ids() == [a2, a1, a0]  # newest first
    assert await ids(severity="critical") == [a2, a0]
    assert await ids(kind="prealarm") == [a1]
    assert await ids(household_id=city[2].id) == [a2]
    assert await ids(device_id=city[1].detectors[0].id) == [a1]
    assert await ids(since=(now - dt.timedelta(minutes=25)).isoformat(),
                     until=(now - dt.timedelta(minutes=15)).isoformat()) == [a1]
    assert await ids(active=True) == [a2, a1, a0]
    assert await ids(active=False) == []
    assert await ids(building=city[0].building, severity="info") == []

    pages, cursor = [], None
    while True:
        r = await client.get("/alarms", headers=h, params={
            "community": community, "limit": 2, **({"cursor": cursor} if cursor else {})})
        pages.append([a["id"] for a in r.json()["items"]])
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert pages == [[a2, a1], [a0]]

    r = await client.get("/alarms", params={"severity": "apocalyptic"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "severity"
    r = await client.get("/alarms", headers=h, params={"since": now.isoformat(),
                                                       "until": now.isoformat()})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "since"


async def test_detail_has_evidence_and_readings(client, city, as_role, raise_alarm,
                                                dsn) -> None:
    house = city[3]
    raised = dt.datetime(2026, 10, 5, 12, 0, tzinfo=dt.UTC)
    detector = house.detectors[0].id
    async with (await psycopg.AsyncConnection.connect(dsn) as conn,
                conn.cursor().copy("COPY detector_readings (time, device_id, seq, ch4_lel,"
                                   " fault, received_at) FROM STDIN") as cp):
        for i in range(-30, 31):  # a minute apart, 30 minutes each side
            t = raised + dt.timedelta(minutes=i)
            await cp.write_row((t, detector, 1000 + i, 40.0 if i >= 0 else 2.0, 0, t))
    alarm_id, wo_id = await raise_alarm(house, raised_at=raised)
    r = await client.get(f"/alarms/{alarm_id}", params={"window_s": 300},
                         headers=as_role["viewer"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["evidence"][-1] == {"ts": raised.timestamp(), "ch4": 42.0}
    assert [p["seq"] for p in body["readings"]] == list(range(995, 1006))
    assert body["readings"][5]["ch4_lel"] == 40.0
    assert [w["id"] for w in body["work_orders"]] == [wo_id]
    assert body["commands"] == []
    assert body["community"] == house.community
    assert (await client.get("/alarms/987654321", headers=as_role["viewer"])).status_code == 404
    r = await client.get(f"/alarms/{alarm_id}", params={"window_s": 1},
                         headers=as_role["viewer"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "window_s"


async def test_acknowledge_once(client, city, as_role, raise_alarm, dsn) -> None:
    alarm_id, _ = await raise_alarm(city[0], cause=None)
    url = f"/alarms/{alarm_id}/acknowledge"
    r = await client.post(url, json={"comment": ""}, headers=as_role["operator"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "comment"
    r = await client.post(url, json={}, headers=as_role["operator"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "comment"
    assert (await client.post(url, json={"comment": "x"},
                              headers=as_role["viewer"])).status_code == 403
    r = await client.post(url, json={"comment": "on it"}, headers=as_role["engineer"])
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "engineer.one"
    r = await client.post(url, json={"comment": "me too"}, headers=as_role["operator"])
    assert r.status_code == 409 and "engineer.one" in r.json()["detail"]
    assert (await client.post("/alarms/987654321/acknowledge", json={"comment": "x"},
                              headers=as_role["operator"])).status_code == 404

    cleared, _ = await raise_alarm(city[1], kind="offline", cause=None)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("UPDATE alarms SET state = 'cleared', cleared_at = now()"
                           " WHERE id = %s", (cleared,))
    # returned to normal unacknowledged: acknowledged once, and it stays cleared
    r = await client.post(f"/alarms/{cleared}/acknowledge", json={"comment": "late"},
                          headers=as_role["operator"])
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cleared" and r.json()["acknowledged_by"] == "operator.one"
    r = await client.post(f"/alarms/{cleared}/acknowledge", json={"comment": "again"},
                          headers=as_role["operator"])
    assert r.status_code == 409 and "operator.one" in r.json()["detail"]
