"""The console's API: the live board (what needs attention, most severe first, lifecycle
notices off it, address, valve and order), shelving, incidents, token refresh, and the
event stream's replay of what a reconnecting client missed (Last-Event-ID)."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import psycopg
import pytest

pytestmark = pytest.mark.services


async def test_board_orders_and_filters(client: httpx.AsyncClient, city, as_role, raise_alarm,
                                        dsn) -> None:
    viewer = as_role["viewer"]
    info, _ = await raise_alarm(city[0], kind="micro_leak", severity="info", cause=None)
    leak, wo = await raise_alarm(city[1])
    life, _ = await raise_alarm(city[2], kind="meter_service_life", severity="info", cause=None)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason,"
            " alarm_id, state, attempts, requested_by, issued_at, acked_at, ack_ok, ack_valve)"
            " VALUES (%s, %s, %s, 'valve_close', 'leak', %s, 'acked', 1, 'gateway', now(),"
            " now(), true, 'closed')", (f"b-{leak}", city[1].meter.id, city[1].id, leak))
    r = await client.get("/board", headers=viewer)
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [a["id"] for a in body["alarms"]]
    assert leak in ids and info in ids and life not in ids
    assert ids.index(leak) < ids.index(info)  # most severe first
    row = body["alarms"][ids.index(leak)]
    assert row["address"] == city[1].address
    assert row["valve"]["view"] == "closed"
    assert row["work_order"]["id"] == wo and 0 < row["work_order"]["arrive_in_s"] <= 1800
    assert body["counts"]["lifecycle"] >= 1 and body["counts"]["critical"] >= 1
    assert (await client.get("/board")).status_code == 401
    # one household's rows only (the console's read after a live event named it)
    r = await client.get("/board", params={"household_id": city[1].id}, headers=viewer)
    assert [a["id"] for a in r.json()["alarms"]] == [leak]
    r = await client.get("/board", params={"household_id": "bad id!"}, headers=viewer)
    assert r.status_code == 422


async def test_shelve(client: httpx.AsyncClient, city, as_role, raise_alarm) -> None:
    op = as_role["operator"]
    warn, _ = await raise_alarm(city[0], kind="offline", severity="warning", cause=None)
    crit, _ = await raise_alarm(city[1])
    body = {"minutes": 30, "reason": "chattering"}
    assert (await client.post(f"/alarms/{warn}/shelve", json=body,
                              headers=as_role["viewer"])).status_code == 403
    r = await client.post(f"/alarms/{crit}/shelve", json=body, headers=op)
    assert r.status_code == 409 and "critical" in r.json()["detail"]
    r = await client.post(f"/alarms/{warn}/shelve", json={"minutes": 0, "reason": "x"},
                          headers=op)
    assert r.status_code == 422
    r = await client.post(f"/alarms/{warn}/shelve", json=body, headers=op)
    assert r.status_code == 200 and r.json()["shelved_by"] == "operator.one"
    board = (await client.get("/board", headers=op)).json()
    assert warn not in [a["id"] for a in board["alarms"]]
    assert (await client.post(f"/alarms/{warn}/unshelve", headers=op)).status_code == 200
    assert (await client.post(f"/alarms/{warn}/unshelve", headers=op)).status_code == 409
    board = (await client.get("/board", headers=op)).json()
    assert warn in [a["id"] for a in board["alarms"]]


async def test_incident_detail(client: httpx.AsyncClient, city, as_role, dsn) -> None:
    now = dt.datetime.now(dt.UTC)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        inc = (await (await conn.execute(
            "INSERT INTO incidents (building, community, kind, opened_at, households)"
            " VALUES (%s, %s, 'leak', %s, 2) RETURNING id",
            (f"{city[0].id}-R", city[0].community, now))).fetchone())[0]
        for h in city[:2]:
            await conn.execute(
                "INSERT INTO alarms (device_id, household_id, kind, severity, value, raised_at,"
                " incident_id) VALUES (%s, %s, 'leak', 'critical', 30, %s, %s)",
                (h.detectors[0].id, h.id, now, inc))
    r = await client.get(f"/incidents/{inc}", headers=as_role["viewer"])
    assert r.status_code == 200
    assert sorted(a["household_id"] for a in r.json()["alarms"]) == sorted(h.id for h in city[:2])
    assert (await client.get("/incidents/987654321", headers=as_role["viewer"])).status_code == 404
    listed = (await client.get("/incidents", params={"open": True},
                               headers=as_role["viewer"])).json()
    assert inc in [i["id"] for i in listed]


async def test_refresh_keeps_revocation(client: httpx.AsyncClient, api, dsn) -> None:
    from api_fixtures import PASSWORD

    from dashboard_api.users import create_user

    create_user(dsn, "shift.screen", "viewer", PASSWORD, actor="tests")
    tok = (await client.post("/auth/token", data={"username": "shift.screen",
                                                  "password": PASSWORD})).json()["access_token"]
    r = await client.post("/auth/refresh", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200
    fresh = r.json()["access_token"]
    assert (await client.get("/auth/me", headers={"Authorization": f"Bearer {fresh}"})
            ).status_code == 200
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("UPDATE users SET role = 'operator' WHERE username = 'shift.screen'")
    for t in (tok, fresh):  # both die with the change; neither can be refreshed
        r = await client.post("/auth/refresh", headers={"Authorization": f"Bearer {t}"})
        assert r.status_code == 401


async def test_last_event_id_replays_what_was_missed(client: httpx.AsyncClient, city, as_role,
                                                     raise_alarm, sse_reader) -> None:
    viewer = as_role["viewer"]
    first, _ = await raise_alarm(city[0], cause=None)
    async with client.stream("GET", "/events", headers=viewer) as stream:
        lines = stream.aiter_lines()
        async for line in lines:  # up to the end of stream.open
            if line == "":
                break
        second, _ = await raise_alarm(city[1], cause=None)
        # the raw frames, to learn the id of the alarm's event
        last_id = None
        async with asyncio.timeout(5):
            async for line in lines:
                if line.startswith("id: "):
                    last_id = line[4:]
                if line.startswith("data: ") and f'"alarm_id": {second}' in line:
                    break
    assert last_id is not None
    third, _ = await raise_alarm(city[2], cause=None)  # while disconnected
    headers = {**viewer, "Last-Event-ID": last_id}
    async with client.stream("GET", "/events", headers=headers) as stream:
        sse = sse_reader(stream)
        await sse.next()  # stream.open
        _, data = await sse.until(lambda e, d: e == "alarm.raised")
        assert data["alarm_id"] == third
    async with client.stream("GET", "/events", headers={**viewer, "Last-Event-ID": "1"}) as s:
        sse = sse_reader(s)
        await sse.next()
        event, _ = await sse.next()
        assert event == "stream.gap"  # from before this process: reload
    assert first < second < third


async def test_assign_to_engineer_accounts(client: httpx.AsyncClient, city, as_role, users,
                                           raise_alarm) -> None:
    op, eng = as_role["operator"], as_role["engineer"]
    _, wo = await raise_alarm(city[0])
    url = f"/work-orders/{wo}/assign"
    assert (await client.post(url, json={"engineer": users["engineer"]},
                              headers=as_role["viewer"])).status_code == 403
    for who in (users["viewer"], users["operator"], "no.such.user"):  # not engineer accounts
        r = await client.post(url, json={"engineer": who}, headers=op)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "engineer", who
    r = await client.post(url, json={"engineer": users["engineer"], "crew": "crew-2"}, headers=op)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["assignee"], r.json()["crew"]) == (
        "dispatched", users["engineer"], "crew-2")
    assert r.json()["arrive_in_s"] > 0
    mine = (await client.get("/me/work-orders", headers=eng)).json()
    assert wo in [o["id"] for o in mine]
    mine_row = next(o for o in mine if o["id"] == wo)
    assert mine_row["meter_id"] == city[0].meter.id and len(mine_row["devices"]) >= 2
    assert (await client.get("/me/work-orders", headers=op)).status_code == 403
    # a reassignment keeps the status; the timeline has both steps
    r = await client.post(url, json={"engineer": users["admin"]}, headers=op)
    assert r.status_code == 200 and r.json()["status"] == "dispatched"
    steps = (await client.get(f"/work-orders/{wo}", headers=op)).json()["steps"]
    assert [s["action"] for s in steps][-2:] == ["dispatch", "reassign"]
    board = (await client.get("/dispatch", params={"community": city[0].community},
                              headers=as_role["viewer"])).json()
    assert [o["assignee"] for o in board["orders"] if o["id"] == wo] == [users["admin"]]
    names = [e["username"] for e in (await client.get("/engineers", headers=op)).json()]
    assert users["engineer"] in names and users["viewer"] not in names
    await client.post(f"/work-orders/{wo}/cancel", json={"reason": "test"}, headers=op)
    r = await client.post(url, json={"engineer": users["engineer"]}, headers=op)
    assert r.status_code == 409
