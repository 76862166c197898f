"""Valve commands of a meter: history, a manual close (operator), and a reopen request
(engineer) that is allowed only once the household's safety work order is resolved.

The API does not speak MQTT. It inserts the command (state 'issued') and, in the same
transaction, `NOTIFY gas_commands, '<cmd_id>'`; the gateway LISTENs there, publishes the
command to the meter and tracks its acknowledgement (sent, acked, failed, timeout) in the
row. A reopened meter still waits for the resident's button press on site.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, status
from psycopg import AsyncConnection

from dashboard_api import pagination, workflow
from dashboard_api.deps import Conn, Engineer, Operator, State, Viewer
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.identity import Principal
from dashboard_api.params import Cursor, Limit, ident
from dashboard_api.queries import notify_command, record, where
from dashboard_api.schemas import CommandAccepted, Page, ValveCommand, ValveRequest

router = APIRouter(prefix="/valves", tags=["valves"])

MeterId = Annotated[str, ident("m000042")]

SAFETY_CAUSES = ("leak", "overflow", "valve_fault")
COMMAND_COLUMNS = """cmd_id, meter_id, household_id, action, reason, alarm_id, state, attempts,
    requested_by, issued_at, sent_at, acked_at, ack_ok, ack_valve, ack_error, updated_at"""

CLOSE_NOTE = ("Command issued; the gateway sends it to the meter and records the "
              "acknowledgement. Follow its state in the command history.")
REOPEN_NOTE = ("Reopen command issued. The meter does not open by itself: the resident must "
               "press the valve button on the meter, on site, to let gas flow again.")


async def _meter(conn: AsyncConnection[Any], meter_id: str) -> dict[str, Any]:
    row = await (await conn.execute(
        "SELECT id, kind, status, household_id FROM devices WHERE id = %s",
        (meter_id,))).fetchone()
    if row is None or row["kind"] != "meter":
        raise NotFound(f"no meter {meter_id}")
    return row


async def _active_meter(conn: AsyncConnection[Any], meter_id: str) -> dict[str, Any]:
    """The meter a command is for: `Conflict` unless it is active."""
    meter = await _meter(conn, meter_id)
    if meter["status"] != "active":
        raise Conflict(f"meter {meter_id} is {meter['status']}")
    return meter


@router.get("/{meter_id}/commands", response_model=Page[ValveCommand],
            summary="A meter's valve commands, newest first")
async def commands(meter_id: MeterId, conn: Conn, _: Viewer,
                   limit: Limit = pagination.DEFAULT_LIMIT,
                   cursor: Cursor = None) -> dict[str, Any]:
    await _meter(conn, meter_id)
    params: dict[str, Any] = {"m": meter_id, "n": limit + 1}
    conds = ["meter_id = %(m)s",
             *pagination.older_than(cursor, "issued_at", "cmd_id", params, id_type=str)]
    rows = await (await conn.execute(
        f"SELECT {COMMAND_COLUMNS} FROM valve_commands {where(conds)}"
        " ORDER BY issued_at DESC, cmd_id DESC LIMIT %(n)s", params)).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["issued_at"], r["cmd_id"]))
    return {"items": items, "next_cursor": nxt}


async def _issue(conn: AsyncConnection[Any], meter: dict[str, Any], action: str, reason: str,
                 who: Principal, now: dt.datetime, alarm_id: int | None,
                 details: dict[str, Any]) -> dict[str, Any]:
    """Insert the command, audit it and wake the gateway, in the caller's transaction."""
    cmd_id = f"op-{uuid.uuid4().hex}"
    row = await (await conn.execute(
        f"""INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason,
                                        alarm_id, state, requested_by, issued_at, updated_at)
            VALUES (%s, %s, %s, %s, %s, %s, 'issued', %s, %s, %s) RETURNING {COMMAND_COLUMNS}""",
        (cmd_id, meter["id"], meter["household_id"], action, reason, alarm_id, who.username,
         now, now))).fetchone()
    assert row is not None
    await record(conn, who.username, f"valve.{action}", "valve_command", cmd_id,
                 {"meter_id": meter["id"], "household_id": meter["household_id"],
                  "reason": reason, **details},
                 event={"type": "command.requested", "cmd_id": cmd_id, "meter_id": meter["id"],
                        "household_id": meter["household_id"], "action": action,
                        "by": who.username, "at": now.isoformat()})
    await notify_command(conn, cmd_id)
    return row


@router.post("/{meter_id}/close", response_model=CommandAccepted,
             status_code=status.HTTP_202_ACCEPTED,
             summary="Close a meter's valve now (operator)")
async def close(meter_id: MeterId, body: ValveRequest, conn: Conn, who: Operator,
                state: State) -> dict[str, Any]:
    async with conn.transaction():
        meter = await _active_meter(conn, meter_id)
        row = await _issue(conn, meter, "valve_close", f"manual: {body.reason}", who,
                           state.clock(), None, {})
    return {"command": row, "note": CLOSE_NOTE}


@router.post("/{meter_id}/reopen", response_model=CommandAccepted,
             status_code=status.HTTP_202_ACCEPTED,
             summary="Request a valve reopen after a resolved safety work order (engineer)",
             responses={409: {"description": "The household's safety work order is not "
                                             "resolved (the detail says which and why)"}})
async def reopen(meter_id: MeterId, body: ValveRequest, conn: Conn, who: Engineer,
                 state: State) -> dict[str, Any]:
    async with conn.transaction():
        meter = await _active_meter(conn, meter_id)
        orders = await (await conn.execute(
            "SELECT id, cause, status, alarm_id FROM work_orders"
            " WHERE household_id = %s AND cause = ANY(%s) AND status <> 'cancelled'"
            " ORDER BY opened_at DESC, id DESC",
            (meter["household_id"], list(SAFETY_CAUSES)))).fetchall()
        still_open = [o for o in orders if o["status"] in workflow.OPEN_STATUSES]
        if still_open:
            o = still_open[0]
            raise Conflict(f"safety work order {o['id']} ({o['cause']}) is {o['status']}: "
                           "an engineer must resolve it before the valve may reopen",
                           work_order_id=o["id"])
        if not orders:
            raise Conflict(f"household {meter['household_id']} has no resolved safety work "
                           f"order ({', '.join(SAFETY_CAUSES)}): a reopen needs one")
        basis = orders[0]
        row = await _issue(conn, meter, "valve_open", f"reopen: {body.reason}", who,
                           state.clock(), basis["alarm_id"], {"work_order_id": basis["id"]})
    return {"command": row, "note": REOPEN_NOTE}
