"""Work orders: the transitions and their 409 reasons, overdue flags against the SLA, and
concurrent requests on one order that never lose or duplicate a step."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools

import pytest

from dashboard_api import workflow


def test_state_machine() -> None:
    assert workflow.next_status("dispatch", "open") == "dispatched"
    assert workflow.next_status("on_site", "dispatched") == "on_site"
    assert workflow.next_status("resolve", "on_site") == "resolved"
    for status in ("open", "dispatched", "on_site"):
        assert workflow.next_status("cancel", status) == "cancelled"
    with pytest.raises(workflow.IllegalTransition, match="needs status dispatched"):
        workflow.next_status("on_site", "open")
    with pytest.raises(workflow.IllegalTransition, match="closed"):
        workflow.next_status("cancel", "resolved")


@pytest.mark.services
async def test_transitions_and_reasons(client, city, as_role, raise_alarm) -> None:
    _, wo = await raise_alarm(city[0])
    op, eng, viewer = as_role["operator"], as_role["engineer"], as_role["viewer"]
    url = f"/work-orders/{wo}"

    r = await client.post(f"{url}/on-site", json={}, headers=eng)
    assert r.status_code == 409
    assert r.json()["detail"] == "the work order is open; 'on_site' needs status dispatched"
    assert r.json()["current_status"] == "open"
    assert (await client.post(f"{url}/on-site", json={}, headers=op)).status_code == 403
    assert (await client.post(f"{url}/dispatch", json={"crew": "c1"},
                              headers=viewer)).status_code == 403
    r = await client.post(f"{url}/dispatch", json={}, headers=op)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "crew"

    r = await client.post(f"{url}/dispatch", json={"crew": "crew-2", "expected_version": 7},
                          headers=op)
    assert r.status_code == 409 and r.json()["current_version"] == 1
    r = await client.post(f"{url}/dispatch", json={"crew": "crew-2", "expected_version": 1},
                          headers=op)
    assert r.status_code == 200 and r.json()["version"] == 2
    r = await client.post(f"{url}/resolve", json={"findings": "x"}, headers=eng)
    assert r.status_code == 409 and "needs status on_site" in r.json()["detail"]
    r = await client.post(f"{url}/cancel", json={"reason": "duplicate of a phone report"},
                          headers=op)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await client.post(f"{url}/dispatch", json={"crew": "crew-3"}, headers=op)
    assert r.status_code == 409 and "closed" in r.json()["detail"]

    detail = (await client.get(url, headers=viewer)).json()
    assert [(s["action"], s["from_status"], s["to_status"], s["actor"])
            for s in detail["steps"]] == [
        ("open", None, "open", "gateway"),
        ("dispatch", "open", "dispatched", "operator.one"),
        ("cancel", "dispatched", "cancelled", "operator.one")]
    assert detail["steps"][1]["note"] == "crew crew-2"
    assert (await client.get("/work-orders/987654321", headers=viewer)).status_code == 404
    assert (await client.post("/work-orders/987654321/cancel", json={"reason": "x"},
                              headers=op)).status_code == 404


@pytest.mark.services
async def test_filters_and_overdue(client, city, as_role, raise_alarm) -> None:
    late_arrival = await raise_alarm(city[0], arrive_in=dt.timedelta(minutes=-5))
    late_repair = await raise_alarm(city[1], cause="overflow", priority="high",
                                    arrive_in=dt.timedelta(minutes=-50),
                                    resolve_in=dt.timedelta(minutes=-1))
    on_time = await raise_alarm(city[2], cause="fault", priority="normal")
    h = as_role["viewer"]
    community = city[0].community
    # The engineer is on site for the late repair: its arrival is no longer overdue.
    await client.post(f"/work-orders/{late_repair[1]}/dispatch", json={"crew": "c"},
                      headers=as_role["operator"])
    await client.post(f"/work-orders/{late_repair[1]}/on-site", json={},
                      headers=as_role["engineer"])

    mine = {late_arrival[1], late_repair[1], on_time[1]}

    async def items(**params) -> list[dict]:
        r = await client.get("/work-orders", params={"community": community, **params},
                             headers=h)
        assert r.status_code == 200, r.text
        return [w for w in r.json()["items"] if w["id"] in mine]  # this test's own orders

    overdue = {w["id"]: w for w in await items(overdue=True)}
    assert set(overdue) == {late_arrival[1], late_repair[1]}
    assert overdue[late_arrival[1]]["overdue_arrival"] is True
    assert overdue[late_repair[1]]["overdue_arrival"] is False
    assert overdue[late_repair[1]]["overdue_resolution"] is True
    assert [w["id"] for w in await items(overdue=False)] == [on_time[1]]
    assert [w["id"] for w in await items(priority="high")] == [late_repair[1]]
    assert [w["id"] for w in await items(status=["on_site"])] == [late_repair[1]]
    assert len(await items(status=["open", "on_site"])) == 3
    assert [w["id"] for w in await items(cause="fault")] == [on_time[1]]
    r = await client.get("/work-orders", params={"status": "done"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "status.0"


@pytest.mark.services
async def test_concurrent_dispatches_have_one_winner(client, city, as_role, raise_alarm) -> None:
    _, wo = await raise_alarm(city[3])
    results = await asyncio.gather(*(
        client.post(f"/work-orders/{wo}/dispatch", json={"crew": f"crew-{i}"},
                    headers=as_role["operator"]) for i in range(12)))
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [409] * 11
    detail = (await client.get(f"/work-orders/{wo}", headers=as_role["viewer"])).json()
    assert [s["action"] for s in detail["steps"]] == ["open", "dispatch"]
    assert detail["version"] == 2


@pytest.mark.services
async def test_concurrent_transitions_never_lose_a_step(client, city, as_role,
                                                        raise_alarm) -> None:
    _, wo = await raise_alarm(city[2], cause="valve_fault")
    url = f"/work-orders/{wo}"
    await client.post(f"{url}/dispatch", json={"crew": "c"}, headers=as_role["operator"])
    requests = []
    for i in range(8):
        requests.append(client.post(f"{url}/on-site", json={"note": f"n{i}"},
                                    headers=as_role["engineer"]))
        requests.append(client.post(f"{url}/cancel", json={"reason": f"r{i}"},
                                    headers=as_role["operator"]))
    results = await asyncio.gather(*requests)
    ok = [r for r in results if r.status_code == 200]
    assert all(r.status_code in (200, 409) for r in results)
    detail = (await client.get(url, headers=as_role["viewer"])).json()
    steps = detail["steps"]
    assert len(steps) == 2 + len(ok)  # open, dispatch, and one step per success
    for before, after in itertools.pairwise(steps):
        assert after["from_status"] == before["to_status"]  # an unbroken chain
    assert detail["status"] == steps[-1]["to_status"] == "cancelled"
    assert detail["version"] == 2 + len(ok)
