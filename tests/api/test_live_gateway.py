"""The story with the real gateway: a detector's leak over MQTT shows on the API's live stream,
the operator and engineer work the order through the API, and the reopen they request is
delivered to the meter by the gateway."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from support import GatewayProcess, wait_until_async

pytestmark = pytest.mark.services


@pytest.fixture
def own_gateway(stack):
    """A gateway for this test only: the other API tests play the gateway's part themselves
    and assert exact lists, which a live gateway's own alarms (service life...) would upset."""
    gw = GatewayProcess(stack).start()
    yield gw
    gw.stop()


async def test_real_leak_through_the_api_to_the_reopen(client: httpx.AsyncClient, as_role,
                                                       sse_reader, own_gateway, fleet, devices,
                                                       dsn) -> None:
    house = fleet(1)[0]
    own_gateway.wait_devices(dsn)
    meter = devices(house.meter.id)
    det = devices(house.detectors[0].id)
    operator, engineer, viewer = as_role["operator"], as_role["engineer"], as_role["viewer"]
    async with client.stream("GET", "/events", headers=viewer) as stream:
        sse = sse_reader(stream)
        await sse.next()  # stream.open
        await asyncio.to_thread(det.detector, 48.0)
        _, cmd = await asyncio.to_thread(meter.commands.get, True, 5)
        assert cmd["action"] == "valve_close"
        await asyncio.to_thread(meter.ack, cmd["cmd_id"])
        wanted = {
            "alarm": lambda e, d: e == "alarm.raised" and d.get("household_id") == house.id,
            "order": lambda e, d: e == "work_order.opened" and d.get("household_id") == house.id,
            "acked": lambda e, d: e == "command.state" and d.get("cmd_id") == cmd["cmd_id"]
            and d.get("state") == "acked",
        }
        seen: dict[str, dict] = {}
        while len(seen) < len(wanted):  # one transaction may carry them in any order
            event, data = await sse.next(timeout=10)
            seen.update({k: data for k, match in wanted.items() if match(event, data)})
        assert seen["alarm"]["kind"] == "leak" and seen["alarm"]["alarm_id"]

    r = await client.get("/work-orders", params={"household_id": house.id}, headers=operator)
    orders = r.json()["items"]
    assert [(o["cause"], o["priority"]) for o in orders] == [("leak", "urgent")]
    wo = orders[0]["id"]
    r = await client.post(f"/valves/{house.meter.id}/reopen", json={"reason": "too early"},
                          headers=engineer)
    assert r.status_code == 409
    for path, who, body in ((f"/work-orders/{wo}/dispatch", operator, {"crew": "crew-3"}),
                            (f"/work-orders/{wo}/on-site", engineer, {})):
        r = await client.post(path, json=body, headers=who)
        assert r.status_code == 200, (path, r.text)
    resolve = (f"/work-orders/{wo}/resolve", {"findings": "loose hose clamp replaced"})
    r = await client.post(resolve[0], json=resolve[1], headers=engineer)
    assert r.status_code == 409  # gas is still detected: the leak alarm is active
    for _ in range(3):  # the room airs out: the gateway clears the alarm
        await asyncio.to_thread(det.detector, 0.5)

    async def gas_cleared() -> bool:
        r = await client.get("/alarms", params={"household_id": house.id, "active": "true"},
                             headers=viewer)
        gas = [a for a in r.json()["items"] if a["kind"] in ("leak", "prealarm", "rising")]
        return not gas

    await wait_until_async(gas_cleared, 10, what="the gas alarms cleared")
    r = await client.post(resolve[0], json=resolve[1], headers=engineer)
    assert r.status_code == 200, r.text
    # a second person, not the engineer who resolved the order, requests the reopen
    r = await client.post(f"/valves/{house.meter.id}/reopen", json={"reason": "repaired"},
                          headers=as_role["admin"])
    assert r.status_code in (200, 201, 202), r.text
    _, reopen = await asyncio.to_thread(meter.commands.get, True, 5)
    assert reopen["action"] == "valve_open"  # delivered by the gateway, tracked like any command
    r = await client.get(f"/valves/{house.meter.id}/commands", headers=viewer)
    actions = [c["action"] for c in r.json()["items"]]
    assert sorted(actions) == ["valve_close", "valve_open"]
