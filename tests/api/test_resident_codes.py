"""Resident sign-in with a one-time code texted through the (fake) SMS gateway, and the
abuse cases: an expired code, a reused one, wrong codes until the code dies, too many codes
for a household and from a client, too many wrong codes from a client, an SMS gateway that
fails, and a resident session that reaches nothing but its own household's /resident/
routes. Each test is its own client address (X-Forwarded-For, the test API trusts
127.0.0.1 as a proxy)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re

import psycopg
import pytest

from gateway.ops.provision import generate_city, provision

pytestmark = pytest.mark.services


def _client(prefix: str, who: str = "resident") -> dict[str, str]:
    n = int.from_bytes(hashlib.sha256(f"code/{prefix}/{who}".encode()).digest()[:3], "big")
    return {"X-Forwarded-For": str(ipaddress.IPv4Address(0x64800000 + n))}


def texted_code(phones, household_id: str) -> str:
    """The code in the latest sign-in text sent for `household_id`."""
    texts = [c for c in phones.calls("sms") if c.doc.get("household_id") == household_id
             and c.doc.get("kind") == "resident_code"]
    assert texts, f"no code texted for {household_id}"
    found = re.search(r"\b(\d{6})\b", texts[-1].body)
    assert found, texts[-1].body
    return found.group(1)


@pytest.fixture
def block(dsn, prefix):
    houses = generate_city(12, seed=5, prefix=prefix)
    provision(dsn, houses, None, None)
    return houses


async def _ask(client, house, headers) -> object:
    return await client.post("/resident/code", headers=headers,
                             json={"household_id": house.id, "phone": house.owner_phone})


async def _sign_in(client, house, code, headers) -> object:
    return await client.post("/resident/session", headers=headers,
                             json={"household_id": house.id, "code": code})


def _audit(dsn, household_id: str) -> list[tuple[str, dict]]:
    with psycopg.connect(dsn) as conn:
        return [(a, d) for a, d in conn.execute(
            "SELECT action, details FROM audit_log WHERE entity = 'household'"
            " AND entity_id = %s AND action LIKE 'resident.%%' ORDER BY id", (household_id,))]


async def test_code_signs_in_once_to_own_household(client, block, phones, dsn, prefix,
                                                  as_role) -> None:
    house, other = block[0], block[1]
    me = _client(prefix)
    r = await _ask(client, house, me)
    assert r.status_code == 202, r.text
    assert r.json() == {"sent_to": "***" + house.owner_phone[-4:], "expires_in": 300}
    code = texted_code(phones, house.id)
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT code_hash FROM resident_codes WHERE household_id = %s",
                              (house.id,)).fetchone()
    assert stored is not None and code not in stored[0]  # kept hashed

    r = await _sign_in(client, house, code, me)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert r.json()["household_id"] == house.id and r.json()["expires_in"] == 1800
    mine = {"Authorization": f"Bearer {token}", **me}

    r = await client.get("/resident/me", headers=mine)
    assert r.status_code == 200 and r.json()["household_id"] == house.id

    # reused: the code signs in once
    r = await _sign_in(client, house, code, me)
    assert r.status_code == 401 and "request a new one" in r.json()["detail"]
    # another household's code does not open this one, nor this one's that one
    r = await _sign_in(client, other, code, me)
    assert r.status_code == 401

    # the resident session opens no operator route, not even for its own household
    for path in (f"/households/{house.id}", f"/households/{other.id}", "/alarms",
                 "/upgrades/bookings", "/auth/me", f"/households/{other.id}/notifications"):
        r = await client.get(path, headers=mine)
        assert r.status_code == 401, (path, r.status_code)
        assert "resident" in r.json()["detail"]
    # and an operator's credential opens no resident route
    r = await client.get("/resident/me", headers=as_role["admin"])
    assert r.status_code == 401
    # no household id is taken once signed in: a forged one is refused or ignored
    r = await client.get("/resident/usage", params={"household_id": other.id}, headers=mine)
    assert r.status_code in (200, 422)
    r = await client.get("/resident/notices", headers=mine)
    assert r.status_code == 200 and all(isinstance(n["id"], int) for n in r.json())

    r = await client.delete("/resident/session", headers=mine)
    assert r.status_code == 204
    assert (await client.get("/resident/me", headers=mine)).status_code == 401
    actions = [a for a, _ in _audit(dsn, house.id)]
    assert actions[:2] == ["resident.code_issued", "resident.code_verified"]
    assert "resident.code_failed" in actions and actions[-1] == "resident.signed_out"


async def test_expired_code_is_refused(client, block, phones, dsn, prefix) -> None:
    house = block[2]
    me = _client(prefix)
    assert (await _ask(client, house, me)).status_code == 202
    code = texted_code(phones, house.id)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE resident_codes SET created_at = created_at - interval '6 min',"
                     " expires_at = expires_at - interval '6 min' WHERE household_id = %s",
                     (house.id,))
    r = await _sign_in(client, house, code, me)
    assert r.status_code == 401 and r.json()["reason"] == "expired"
    assert "expired" in r.json()["detail"]
    r = await _sign_in(client, house, code, me)  # and it stays dead
    assert r.status_code == 401 and r.json()["reason"] == "no_code"
    failed = [d for a, d in _audit(dsn, house.id) if a == "resident.code_failed"]
    assert [d["reason"] for d in failed] == ["expired", "no_code"]


async def test_wrong_codes_exhaust_the_code(client, block, phones, dsn, prefix) -> None:
    house = block[3]
    me = _client(prefix)
    assert (await _ask(client, house, me)).status_code == 202
    code = texted_code(phones, house.id)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    details = []
    for _ in range(5):
        r = await _sign_in(client, house, wrong, me)
        assert r.status_code == 401
        details.append(r.json()["detail"])
    assert details[0] == "wrong code; 4 attempts left"
    assert details[-1] == "wrong code, and no attempts left: request a new one"
    r = await _sign_in(client, house, code, me)  # the right code comes too late
    assert r.status_code == 401 and r.json()["reason"] == "no_code"
    # a new code works
    assert (await _ask(client, house, me)).status_code == 202
    r = await _sign_in(client, house, texted_code(phones, house.id), me)
    assert r.status_code == 200
    # malformed codes never reach the check
    r = await client.post("/resident/session", headers=me,
                          json={"household_id": house.id, "code": "12ab56"})
    assert r.status_code == 422


async def test_codes_are_rate_limited(client, block, phones, dsn, prefix) -> None:
    house = block[4]
    me = _client(prefix)
    for _ in range(3):
        assert (await _ask(client, house, me)).status_code == 202
    r = await _ask(client, house, me)
    assert r.status_code == 429 and r.json()["scope"] == "household"
    assert int(r.headers["Retry-After"]) > 0
    # only the newest code works: the ones before it were superseded
    with psycopg.connect(dsn) as conn:
        spent = [s for (s,) in conn.execute(
            "SELECT spent_how FROM resident_codes WHERE household_id = %s ORDER BY id",
            (house.id,))]
    assert spent == ["superseded", "superseded", None]
    assert ("resident.code_refused", {"client": me["X-Forwarded-For"], "scope": "household",
                                      "limit": "3 codes per 15 minutes"}) in _audit(dsn, house.id)

    # one client asking for many households' codes
    walker = _client(prefix, "walker")
    answers = [(await _ask(client, h, walker)).status_code for h in block[5:12]]
    answers += [(await _ask(client, h, walker)).status_code for h in block[5:9]]
    assert answers[:10] == [202] * 10 and answers[10] == 429


async def test_wrong_codes_from_one_client_are_limited(client, block, phones, prefix) -> None:
    me = _client(prefix)
    statuses = []
    for house in block[5:8]:
        assert (await _ask(client, house, me)).status_code == 202
        code = texted_code(phones, house.id)
        wrong = f"{(int(code) + 7) % 10**6:06d}"
        for _ in range(4):
            statuses.append((await _sign_in(client, house, wrong, me)).status_code)
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    # another address is not blocked by this one's failures
    house = block[8]
    other = _client(prefix, "other")
    assert (await _ask(client, house, other)).status_code == 202
    r = await _sign_in(client, house, texted_code(phones, house.id), other)
    assert r.status_code == 200


async def test_sms_gateway_failure_spends_the_code(client, block, phones, dsn, prefix) -> None:
    house = block[9]
    phones.configure(house.owner_phone, ["failed"], channel="sms")
    try:
        r = await _ask(client, house, _client(prefix))
    finally:
        phones.configure(house.owner_phone, ["sent"], channel="sms")
    assert r.status_code == 503 and "could not be sent" in r.json()["detail"]
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT spent_how FROM resident_codes WHERE household_id = %s",
                           (house.id,)).fetchone()
    assert row == ("undelivered",)
    assert [a for a, _ in _audit(dsn, house.id)] == ["resident.code_issued",
                                                     "resident.code_undelivered"]


async def test_usage_by_day_and_month_from_meter_readings(client, block, phones, dsn,
                                                         prefix) -> None:
    house = block[10]
    me = _client(prefix)
    now = dt.datetime.now(dt.UTC)
    # readings: 100.0 before the windows, then rises of 1.5 (two days ago), 2.25 (today)
    # and a meter reset (a fall, counted as nothing) followed by a rise of 0.5
    points = [(now - dt.timedelta(days=400), 100.0), (now - dt.timedelta(days=2), 101.5),
              (now - dt.timedelta(minutes=30), 103.75), (now - dt.timedelta(minutes=20), 3.0),
              (now - dt.timedelta(minutes=10), 3.5)]
    with psycopg.connect(dsn) as conn:
        for seq, (at, vol) in enumerate(points, 1):
            conn.execute("INSERT INTO meter_readings (time, device_id, seq, vol_m3, flow_m3h,"
                         " valve, batt_v, rssi, received_at) VALUES (%s, %s, %s, %s, 0, 0,"
                         " 3.6, -80, %s)", (at, house.meter.id, seq, vol, at))
    assert (await _ask(client, house, me)).status_code == 202
    r = await _sign_in(client, house, texted_code(phones, house.id), me)
    mine = {"Authorization": f"Bearer {r.json()['access_token']}", **me}
    days = (await client.get("/resident/usage", params={"by": "day"}, headers=mine)).json()
    assert len(days["items"]) == 31 and days["time_zone"] == "Asia/Shanghai"
    assert days["total_m3"] == pytest.approx(4.25)
    assert sorted(p["volume_m3"] for p in days["items"] if p["volume_m3"]) in (
        [1.5, 2.75], [0.5, 1.5, 2.25])  # the last hour may straddle local midnight
    months = (await client.get("/resident/usage", params={"by": "month"}, headers=mine)).json()
    assert len(months["items"]) == 12 and months["total_m3"] == pytest.approx(4.25)
    r = await client.get("/resident/usage", params={"by": "year"}, headers=mine)
    assert r.status_code == 422
