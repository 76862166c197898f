"""Operators' valve commands as the API leaves them: rows of valve_commands in state 'issued'.

The gateway's listener and the partition workers both pick them up: each hands a command to
its pipeline, which sends it unless the same action is already in flight for that meter; the
row is then marked 'attached' to the command in flight, so a meter never has two closes on
the wire.
"""

from __future__ import annotations

from typing import Any

import psycopg

from gateway.core.commands import ValveCommand

__all__ = ["attach", "issued_commands"]

_ISSUED_SQL = (
    "SELECT cmd_id, meter_id, household_id, action, reason, requested_by,"
    " extract(epoch FROM issued_at) FROM valve_commands WHERE state = 'issued'"
    " ORDER BY issued_at"
)
_ATTACH_SQL = (
    "UPDATE valve_commands SET state = 'attached', attached_to = %s,"
    " updated_at = now() WHERE cmd_id = %s AND state = 'issued'"
)


async def issued_commands(conn: psycopg.AsyncConnection[Any]) -> list[ValveCommand]:
    """Every command still 'issued', oldest first."""
    rows = await (await conn.execute(_ISSUED_SQL)).fetchall()
    return [
        ValveCommand(
            cmd_id=cmd_id,
            meter_id=meter_id,
            household_id=hh,
            action=action,
            reason=reason,
            requested_by=by,
            issued_at=float(issued),
        )
        for cmd_id, meter_id, hh, action, reason, by, issued in rows
    ]


async def attach(conn: psycopg.AsyncConnection[Any], cmd_id: str, in_flight: str) -> None:
    """Marks `cmd_id` as attached to the command `in_flight` for the same meter and action."""
    await conn.execute(_ATTACH_SQL, (in_flight, cmd_id))
