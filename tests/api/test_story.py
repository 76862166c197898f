"""The whole story, as people live it: a leak is raised by the gateway, which cuts the gas;
it shows on the live stream, an operator acknowledges it and dispatches a crew, the engineer
arrives, resolves once the gas is gone and asks for the gas back, and a supervisor confirms
(the gateway is woken on gas_commands); a viewer can watch but do none of it, and a
stranger sees nothing."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import psycopg
import pytest

pytestmark = pytest.mark.services


async def _gateway_cut(dsn: str, house, alarm_id: int) -> str:
    """What the gateway writes when its rules close a meter on a leak."""
    cmd_id = f"gw-{uuid.uuid4().hex[:20]}"
    now = dt.datetime.now(dt.UTC)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason,"
            " alarm_id, state, attempts, requested_by, issued_at, acked_at, ack_ok, ack_valve)"
            " VALUES (%s, %s, %s, 'valve_close', 'leak', %s, 'acked', 1, 'gateway', %s, %s,"
            " true, 'closed')", (cmd_id, house.meter.id, house.id, alarm_id, now, now))
    return cmd_id


async def test_leak_to_reopen(client: httpx.AsyncClient, dsn: str, city, as_role, raise_alarm,
                              sse_reader) -> None:
    house = city[0]
    operator, engineer, viewer = as_role["operator"], as_role["engineer"], as_role["viewer"]
    admin = as_role["admin"]

    async with client.stream("GET", "/events", headers=viewer) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        sse = sse_reader(stream)
        event, opened = await sse.next()
        assert event == "stream.open" and opened["user"] == "viewer.one"

        # The gateway raises the alarm, opens the work order and cuts the gas.
        alarm_id, wo_id = await raise_alarm(house)
        cut = await _gateway_cut(dsn, house, alarm_id)
        _, raised = await sse.until(lambda e, d: e == "alarm.raised"
                                    and d["alarm_id"] == alarm_id)
        assert raised["household_id"] == house.id
        await sse.until(lambda e, d: e == "work_order.opened" and d["work_order_id"] == wo_id)

        # The operator sees it among the active alarms, with its evidence.
        r = await client.get("/alarms", params={"active": True, "household_id": house.id},
                             headers=operator)
        assert [a["id"] for a in r.json()["items"]] == [alarm_id]
        detail = (await client.get(f"/alarms/{alarm_id}", headers=operator)).json()
        assert detail["evidence"][-1]["ch4"] == 42.0
        assert [w["id"] for w in detail["work_orders"]] == [wo_id]

        # Viewers may look but not act.
        for method, path, body in (
                ("POST", f"/alarms/{alarm_id}/acknowledge", {"comment": "seen"}),
                ("POST", f"/work-orders/{wo_id}/dispatch", {"crew": "crew-1"}),
                ("POST", f"/work-orders/{wo_id}/on-site", {}),
                ("POST", f"/work-orders/{wo_id}/resolve", {"findings": "fixed"}),
                ("POST", f"/valves/{house.meter.id}/reopen", {"reason": "done"}),
                ("POST", f"/valves/{house.meter.id}/close", {"reason": "smell"})):
            r = await client.request(method, path, json=body, headers=viewer)
            assert r.status_code == 403, (path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["status"] == 403

        # A stranger gets nothing at all.
        for path in (f"/alarms/{alarm_id}", "/alarms", f"/work-orders/{wo_id}", "/events",
                     f"/valves/{house.meter.id}/commands"):
            r = await client.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = await client.post(f"/alarms/{alarm_id}/acknowledge", json={"comment": "x"})
        assert r.status_code == 401

        # The operator acknowledges: the stream shows it.
        r = await client.post(f"/alarms/{alarm_id}/acknowledge",
                              json={"comment": "called the owner"}, headers=operator)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "acknowledged"
        assert r.json()["acknowledged_by"] == "operator.one"
        await sse.until(lambda e, d: e == "alarm.acknowledged" and d["alarm_id"] == alarm_id)

        # The valve cannot reopen while the leak is active, nor while its order is open.
        r = await client.post(f"/valves/{house.meter.id}/reopen", json={"reason": "early"},
                              headers=engineer)
        assert r.status_code == 409
        assert r.json()["condition"] == "gas_alarm"
        assert f"leak alarm {alarm_id} (acknowledged" in r.json()["detail"]

        # dispatch -> on site -> resolved, each on the stream.
        r = await client.post(f"/work-orders/{wo_id}/dispatch", json={"crew": "crew-7"},
                              headers=operator)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "dispatched" and r.json()["crew"] == "crew-7"
        _, changed = await sse.until(lambda e, d: e == "work_order.changed"
                                     and d["work_order_id"] == wo_id)
        assert (changed["from"], changed["to"], changed["by"]) == ("open", "dispatched",
                                                                   "operator.one")
        r = await client.post(f"/work-orders/{wo_id}/on-site", json={"note": "arrived"},
                              headers=engineer)
        assert r.json()["status"] == "on_site"
        findings = {"findings": "cooker hose replaced, leak test passed"}
        r = await client.post(f"/work-orders/{wo_id}/resolve", json=findings, headers=engineer)
        assert r.status_code == 409 and r.json()["condition"] == "gas_alarm"
        async with await psycopg.AsyncConnection.connect(dsn) as conn:  # the gas is gone
            await conn.execute("UPDATE alarms SET state = 'cleared', cleared_at = now()"
                               " WHERE id = %s", (alarm_id,))
        r = await client.post(f"/valves/{house.meter.id}/reopen", json={"reason": "early"},
                              headers=engineer)
        assert r.status_code == 409
        assert f"safety work order {wo_id} (leak) is on_site" in r.json()["detail"]
        r = await client.post(f"/work-orders/{wo_id}/resolve", json=findings, headers=engineer)
        assert r.status_code == 200 and r.json()["status"] == "resolved"
        steps = r.json()["steps"]
        assert [(s["action"], s["actor"]) for s in steps] == [
            ("open", "gateway"), ("dispatch", "operator.one"), ("on_site", "engineer.one"),
            ("resolve", "engineer.one")]

        # The engineer asks for the gas back; having resolved the order, the request waits
        # for a second person. The supervisor confirms: the gateway hears on gas_commands.
        r = await client.post(f"/valves/{house.meter.id}/reopen",
                              json={"reason": "repair done"}, headers=engineer)
        assert r.status_code == 202, r.text
        request = r.json()["request"]
        assert (request["status"], request["work_order_id"], request["cut_cmd_id"],
                request["resolved_by"]) == ("pending", wo_id, cut, "engineer.one")
        await sse.until(lambda e, d: e == "valve.reopen_pending"
                        and d["request_id"] == request["id"])
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
            await listener.execute("LISTEN gas_commands")
            r = await client.post(
                f"/valves/{house.meter.id}/reopen-requests/{request['id']}/confirm",
                json={"reason": "checked the findings with the crew"}, headers=admin)
            assert r.status_code == 202, r.text
            command = r.json()["command"]
            assert "button" in r.json()["note"]
            assert command["action"] == "valve_open" and command["state"] == "issued"
            assert command["cmd_id"].startswith("op-") and len(command["cmd_id"]) == 35
            assert command["requested_by"] == "admin.one"
            assert command["household_id"] == house.id
            notified = [n.payload async for n in listener.notifies(timeout=5, stop_after=1)]
            assert notified == [command["cmd_id"]]
        await sse.until(lambda e, d: e == "command.requested"
                        and d["cmd_id"] == command["cmd_id"])

    # The command row is there for the gateway, and the history shows it.
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute(
            "SELECT action, state, meter_id, alarm_id FROM valve_commands WHERE cmd_id = %s",
            (command["cmd_id"],))).fetchone()
        # 'issued' until a gateway picks it up ('sent' when the run's gateway is up)
        assert (row[0], row[2], row[3]) == ("valve_open", house.meter.id, alarm_id)
        assert row[1] in ("issued", "sent")
        audit = await (await conn.execute(
            "SELECT actor, action FROM audit_log WHERE (entity, entity_id) IN (('alarm', %s),"
            " ('work_order', %s), ('valve_command', %s))"
            " AND actor <> 'gateway' ORDER BY id",  # the API's own steps (the run's gateway
            # audits what it does with the command too)
            (str(alarm_id), str(wo_id), command["cmd_id"]))).fetchall()
    assert audit == [("operator.one", "alarm.acknowledge"),
                     ("operator.one", "work_order.dispatch"),
                     ("engineer.one", "work_order.on_site"),
                     ("engineer.one", "work_order.resolve"),
                     ("admin.one", "valve.valve_open")]
    r = await client.get(f"/valves/{house.meter.id}/commands", headers=viewer)
    assert [c["cmd_id"] for c in r.json()["items"]] == [command["cmd_id"], cut]
    r = await client.get(f"/valves/{house.meter.id}/reopen-requests", headers=viewer)
    assert [(q["status"], q["decided_by"], q["cmd_id"]) for q in r.json()["items"]] == [
        ("confirmed", "admin.one", command["cmd_id"])]
