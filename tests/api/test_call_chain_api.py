"""The call chain in the API: a household's notices with every attempt (numbers masked for
viewers), an operator's confirmation that stops a chain (once, audited), and the household's
emergency contact (set and cleared by operators, validated, audited, masked for viewers).
The rows are written as the gateway's notifier writes them; its walk is in
tests/integration/test_call_chain_live.py."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.services

EMERGENCY = "+15557770001"


def chain_rows(dsn: str, house) -> int:
    """A leak notice in the middle of its chain: the owner did not answer, the SMS is going
    out. Due in a day, so no running gateway takes it meanwhile."""
    with psycopg.connect(dsn) as conn:
        nid = conn.execute(
            "INSERT INTO notifications (household_id, kind, channel, recipient, body, dedupe_key,"
            " next_attempt_at, chain, step, step_attempts, attempts) VALUES"
            " (%s, 'leak', 'webhook', %s, 'Gas leak detected.', %s, now() + interval '1 day',"
            " ARRAY['voice_owner','sms_owner','voice_emergency','control_room'], 1, 1, 2)"
            " RETURNING id",
            (house.id, house.owner_phone, f"test:{house.id}:chain"),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO notification_attempts (notification_id, step, step_name, channel, role,"
            " recipient, attempt, call_id, state, finished_at) VALUES"
            " (%(n)s, 0, 'voice_owner', 'voice', 'owner', %(p)s, 1, %(c0)s, 'no_answer', now()),"
            " (%(n)s, 1, 'sms_owner', 'sms', 'owner', %(p)s, 1, %(c1)s, 'sending', NULL)",
            {"n": nid, "p": house.owner_phone, "c0": f"n{nid}-voice_owner-1",
             "c1": f"n{nid}-sms_owner-1"},
        )
    return nid


async def test_the_chain_is_visible_with_numbers_masked_for_viewers(
        client, city, as_role, dsn) -> None:
    house = city[0]
    nid = chain_rows(dsn, house)
    r = await client.get(f"/households/{house.id}/notifications", headers=as_role["viewer"])
    assert r.status_code == 200, r.text
    (n,) = r.json()["items"]
    assert n["id"] == nid and n["state"] == "pending" and n["step"] == 1
    assert n["chain"] == ["voice_owner", "sms_owner", "voice_emergency", "control_room"]
    assert [(a["step_name"], a["state"]) for a in n["attempt_list"]] == [
        ("voice_owner", "no_answer"), ("sms_owner", "sending")]
    shown = {n["recipient"], *(a["recipient"] for a in n["attempt_list"])}
    assert shown == {"*" * (len(house.owner_phone) - 4) + house.owner_phone[-4:]}

    r = await client.get(f"/notifications/{nid}", headers=as_role["operator"])
    assert r.status_code == 200
    assert {a["recipient"] for a in r.json()["attempt_list"]} == {house.owner_phone}

    r = await client.get(f"/households/{house.id}/notifications",
                         params={"state": "escalated"}, headers=as_role["viewer"])
    assert r.status_code == 200 and r.json()["items"] == []
    r = await client.get(f"/households/{house.id}/notifications",
                         params={"state": "lost"}, headers=as_role["viewer"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "state"
    r = await client.get("/households/nobody/notifications", headers=as_role["viewer"])
    assert r.status_code == 404


async def test_an_operator_confirms_a_chain_once_and_it_is_audited(
        client, city, as_role, dsn, users) -> None:
    house = city[1]
    nid = chain_rows(dsn, house)
    body = {"comment": "owner called back, is outside"}
    r = await client.post(f"/notifications/{nid}/confirm", json=body, headers=as_role["viewer"])
    assert r.status_code == 403
    r = await client.post(f"/notifications/{nid}/confirm", json={}, headers=as_role["operator"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "comment"
    r = await client.post(f"/notifications/{nid}/confirm", json=body,
                          headers=as_role["operator"])
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["state"] == "confirmed" and got["confirmed_by"] == users["operator"]
    assert got["confirmed_at"] is not None and len(got["attempt_list"]) == 2
    r = await client.post(f"/notifications/{nid}/confirm", json=body,
                          headers=as_role["operator"])
    assert r.status_code == 409 and "confirmed" in r.json()["detail"]
    r = await client.post("/notifications/999999999/confirm", json=body,
                          headers=as_role["operator"])
    assert r.status_code == 404
    with psycopg.connect(dsn) as conn:
        audit = conn.execute(
            "SELECT actor, details FROM audit_log WHERE action = 'notification.confirm'"
            " AND entity_id = %s", (str(nid),)).fetchall()
    assert audit == [(users["operator"], {"comment": body["comment"], "household": house.id})]


async def test_the_emergency_contact_is_set_masked_audited_and_cleared(
        client, city, as_role, dsn, users) -> None:
    house = city[2]
    url = f"/households/{house.id}/emergency-contact"
    contact = {"name": "Ben Neighbour", "phone": EMERGENCY}
    r = await client.put(url, json=contact, headers=as_role["viewer"])
    assert r.status_code == 403
    for bad, field in (({**contact, "phone": "call me"}, "phone"),
                       ({"phone": EMERGENCY}, "name"),
                       ({**contact, "email": "x@example.org"}, "email")):
        r = await client.put(url, json=bad, headers=as_role["operator"])
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, r.text
    r = await client.put("/households/nobody/emergency-contact", json=contact,
                         headers=as_role["operator"])
    assert r.status_code == 404

    r = await client.put(url, json=contact, headers=as_role["operator"])
    assert r.status_code == 200 and r.json() == {
        "household_id": house.id, "name": "Ben Neighbour", "phone": EMERGENCY}
    r = await client.get(url, headers=as_role["viewer"])
    assert r.json()["phone"] == "*" * (len(EMERGENCY) - 4) + EMERGENCY[-4:]
    with psycopg.connect(dsn) as conn:
        stored = conn.execute(
            "SELECT emergency_contact_name, emergency_contact_phone FROM households"
            " WHERE id = %s", (house.id,)).fetchone()
        assert stored == ("Ben Neighbour", EMERGENCY)

    r = await client.delete(url, headers=as_role["operator"])
    assert r.status_code == 204
    r = await client.get(url, headers=as_role["operator"])
    assert r.json() == {"household_id": house.id, "name": None, "phone": None}
    with psycopg.connect(dsn) as conn:
        audit = conn.execute(
            "SELECT actor, action, details FROM audit_log WHERE entity = 'household'"
            " AND entity_id = %s AND action LIKE 'household.emergency_contact.%%' ORDER BY id",
            (house.id,)).fetchall()
    assert [(a, act) for a, act, _ in audit] == [
        (users["operator"], "household.emergency_contact.set"),
        (users["operator"], "household.emergency_contact.clear")]
    assert EMERGENCY not in str(audit)  # the audit trail keeps the number masked
