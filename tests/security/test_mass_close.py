"""Mass valve actions against the real API and database (issue 11).

Reproduces the findings and shows they hold now: concurrent closes of one meter go out as
one command (the others join it), and one account closing many meters in a minute must
confirm each action past the threshold, and is refused with 429 past the hard limit, every
refusal audited."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import httpx
import psycopg
import pytest
from api_fixtures import PASSWORD

from dashboard_api import valve_policy
from dashboard_api.users import create_user
from gateway.ops.provision import generate_city, provision

pytestmark = pytest.mark.services

REASON = "evacuation of building B after a riser leak report"


@pytest.fixture
async def operators(api, dsn, prefix) -> list[tuple[str, dict[str, str]]]:
    """Three operator accounts of this test's own: (username, Authorization header)."""
    out = []
    async with httpx.AsyncClient(base_url=api.base_url) as c:
        for i in range(3):
            name = f"{prefix}.op{i}"
            create_user(dsn, name, "operator", PASSWORD, actor="tests")
            r = await c.post("/auth/token", data={"username": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            out.append((name, {"Authorization": f"Bearer {r.json()['access_token']}"}))
    return out


async def _sql(dsn: str, query: str, params: tuple = ()) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def _closes(dsn: str, meter: str) -> list[str]:
    rows = await _sql(dsn, "SELECT cmd_id FROM valve_commands WHERE meter_id = %s"
                           " AND action = 'valve_close'", (meter,))
    return [r[0] for r in rows]


async def test_concurrent_closes_of_one_meter_give_one_command(client, city, operators,
                                                               dsn) -> None:
    meter = city[0].meter.id
    results = await asyncio.gather(*(
        client.post(f"/valves/{meter}/close", json={"reason": f"smell reported ({i})"},
                    headers=headers) for i, (_, headers) in enumerate(operators * 2)))
    assert [r.status_code for r in results] == [202] * 6, [r.text for r in results]
    (cmd_id,) = await _closes(dsn, meter)
    assert {r.json()["command"]["cmd_id"] for r in results} == {cmd_id}
    attached = [r.json() for r in results if r.json()["attached"]]
    assert len(attached) == 5 and all("joined" in a["note"] for a in attached)
    assert len({r.json()["work_order_id"] for r in results}) == 1
    audit = await _sql(dsn, "SELECT action, count(*) FROM audit_log WHERE entity ="
                            " 'valve_command' AND entity_id = %s AND action LIKE 'valve.%%'"
                            " GROUP BY action ORDER BY 1", (cmd_id,))  # (a gateway adds its own)
    assert audit == [("valve.close_attached", 5), ("valve.valve_close", 1)]

    # A close the gateway has in flight (sent, not yet acknowledged) is joined too.
    house = city[1]
    gw_cmd = f"gw-{uuid.uuid4().hex[:20]}"
    now = dt.datetime.now(dt.UTC)
    await _sql(dsn, "INSERT INTO valve_commands (cmd_id, meter_id, household_id, action,"
                    " reason, state, attempts, requested_by, issued_at, sent_at) VALUES"
                    " (%s, %s, %s, 'valve_close', 'leak', 'sent', 1, 'gateway', %s, %s)",
               (gw_cmd, house.meter.id, house.id, now, now))
    r = await client.post(f"/valves/{house.meter.id}/close", json={"reason": "smell"},
                          headers=operators[0][1])
    assert r.status_code == 202 and r.json()["attached"] is True
    assert r.json()["command"]["cmd_id"] == gw_cmd
    assert await _closes(dsn, house.meter.id) == [gw_cmd]

    # Once it is acknowledged, a new close is a new command (and a new cut).
    await _sql(dsn, "UPDATE valve_commands SET state = 'acked', ack_ok = true WHERE cmd_id = %s",
               (gw_cmd,))
    r = await client.post(f"/valves/{house.meter.id}/close", json={"reason": "again"},
                          headers=operators[0][1])
    assert r.status_code == 202 and r.json()["attached"] is False
    assert len(await _closes(dsn, house.meter.id)) == 2


async def test_mass_closes_need_confirmation_then_hit_the_rate_limit(api, client, operators,
                                                                     dsn, prefix) -> None:
    houses = generate_city(valve_policy.RATE_LIMIT_PER_WINDOW + 2, seed=11,
                           prefix=f"{prefix}m")
    provision(dsn, houses, None, None)
    meters = [h.meter.id for h in houses]
    (name, headers), (other_name, other) = operators[0], operators[1]
    threshold = valve_policy.MASS_ACTION_THRESHOLD

    # Up to the threshold, closes go through as before.
    for m in meters[:threshold]:
        r = await client.post(f"/valves/{m}/close", json={"reason": "drill"}, headers=headers)
        assert r.status_code == 202, r.text

    # The next one is a mass action: refused without an explicit confirmation and a reason.
    m = meters[threshold]
    r = await client.post(f"/valves/{m}/close", json={"reason": "drill"}, headers=headers)
    assert r.status_code == 409, r.text
    assert r.json()["condition"] == "mass_confirmation"
    assert "confirm_mass_action" in r.json()["detail"]
    assert r.json()["actions_in_window"] == threshold
    r = await client.post(f"/valves/{m}/close", json={"reason": "drill",
                                                      "confirm_mass_action": True},
                          headers=headers)
    assert r.status_code == 409 and r.json()["condition"] == "mass_reason"
    assert await _closes(dsn, m) == []

    # Another account is not held back by this one's count.
    r = await client.post(f"/valves/{m}/close", json={"reason": "drill"}, headers=other)
    assert r.status_code == 202 and r.json()["attached"] is False
    r = await client.post(f"/valves/{m}/close", json={"reason": REASON,
                                                      "confirm_mass_action": True},
                          headers=headers)
    assert r.status_code == 202 and r.json()["attached"] is True  # joined: still counted

    # Confirmed, the account goes on up to the hard limit...
    body = {"reason": REASON, "confirm_mass_action": True}
    for m in meters[threshold + 1:valve_policy.RATE_LIMIT_PER_WINDOW]:
        r = await client.post(f"/valves/{m}/close", json=body, headers=headers)
        assert r.status_code == 202, r.text

    # ... and no further this minute, confirmed or not.
    m = meters[valve_policy.RATE_LIMIT_PER_WINDOW]
    r = await client.post(f"/valves/{m}/close", json=body, headers=headers)
    assert r.status_code == 429, r.text
    assert r.json()["condition"] == "rate_limit"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert await _closes(dsn, m) == []

    counted = await _sql(dsn, "SELECT count(*) FROM valve_commands WHERE requested_by = %s",
                         (name,))
    assert counted == [(valve_policy.RATE_LIMIT_PER_WINDOW - 1,)]  # one was a join
    mass = await _sql(dsn, "SELECT count(*) FROM audit_log WHERE actor = %s AND action ="
                           " 'valve.valve_close' AND (details->>'mass_action')::boolean",
                      (name,))
    assert mass == [(valve_policy.RATE_LIMIT_PER_WINDOW - threshold - 1,)]
    refusals = await _sql(dsn, "SELECT entity_id, details->>'condition' FROM audit_log"
                               " WHERE actor = %s AND action = 'valve.refused' ORDER BY id",
                          (name,))
    assert refusals == [(meters[threshold], "mass_confirmation"),
                        (meters[threshold], "mass_reason"),
                        (m, "rate_limit")]
    assert other_name != name
