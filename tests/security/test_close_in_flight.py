"""One close per meter in flight, at the gateway: an operator's close that reaches the
gateway while another close of the same meter is on its way attaches to it (state
'attached', attached_to the command in flight) instead of going out a second time.
The API already attaches what it can see in the database; this is the gateway's own
guard, for its rule-issued closes not yet written and for API processes racing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from support import wait_row

pytestmark = pytest.mark.services


def _issue(conn: psycopg.Connection[Any], cmd_id: str, meter: str, household: str) -> None:
    conn.execute("INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason,"
                 " state, requested_by, issued_at) VALUES (%s, %s, %s, 'valve_close',"
                 " 'manual: test', 'issued', 'operator.one', now())", (cmd_id, meter, household))
    conn.execute("SELECT pg_notify('gas_commands', %s)", (cmd_id,))


def _states(dsn: str, ids: list[str], done: Any, timeout_s: float = 10) -> dict[str, tuple]:
    rows = wait_row(dsn, "SELECT cmd_id, state, attached_to FROM valve_commands"
                    " WHERE cmd_id = ANY(%s)", (ids,),
                    cond=lambda rows: done({r[0]: (r[1], r[2]) for r in rows}),
                    timeout_s=timeout_s, what=f"the states of {ids}")
    return {r[0]: (r[1], r[2]) for r in rows}


def test_closes_racing_for_one_meter_send_one_command(gateway: Any, fleet: Any, devices: Any,
                                                       dsn: str) -> None:
    home, other = fleet(2)
    gateway.wait_devices(dsn)
    meter = devices(home.meter.id)
    det = devices(home.detectors[0].id)
    det.detector(45.0)  # the gateway cuts at once; the meter does not ack yet
    _, first = meter.commands.get(timeout=5)
    assert first["action"] == "valve_close"
    with psycopg.connect(dsn, autocommit=True) as conn:
        _issue(conn, "op-race-1", home.meter.id, home.id)
        _issue(conn, "op-race-2", home.meter.id, home.id)
    got = _states(dsn, ["op-race-1", "op-race-2"],
                  lambda g: all(v[0] == "attached" for v in g.values()) and len(g) == 2)
    assert got == {"op-race-1": ("attached", first["cmd_id"]),
                   "op-race-2": ("attached", first["cmd_id"])}
    meter.ack(first["cmd_id"])
    # a close of a meter with nothing in flight goes out, once, even if issued twice at once
    other_meter = devices(other.meter.id)
    with psycopg.connect(dsn) as conn:  # one transaction: both rows reach the gateway together
        _issue(conn, "op-race-3", other.meter.id, other.id)
        _issue(conn, "op-race-4", other.meter.id, other.id)
    _, sent = other_meter.commands.get(timeout=5)
    got = _states(dsn, ["op-race-3", "op-race-4"],
                  lambda g: sorted(v[0] for v in g.values()) == ["attached", "sent"])
    assert sorted(v[0] for v in got.values()) == ["attached", "sent"]
    assert got[sent["cmd_id"]] == ("sent", None)
    loser = ({"op-race-3", "op-race-4"} - {sent["cmd_id"]}).pop()
    assert got[loser] == ("attached", sent["cmd_id"])
    other_meter.ack(sent["cmd_id"])
    # the gateway's audit rows travel with its next batch
    audit = wait_row(dsn, "SELECT actor FROM audit_log WHERE action = 'command.attached'"
                     " AND entity_id = ANY(%s)", (["op-race-1", "op-race-2", loser],),
                     cond=lambda r: len(r) == 3, what="three command.attached audit rows")
    assert audit == [("operator.one",)] * 3
    assert other_meter.commands.empty() and meter.commands.empty()
