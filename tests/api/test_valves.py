"""Valve commands: a manual close wakes the gateway on gas_commands in the same transaction
as its row and opens the cut's inspection order; a reopen waits for the latest cut's safety
work order to be resolved, and for someone other than its resolver to ask."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest

pytestmark = pytest.mark.services


async def _listen_while(dsn: str, action, expect: int = 1) -> tuple[object, list[str]]:
    """What gas_commands heard while `action` ran (waits for `expect` notifications, or
    half a second when none is expected)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
        await listener.execute("LISTEN gas_commands")
        result = await action()
        got = [n.payload async for n in listener.notifies(
            timeout=5 if expect else 0.5, stop_after=expect or None)]
    return result, got


async def _gateway_cut(dsn: str, house, alarm_id: int | None) -> str:
    """What the gateway writes when its rules close a meter: an acknowledged close."""
    cmd_id = f"gw-{uuid.uuid4().hex[:20]}"
    now = dt.datetime.now(dt.UTC)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason,"
            " alarm_id, state, attempts, requested_by, issued_at, acked_at, ack_ok, ack_valve)"
            " VALUES (%s, %s, %s, 'valve_close', 'leak', %s, 'acked', 1, 'gateway', %s, %s,"
            " true, 'closed')", (cmd_id, house.meter.id, house.id, alarm_id, now, now))
    return cmd_id


async def _clear(dsn: str, alarm_id: int) -> None:
    """The gateway clears an alarm once readings fall back below the clear level."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("UPDATE alarms SET state = 'cleared', cleared_at = now()"
                           " WHERE id = %s", (alarm_id,))


async def test_manual_close(client, city, as_role, dsn) -> None:
    meter = city[0].meter.id
    r, notified = await _listen_while(dsn, lambda: client.post(
        f"/valves/{meter}/close", json={"reason": "neighbour smells gas"},
        headers=as_role["operator"]))
    assert r.status_code == 202, r.text
    cmd = r.json()["command"]
    assert notified == [cmd["cmd_id"]]
    assert (cmd["action"], cmd["state"], cmd["household_id"], cmd["requested_by"]) == (
        "valve_close", "issued", city[0].id, "operator.one")
    assert cmd["reason"] == "manual: neighbour smells gas"
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute(
            "SELECT actor, details->>'meter_id' FROM audit_log WHERE entity = 'valve_command'"
            " AND entity_id = %s", (cmd["cmd_id"],))).fetchone()
    assert row == ("operator.one", meter)
    history = (await client.get(f"/valves/{meter}/commands", headers=as_role["viewer"])).json()
    assert [c["cmd_id"] for c in history["items"]] == [cmd["cmd_id"]]

    # The close opened the cut's inspection order, linked to the command.
    wo = (await client.get(f"/work-orders/{r.json()['work_order_id']}",
                           headers=as_role["viewer"])).json()
    assert (wo["cause"], wo["priority"], wo["status"], wo["cmd_id"], wo["household_id"]) == (
        "valve_inspection", "high", "open", cmd["cmd_id"], city[0].id)
    assert [(s["action"], s["actor"]) for s in wo["steps"]] == [("opened", "operator.one")]

    # Refusals leave no command and wake nobody.
    detector = city[0].detectors[0].id
    r, notified = await _listen_while(dsn, lambda: client.post(
        f"/valves/{detector}/close", json={"reason": "x"}, headers=as_role["operator"]),
        expect=0)
    assert r.status_code == 404 and notified == []
    r = await client.post(f"/valves/{meter}/close", json={"reason": "x"},
                          headers=as_role["viewer"])
    assert r.status_code == 403
    r = await client.post(f"/valves/{meter}/close", json={}, headers=as_role["operator"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "reason"
    assert (await client.get("/valves/nope/commands",
                             headers=as_role["viewer"])).status_code == 404


async def test_reopen_needs_a_resolved_safety_order(client, city, as_role, raise_alarm,
                                                    dsn) -> None:
    house = city[1]
    url = f"/valves/{house.meter.id}/reopen"
    eng = as_role["engineer"]

    r = await client.post(url, json={"reason": "please"}, headers=eng)
    assert r.status_code == 409 and r.json()["condition"] == "no_cut"
    assert (await client.post(url, json={"reason": "x"},
                              headers=as_role["operator"])).status_code == 403

    # The gateway cut the gas on a leak. A maintenance order does not count; a cancelled
    # leak order neither.
    await raise_alarm(house, kind="fault", cause="fault")
    leak_alarm, leak = await raise_alarm(house, kind="leak", cause="leak")
    cut = await _gateway_cut(dsn, house, leak_alarm)
    r = await client.post(url, json={"reason": "x"}, headers=eng)
    assert r.status_code == 409 and r.json()["condition"] == "gas_alarm"
    await _clear(dsn, leak_alarm)
    await client.post(f"/work-orders/{leak}/cancel", json={"reason": "false alarm"},
                      headers=as_role["operator"])
    r = await client.post(url, json={"reason": "x"}, headers=eng)
    assert r.status_code == 409 and r.json()["condition"] == "no_resolved_order"
    assert f"order {leak} (leak) was cancelled" in r.json()["detail"]
    assert cut in r.json()["detail"] and "/inspection" in r.json()["detail"]

    # An open overflow order blocks, whatever came before.
    overflow_alarm, overflow = await raise_alarm(house, kind="overflow", cause="overflow")
    await _clear(dsn, overflow_alarm)
    r = await client.post(url, json={"reason": "x"}, headers=eng)
    assert r.status_code == 409 and r.json()["condition"] == "open_order"
    assert r.json()["work_order_id"] == overflow and "open" in r.json()["detail"]
    for step, body, who in (("dispatch", {"crew": "c"}, "operator"), ("on-site", {}, "engineer"),
                            ("resolve", {"findings": "hose reseated"}, "engineer")):
        assert (await client.post(f"/work-orders/{overflow}/{step}", json=body,
                                  headers=as_role[who])).status_code == 200
    # The engineer who resolved it is not the second person; the admin is.
    r = await client.post(url, json={"reason": "hose reseated"}, headers=eng)
    assert r.status_code == 202 and r.json()["request"]["status"] == "pending"
    r, notified = await _listen_while(dsn, lambda: client.post(
        url, json={"reason": "hose reseated"}, headers=as_role["admin"]))
    assert r.status_code == 202, r.text
    assert r.json()["command"]["action"] == "valve_open"
    assert "press" in r.json()["note"]
    assert notified == [r.json()["command"]["cmd_id"]]
    pending = (await client.get(f"/valves/{house.meter.id}/reopen-requests",
                                headers=as_role["viewer"])).json()["items"]
    assert [p["status"] for p in pending] == ["superseded"]

    # A retired meter takes no commands.
    await client.patch(f"/devices/{city[2].meter.id}", json={"status": "retired"},
                       headers=as_role["admin"])
    r = await client.post(f"/valves/{city[2].meter.id}/close", json={"reason": "x"},
                          headers=as_role["operator"])
    assert r.status_code == 409 and "retired" in r.json()["detail"]
