"""Who may reopen a household's valve, against the real API and database (issue 11).

Reproduces the findings and shows they hold now: an engineer alone, with the leak still
active, cannot rush the order to resolved and reopen; an older resolved order does not
reopen the valve after a new leak whose order was cancelled; and a valve closed by hand,
or by the meter itself, has a documented way back in which each step refuses the wrong
person."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from api_fixtures import PASSWORD

from dashboard_api.users import create_user

pytestmark = pytest.mark.services


@pytest.fixture
async def people(api, dsn, prefix) -> dict[str, dict[str, str]]:
    """This test's own accounts (name -> Authorization header): two of each acting role, so
    that the second person is a real other person and no other test's counts interfere."""
    roles = {"op": "operator", "eng": "engineer", "eng2": "engineer", "adm": "admin",
             "adm2": "admin", "viewer": "viewer"}
    out = {}
    async with httpx.AsyncClient(base_url=api.base_url) as c:
        for name, role in roles.items():
            username = f"{prefix}.{name}"
            create_user(dsn, username, role, PASSWORD, actor="tests")
            r = await c.post("/auth/token", data={"username": username, "password": PASSWORD})
            assert r.status_code == 200, r.text
            out[name] = {"Authorization": f"Bearer {r.json()['access_token']}"}
    return out


async def _sql(dsn: str, query: str, params: tuple = ()) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def _gateway_cut(dsn: str, house, alarm_id: int | None) -> str:
    """What the gateway writes when its rules close a meter: an acknowledged close."""
    cmd_id = f"gw-{uuid.uuid4().hex[:20]}"
    now = dt.datetime.now(dt.UTC)
    await _sql(dsn, "INSERT INTO valve_commands (cmd_id, meter_id, household_id, action,"
                    " reason, alarm_id, state, attempts, requested_by, issued_at, acked_at,"
                    " ack_ok, ack_valve) VALUES (%s, %s, %s, 'valve_close', 'leak', %s,"
                    " 'acked', 1, 'gateway', %s, %s, true, 'closed')",
               (cmd_id, house.meter.id, house.id, alarm_id, now, now))
    return cmd_id


async def _clear(dsn: str, alarm_id: int) -> None:
    """The gateway clears an alarm once the readings fall back below the clear level."""
    await _sql(dsn, "UPDATE alarms SET state = 'cleared', cleared_at = now() WHERE id = %s",
               (alarm_id,))


async def _ack(dsn: str, cmd_id: str, valve: str) -> None:
    """The meter acknowledged the command (the gateway records it)."""
    await _sql(dsn, "UPDATE valve_commands SET state = 'acked', ack_ok = true, ack_valve = %s,"
                    " acked_at = now() WHERE cmd_id = %s", (valve, cmd_id))


async def _opens(dsn: str, meter: str) -> list[str]:
    rows = await _sql(dsn, "SELECT cmd_id FROM valve_commands WHERE meter_id = %s"
                           " AND action = 'valve_open' ORDER BY issued_at", (meter,))
    return [r[0] for r in rows]


async def _refusals(dsn: str, meter: str) -> list[tuple[str, str, str]]:
    rows = await _sql(dsn, "SELECT actor, details->>'request', details->>'condition'"
                           " FROM audit_log WHERE action = 'valve.refused' AND entity = 'device'"
                           " AND entity_id = %s ORDER BY id", (meter,))
    return [tuple(r) for r in rows]


async def _work(client: httpx.AsyncClient, wo: int, steps: list[tuple[str, dict, dict]]
                ) -> list[httpx.Response]:
    return [await client.post(f"/work-orders/{wo}/{step}", json=body, headers=who)
            for step, body, who in steps]


async def test_engineer_alone_with_an_active_leak_cannot_reopen(client, city, people,
                                                               raise_alarm, dsn, prefix) -> None:
    house = city[0]
    meter = house.meter.id
    eng = people["eng"]
    alarm, wo = await raise_alarm(house)
    await _gateway_cut(dsn, house, alarm)

    # The finding: one engineer, back to back, dispatch -> on site -> resolve -> reopen.
    dispatch, on_site, resolve = await _work(client, wo, [
        ("dispatch", {"crew": "me"}, eng), ("on-site", {}, eng),
        ("resolve", {"findings": "fine"}, eng)])
    assert (dispatch.status_code, on_site.status_code) == (200, 200)
    assert resolve.status_code == 409, resolve.text
    assert resolve.json()["condition"] == "gas_alarm"
    assert f"active leak alarm {alarm}" in resolve.json()["detail"]
    r = await client.post(f"/valves/{meter}/reopen", json={"reason": "fine"}, headers=eng)
    assert r.status_code == 409 and r.json()["condition"] == "gas_alarm"
    assert r.json()["alarm_id"] == alarm and "once the gateway has cleared" in r.json()["detail"]
    # Acknowledging the alarm does not end it.
    r = await client.post(f"/alarms/{alarm}/acknowledge", json={"comment": "seen"},
                          headers=people["op"])
    assert r.status_code == 200
    r = await client.post(f"/valves/{meter}/reopen", json={"reason": "fine"}, headers=eng)
    assert r.status_code == 409 and r.json()["condition"] == "gas_alarm"
    assert await _opens(dsn, meter) == []

    # Once the gas is gone the engineer may resolve, but alone still cannot reopen: the
    # request waits for a supervisor other than them.
    await _clear(dsn, alarm)
    (resolve,) = await _work(client, wo, [("resolve", {"findings": "valve seat cleaned"}, eng)])
    assert resolve.status_code == 200, resolve.text
    r = await client.post(f"/valves/{meter}/reopen", json={"reason": "fixed"}, headers=eng)
    assert r.status_code == 202, r.text
    pending = r.json()["request"]
    assert (pending["status"], pending["resolved_by"], pending["work_order_id"]) == (
        "pending", f"{prefix}.eng", wo)
    assert "supervisor" in r.json()["note"] and await _opens(dsn, meter) == []
    again = await client.post(f"/valves/{meter}/reopen", json={"reason": "fixed"}, headers=eng)
    assert again.status_code == 202 and again.json()["request"]["id"] == pending["id"]
    confirm = f"/valves/{meter}/reopen-requests/{pending['id']}/confirm"
    for who in ("eng", "eng2", "op"):
        r = await client.post(confirm, json={"reason": "ok"}, headers=people[who])
        assert r.status_code == 403, (who, r.text)
    assert await _opens(dsn, meter) == []
    r = await client.post(confirm, json={"reason": "findings checked by phone"},
                          headers=people["adm"])
    assert r.status_code == 202, r.text
    assert r.json()["command"]["action"] == "valve_open"
    assert r.json()["command"]["requested_by"] == f"{prefix}.adm"
    assert await _opens(dsn, meter) == [r.json()["command"]["cmd_id"]]
    r = await client.post(confirm, json={"reason": "twice"}, headers=people["adm2"])
    assert r.status_code == 409 and r.json()["condition"] == "request_closed"
    assert await _refusals(dsn, meter) == [
        (f"{prefix}.eng", "reopen", "gas_alarm"), (f"{prefix}.eng", "reopen", "gas_alarm"),
        (f"{prefix}.adm2", "confirm_reopen", "request_closed")]


async def test_an_older_resolved_order_does_not_reopen_after_a_new_leak(
        client, city, people, raise_alarm, dsn) -> None:
    house = city[1]
    meter = house.meter.id
    url = f"/valves/{meter}/reopen"
    eng, eng2, op = people["eng"], people["eng2"], people["op"]

    # A first leak, cut, repaired and reopened by the book.
    first_alarm, first = await raise_alarm(house)
    await _gateway_cut(dsn, house, first_alarm)
    await _clear(dsn, first_alarm)
    assert [r.status_code for r in await _work(client, first, [
        ("dispatch", {"crew": "c1"}, op), ("on-site", {}, eng),
        ("resolve", {"findings": "hose replaced"}, eng)])] == [200, 200, 200]
    r = await client.post(url, json={"reason": "repaired"}, headers=eng2)
    assert r.status_code == 202, r.text
    await _ack(dsn, r.json()["command"]["cmd_id"], "open")

    # A new leak; it clears, and an operator cancels its order. The old order must not
    # reopen the valve.
    new_alarm, new = await raise_alarm(house)
    await _clear(dsn, new_alarm)
    r = await client.post(f"/work-orders/{new}/cancel", json={"reason": "looks like a glitch"},
                          headers=op)
    assert r.status_code == 200
    r = await client.post(url, json={"reason": "old order was fine"}, headers=eng2)
    assert r.status_code == 409, r.text
    assert r.json()["condition"] == "no_resolved_order"
    detail = r.json()["detail"]
    assert f"order {new} (leak) was cancelled" in detail
    assert f"order {first} (leak) was resolved" in detail
    assert f"before the leak alarm {new_alarm}" in detail

    # The gateway's cut for the new leak: still refused, now naming that cut.
    cut = await _gateway_cut(dsn, house, new_alarm)
    r = await client.post(url, json={"reason": "old order was fine"}, headers=eng2)
    assert r.status_code == 409 and r.json()["condition"] == "no_resolved_order"
    assert r.json()["cut_cmd_id"] == cut and f"close command {cut}" in r.json()["detail"]
    assert len(await _opens(dsn, meter)) == 1

    # The way on: an engineer opens the cut's inspection order and resolves it on site.
    assert (await client.post(f"/valves/{meter}/inspection", json={"reason": "x"},
                              headers=op)).status_code == 403
    r = await client.post(f"/valves/{meter}/inspection", json={"reason": "order cancelled"},
                          headers=eng)
    assert r.status_code == 201, r.text
    inspection = r.json()["work_order"]
    assert (inspection["cause"], inspection["cmd_id"], inspection["priority"]) == (
        "valve_inspection", cut, "high")
    assert [r.status_code for r in await _work(client, inspection["id"], [
        ("dispatch", {"crew": "c2"}, op), ("on-site", {}, eng),
        ("resolve", {"findings": "no leak found, pressure test passed"}, eng)])] == [200] * 3
    r = await client.post(url, json={"reason": "inspected"}, headers=eng2)
    assert r.status_code == 202, r.text
    assert r.json()["command"]["action"] == "valve_open"
    assert [c for _, _, c in await _refusals(dsn, meter)] == [
        "no_resolved_order", "no_resolved_order"]


async def test_a_manual_close_has_an_audited_way_back(client, city, people, dsn,
                                                      prefix) -> None:
    house = city[2]
    meter = house.meter.id
    op, eng, adm, adm2 = (people[k] for k in ("op", "eng", "adm", "adm2"))
    viewer = people["viewer"]

    r = await client.post(f"/valves/{meter}/close", json={"reason": "resident smells gas"},
                          headers=op)
    assert r.status_code == 202, r.text
    close, wo = r.json()["command"], r.json()["work_order_id"]
    await _ack(dsn, close["cmd_id"], "closed")
    order = (await client.get(f"/work-orders/{wo}", headers=viewer)).json()
    assert (order["cause"], order["cmd_id"], order["status"]) == (
        "valve_inspection", close["cmd_id"], "open")

    # Before: a dead end. Now the detail names the open inspection order.
    r = await client.post(f"/valves/{meter}/reopen", json={"reason": "x"}, headers=eng)
    assert r.status_code == 409 and r.json()["work_order_id"] == wo
    assert r.json()["condition"] == "open_order"

    # Each step refuses the wrong person.
    steps = [("dispatch", {"crew": "c"}, viewer, op), ("on-site", {}, op, eng),
             ("resolve", {"findings": "regulator replaced, leak test passed"}, op, adm)]
    for step, body, wrong, right in steps:
        r = await client.post(f"/work-orders/{wo}/{step}", json=body, headers=wrong)
        assert r.status_code == 403, (step, r.text)
        r = await client.post(f"/work-orders/{wo}/{step}", json=body, headers=right)
        assert r.status_code == 200, (step, r.text)
    for who in ("op", "viewer"):
        r = await client.post(f"/valves/{meter}/reopen", json={"reason": "x"},
                              headers=people[who])
        assert r.status_code == 403

    # The admin resolved it: their own reopen waits, they cannot confirm it themselves,
    # an engineer cannot confirm either; another supervisor can.
    r = await client.post(f"/valves/{meter}/reopen", json={"reason": "repaired"}, headers=adm)
    assert r.status_code == 202 and r.json()["request"]["status"] == "pending"
    confirm = f"/valves/{meter}/reopen-requests/{r.json()['request']['id']}/confirm"
    r = await client.post(confirm, json={"reason": "mine"}, headers=adm)
    assert r.status_code == 409 and r.json()["condition"] == "same_person"
    assert (await client.post(confirm, json={"reason": "x"}, headers=eng)).status_code == 403
    assert await _opens(dsn, meter) == []
    r = await client.post(confirm, json={"reason": "second pair of eyes"}, headers=adm2)
    assert r.status_code == 202, r.text
    assert r.json()["command"]["action"] == "valve_open"

    # All of it is in the audit trail, by whom.
    rows = await _sql(dsn, "SELECT actor, action FROM audit_log WHERE actor LIKE %s"
                           " AND action LIKE 'valve.%%' ORDER BY id", (f"{prefix}.%",))
    assert rows == [(f"{prefix}.op", "valve.valve_close"), (f"{prefix}.eng", "valve.refused"),
                    (f"{prefix}.adm", "valve.reopen_requested"),
                    (f"{prefix}.adm", "valve.refused"), (f"{prefix}.adm2", "valve.valve_open")]


async def test_a_cut_by_the_meter_itself_gets_an_inspection_order(client, city, people,
                                                                  dsn) -> None:
    house = city[3]
    meter = house.meter.id
    eng, eng2, op = people["eng"], people["eng2"], people["op"]
    url = f"/valves/{meter}/reopen"
    assert (await client.post(f"/valves/{meter}/inspection", json={"reason": "x"},
                              headers=eng)).json()["condition"] == "no_cut"

    # The meter reports open, then closed: no command, no order behind it.
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    rows: list[Any] = [(t0 + dt.timedelta(minutes=i), meter, i, 100.0 + i, 0.0, valve, 3.6,
                        -80, t0 + dt.timedelta(minutes=i)) for i, valve in enumerate((0, 0, 1, 1))]
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO meter_readings (time, device_id, seq, vol_m3, flow_m3h, valve,"
            " batt_v, rssi, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
    r = await client.post(url, json={"reason": "x"}, headers=eng2)
    assert r.status_code == 409 and r.json()["condition"] == "no_resolved_order"
    assert "the meter's own report of its valve closed" in r.json()["detail"]

    r = await client.post(f"/valves/{meter}/inspection", json={"reason": "closed by itself"},
                          headers=eng)
    assert r.status_code == 201, r.text
    wo = r.json()["work_order"]["id"]
    assert r.json()["work_order"]["cmd_id"] is None
    again = await client.post(f"/valves/{meter}/inspection", json={"reason": "again"},
                              headers=eng2)
    assert again.status_code == 200 and again.json()["work_order"]["id"] == wo
    assert again.json()["created"] is False
    assert [r.status_code for r in await _work(client, wo, [
        ("dispatch", {"crew": "c"}, op), ("on-site", {}, eng),
        ("resolve", {"findings": "actuator replaced"}, eng)])] == [200] * 3
    r = await client.post(url, json={"reason": "actuator replaced"}, headers=eng2)
    assert r.status_code == 202, r.text


async def test_a_manual_close_the_gateway_attached_keeps_its_way_back(client, city, people,
                                                                      dsn) -> None:
    """The gateway had its own close of the meter in flight, not yet written, and attached
    the operator's close to it: the inspection order answers for the gateway's cut."""
    house = city[0]
    meter = house.meter.id
    r = await client.post(f"/valves/{meter}/close", json={"reason": "smell"},
                          headers=people["op"])
    assert r.status_code == 202, r.text
    manual, wo = r.json()["command"]["cmd_id"], r.json()["work_order_id"]
    gw = await _gateway_cut(dsn, house, None)
    await _sql(dsn, "UPDATE valve_commands SET issued_at = issued_at - interval '1 second'"
                    " WHERE cmd_id = %s", (gw,))
    await _sql(dsn, "UPDATE valve_commands SET state = 'attached', attached_to = %s"
                    " WHERE cmd_id = %s", (gw, manual))
    assert [r.status_code for r in await _work(client, wo, [
        ("dispatch", {"crew": "c"}, people["op"]), ("on-site", {}, people["eng"]),
        ("resolve", {"findings": "nothing found"}, people["eng"])])] == [200] * 3
    r = await client.post(f"/valves/{meter}/reopen", json={"reason": "inspected"},
                          headers=people["eng2"])
    assert r.status_code == 202, r.text
