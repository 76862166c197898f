"""The upgrade programme: the residents' public check and booking, operators' management,
and no overbooking under a crowd of concurrent bookings for the last places. Resident
requests come from this test's own client address (X-Forwarded-For; the test API trusts
127.0.0.1 as a proxy), so the per-client limits of other tests never bind them."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress

import psycopg
import pytest

from dashboard_api.attempts import AttemptLimiter
from gateway.ops.provision import generate_city, provision


def _slot(days: int = 7) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).replace(
        minute=0, second=0, microsecond=0).isoformat()


def _address(prefix: str, who: str) -> str:
    n = int.from_bytes(hashlib.sha256(f"{prefix}/{who}".encode()).digest()[:3], "big")
    return str(ipaddress.IPv4Address(0x64400000 + n))  # in 100.64.0.0/10


@pytest.fixture
def resident(prefix) -> dict[str, str]:
    """Headers of this test's resident client."""
    return {"X-Forwarded-For": _address(prefix, "resident")}


@pytest.fixture
def block(dsn, prefix):
    """Twelve households of one community (the first building of the city)."""
    houses = generate_city(12, seed=3, prefix=prefix)
    provision(dsn, houses, None, None)
    return houses


@pytest.mark.services
async def test_resident_lookup_and_booking(client, block, as_role, resident) -> None:
    house = block[0]
    community = house.community
    r = await client.put(f"/upgrades/quotas/{community}", json={"places": 5},
                         headers=as_role["admin"])
    assert r.status_code == 200 and r.json()["remaining"] == 5

    check = {"household_id": house.id, "phone": house.owner_phone}
    r = await client.post("/upgrades/resident/lookup", json=check, headers=resident)
    assert r.status_code == 200
    assert r.json() == {"community": community, "places": 5, "booked": 0, "remaining": 5,
                        "booking": None}
    # The phone may be written with spaces and dashes.
    spaced = house.owner_phone[:5] + " " + house.owner_phone[5:8] + "-" + house.owner_phone[8:]
    assert (await client.post("/upgrades/resident/lookup",
                              json={**check, "phone": spaced},
                              headers=resident)).status_code == 200

    wrong = await client.post("/upgrades/resident/lookup", json={**check, "phone": "+1555999"},
                          headers=resident)
    unknown = await client.post("/upgrades/resident/lookup",
                                json={"household_id": "nobody", "phone": house.owner_phone},
                                headers=resident)
    assert wrong.status_code == unknown.status_code == 404
    assert wrong.json()["detail"] == unknown.json()["detail"]

    r = await client.post("/upgrades/resident/bookings", json={**check, "slot_start": _slot()},
                          headers=resident)
    assert r.status_code == 201, r.text
    booking = r.json()
    assert booking["created_by"] == f"resident:{house.id}" and booking["status"] == "booked"
    r = await client.post("/upgrades/resident/bookings", json={**check, "slot_start": _slot(8)},
                          headers=resident)
    assert r.status_code == 409 and "already" in r.json()["detail"]
    view = (await client.post("/upgrades/resident/lookup", json=check, headers=resident)).json()
    assert (view["booked"], view["remaining"], view["booking"]["id"]) == (1, 4, booking["id"])

    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    r = await client.post("/upgrades/resident/bookings",
                          json={"household_id": block[1].id, "phone": block[1].owner_phone,
                                "slot_start": past}, headers=resident)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "slot_start"

    # Operators see and manage bookings; cancelling gives the place back.
    listed = (await client.get("/upgrades/bookings", params={"community": community},
                               headers=as_role["viewer"])).json()["items"]
    assert [b["id"] for b in listed] == [booking["id"]]
    assert (await client.post(f"/upgrades/bookings/{booking['id']}/cancel",
                              headers=as_role["viewer"])).status_code == 403
    r = await client.post(f"/upgrades/bookings/{booking['id']}/cancel",
                          headers=as_role["operator"])
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await client.post(f"/upgrades/bookings/{booking['id']}/cancel",
                              headers=as_role["operator"])).status_code == 409
    view = (await client.post("/upgrades/resident/lookup", json=check, headers=resident)).json()
    assert (view["booked"], view["booking"]) == (0, None)

    r = await client.post("/upgrades/bookings", json={"household_id": house.id,
                                                      "slot_start": _slot(3)},
                          headers=as_role["operator"])
    assert r.status_code == 201 and r.json()["created_by"] == "operator.one"
    r = await client.post(f"/upgrades/bookings/{r.json()['id']}/done",
                          headers=as_role["operator"])
    assert r.json()["status"] == "done"
    r = await client.put(f"/upgrades/quotas/{community}", json={"places": 0},
                         headers=as_role["admin"])
    assert r.status_code == 409  # one booking (done) still holds its place
    assert (await client.put(f"/upgrades/quotas/{community}", json={"places": 9},
                             headers=as_role["operator"])).status_code == 403
    assert (await client.post("/upgrades/bookings", json={"household_id": "nobody",
                                                          "slot_start": _slot()},
                              headers=as_role["operator"])).status_code == 404


@pytest.mark.services
async def test_no_overbooking_under_concurrency(client, block, as_role, dsn,
                                                resident) -> None:
    community = block[0].community
    await client.put(f"/upgrades/quotas/{community}", json={"places": 3},
                     headers=as_role["admin"])
    requests = []
    for i, house in enumerate(block):
        if i % 2:
            requests.append(client.post("/upgrades/resident/bookings", json={
                "household_id": house.id, "phone": house.owner_phone, "slot_start": _slot()},
                headers=resident))
        else:
            requests.append(client.post("/upgrades/bookings", json={
                "household_id": house.id, "slot_start": _slot()}, headers=as_role["operator"]))
    results = await asyncio.gather(*requests)
    codes = sorted(r.status_code for r in results)
    assert codes == [201] * 3 + [409] * 9, [r.text for r in results if r.status_code != 201]
    assert all("no places left" in r.json()["detail"] for r in results if r.status_code == 409)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        quota = await (await conn.execute(
            "SELECT places, booked, (SELECT count(*) FROM upgrade_bookings b"
            " WHERE b.community = q.community AND status <> 'cancelled')"
            " FROM upgrade_quotas q WHERE community = %s", (community,))).fetchone()
    assert quota == (3, 3, 3)


@pytest.mark.services
async def test_failed_checks_are_limited_per_client(client, block, prefix, resident) -> None:
    house = block[5]
    stranger = {"X-Forwarded-For": _address(prefix, "stranger")}
    for _ in range(5):
        r = await client.post("/upgrades/resident/lookup",
                              json={"household_id": house.id, "phone": "+10000000"},
                              headers=stranger)
        assert r.status_code == 404
    right = {"household_id": house.id, "phone": house.owner_phone}
    r = await client.post("/upgrades/resident/lookup", json=right, headers=stranger)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert r.json()["detail"].startswith(
        "too many failed checks for this household from your address; try again in")
    # The resident, at their own address, is not locked out; other households neither.
    r = await client.post("/upgrades/resident/lookup", json=right, headers=resident)
    assert r.status_code == 200
    r = await client.post("/upgrades/resident/lookup",
                          json={"household_id": block[6].id, "phone": block[6].owner_phone},
                          headers=resident)
    assert r.status_code == 200


def test_attempt_limiter_window() -> None:
    limiter = AttemptLimiter(max_failures=2, window_s=10)
    limiter.fail("h1", 0.0)
    assert not limiter.blocked("h1", 1.0)
    limiter.fail("h1", 1.0)
    assert limiter.blocked("h1", 5.0)
    assert not limiter.blocked("h1", 10.5)  # the first failure left the window
    limiter.fail("h1", 11.0)
    limiter.succeed("h1")
    assert not limiter.blocked("h1", 11.0)
    small = AttemptLimiter(max_failures=1, window_s=10, max_keys=2)
    for key in ("a", "b", "c"):
        small.fail(key, 0.0)
    assert not small.blocked("a", 1.0) and small.blocked("c", 1.0)


@pytest.mark.services
async def test_resident_cancels_own_booking(client, block, as_role, resident) -> None:
    house, other = block[0], block[1]
    community = house.community
    await client.put(f"/upgrades/quotas/{community}", json={"places": 1}, headers=as_role["admin"])
    check = {"household_id": house.id, "phone": house.owner_phone}
    r = await client.post("/upgrades/resident/cancel", json=check, headers=resident)
    assert r.status_code == 404 and "no booking to cancel" in r.json()["detail"]
    r = await client.post("/upgrades/resident/bookings", json={**check, "slot_start": _slot()},
                          headers=resident)
    assert r.status_code == 201
    # another household's phone does not cancel it
    wrong = {"household_id": house.id, "phone": other.owner_phone}
    r = await client.post("/upgrades/resident/cancel", json=wrong, headers=resident)
    assert r.status_code == 404
    assert r.json()["detail"] == "no household matches this id and phone number"
    r = await client.post("/upgrades/resident/cancel", json=check, headers=resident)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["created_by"] == f"resident:{house.id}"
    r = await client.post("/upgrades/resident/lookup", json=check, headers=resident)
    assert r.json()["remaining"] == 1 and r.json()["booking"] is None
