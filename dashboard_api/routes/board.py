"""The live board of the console's control room: every alarm that needs attention now (not
cleared, or returned to normal without anyone acknowledging it), most severe first, each
with its address, the valve command that answered it and its work order's SLA clocks; the
open incidents (a building's riser leak, one row with its households); counts by severity.
Lifecycle notices (service life, battery) are counted but kept off the board: they are
planned work, not emergencies. Shelving (ISA-18.2) takes a non-critical alarm off the
board for a set time with a reason; it comes back by itself when the time is up.

One read (a few indexed queries) per call: the console reads it whole when it opens or
reconnects, and then, for the households its live events name, only their rows
(`household_id`), so the board is never assembled from events alone.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import StringConstraints

from dashboard_api.deps import Conn, Operator, State, Viewer
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.params import row_id
from dashboard_api.queries import record
from dashboard_api.schemas import (
    IDENT_PATTERN,
    AlarmPublic,
    Board,
    IncidentDetail,
    IncidentPublic,
    ShelveRequest,
)

router = APIRouter(tags=["board"])

AlarmId = Annotated[int, row_id(7)]
IncidentId = Annotated[int, row_id(3)]

LIFECYCLE_KINDS = ("battery_low", "meter_service_life", "detector_service_life")
"""Notices of planned work: counted on the board, never shown among its alarms."""

BOARD_MAX = 5000
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}

_NEEDS_ATTENTION = "(a.cleared_at IS NULL OR a.acknowledged_at IS NULL)"

_BOARD = f"""
SELECT a.id, a.device_id, a.household_id, h.address, h.unit, h.community, h.building, a.kind,
       a.severity, a.state, a.value, a.raised_at, a.cleared_at, a.incident_id,
       a.acknowledged_by, a.acknowledged_at, a.ack_comment, a.shelved_until, a.shelved_by,
       a.shelve_reason,
       vc.cmd_id AS v_cmd_id, vc.action AS v_action, vc.state AS v_state, vc.ack_ok AS v_ack_ok,
       vc.issued_at AS v_issued_at, vc.acked_at AS v_acked_at,
       w.id AS w_id, w.status AS w_status, w.priority AS w_priority, w.cause AS w_cause,
       w.arrive_by AS w_arrive_by, w.resolve_by AS w_resolve_by, w.crew AS w_crew,
       w.assignee AS w_assignee
FROM alarms a
JOIN households h ON h.id = a.household_id
LEFT JOIN LATERAL (
    SELECT c.cmd_id, c.action, c.state, c.ack_ok, c.issued_at, c.acked_at
    FROM devices m JOIN valve_commands c ON c.meter_id = m.id
    WHERE m.household_id = a.household_id AND m.kind = 'meter'
      AND c.action IN ('valve_close', 'valve_open')
      AND c.issued_at >= a.raised_at - interval '5 seconds'
    ORDER BY c.issued_at DESC LIMIT 1) vc ON true
LEFT JOIN LATERAL (
    (SELECT w.id, w.status, w.priority, w.cause, w.arrive_by, w.resolve_by, w.crew, w.assignee
     FROM work_orders w WHERE w.alarm_id = a.id ORDER BY w.id DESC LIMIT 1)
    UNION ALL
    (SELECT w.id, w.status, w.priority, w.cause, w.arrive_by, w.resolve_by, w.crew, w.assignee
     FROM work_orders w
     WHERE w.household_id = a.household_id AND w.status IN ('open', 'dispatched', 'on_site')
     ORDER BY w.opened_at DESC LIMIT 1)
    LIMIT 1) w ON true
WHERE {_NEEDS_ATTENTION} AND a.kind <> ALL(%(lifecycle)s)
  AND (a.shelved_until IS NULL OR a.shelved_until <= %(now)s)
  {{households}}
ORDER BY CASE a.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
         (a.acknowledged_at IS NOT NULL), a.raised_at DESC, a.id DESC
LIMIT %(n)s"""

_COUNTS = f"""
SELECT count(*) FILTER (WHERE NOT lifecycle AND NOT shelved AND severity = 'critical') AS critical,
       count(*) FILTER (WHERE NOT lifecycle AND NOT shelved AND severity = 'warning') AS warning,
       count(*) FILTER (WHERE NOT lifecycle AND NOT shelved AND severity = 'info') AS info,
       count(*) FILTER (WHERE NOT lifecycle AND NOT shelved AND returned) AS returned_to_normal,
       count(*) FILTER (WHERE NOT lifecycle AND shelved) AS shelved,
       count(*) FILTER (WHERE lifecycle AND NOT returned) AS lifecycle
FROM (SELECT a.severity, a.kind = ANY(%(lifecycle)s) AS lifecycle,
             coalesce(a.shelved_until > %(now)s, false) AS shelved,
             a.cleared_at IS NOT NULL AS returned
      FROM alarms a WHERE {_NEEDS_ATTENTION}) s"""

_INCIDENTS = """
SELECT i.id, i.building, i.community, i.kind, i.opened_at, i.households,
       coalesce(array_agg(a.id ORDER BY a.raised_at) FILTER (WHERE a.id IS NOT NULL), '{}')
           AS alarm_ids
FROM incidents i LEFT JOIN alarms a ON a.incident_id = i.id
WHERE i.closed_at IS NULL
GROUP BY i.id ORDER BY i.opened_at DESC LIMIT 500"""


def valve_view(action: str, state: str, ack_ok: bool | None) -> str:
    """What the board says of a valve command: sent, confirmed, failed or escalated."""
    closing = action == "valve_close"
    if state == "acked" and ack_ok:
        return "closed" if closing else "opened"
    if state in ("failed", "timeout") or (state == "acked" and not ack_ok):
        return "failed"
    if state == "escalated":
        return "escalated"
    return "close_sent" if closing else "open_sent"


def board_row(r: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    valve = None
    if r["v_cmd_id"] is not None:
        valve = {
            "cmd_id": r["v_cmd_id"],
            "action": r["v_action"],
            "state": r["v_state"],
            "view": valve_view(r["v_action"], r["v_state"], r["v_ack_ok"]),
            "issued_at": r["v_issued_at"],
            "acked_at": r["v_acked_at"],
        }
    order = None
    if r["w_id"] is not None:
        live = r["w_status"] in ("open", "dispatched", "on_site")
        order = {
            "id": r["w_id"],
            "status": r["w_status"],
            "priority": r["w_priority"],
            "cause": r["w_cause"],
            "arrive_by": r["w_arrive_by"],
            "resolve_by": r["w_resolve_by"],
            "crew": r["w_crew"],
            "assignee": r["w_assignee"],
            "arrive_in_s": (r["w_arrive_by"] - now).total_seconds()
            if r["w_status"] in ("open", "dispatched")
            else None,
            "resolve_in_s": (r["w_resolve_by"] - now).total_seconds() if live else None,
        }
    out = {k: v for k, v in r.items() if not k.startswith(("v_", "w_"))}
    out["returned_to_normal"] = r["cleared_at"] is not None and r["acknowledged_at"] is None
    out["valve"] = valve
    out["work_order"] = order
    return out


@router.get("/board", response_model=Board, summary="The live board: what needs attention now")
async def board(
    conn: Conn,
    _: Viewer,
    state: State,
    limit: Annotated[int, Query(ge=1, le=BOARD_MAX)] = BOARD_MAX,
    household_id: Annotated[
        list[Annotated[str, StringConstraints(pattern=IDENT_PATTERN)]] | None,
        Query(
            max_length=200,
            description="Only these households' alarms (repeat the parameter): the console"
            " asks for the households its live events named, not the whole board",
        ),
    ] = None,
) -> dict[str, Any]:
    now = state.clock()
    params = {
        "lifecycle": list(LIFECYCLE_KINDS),
        "now": now,
        "n": limit + 1,
        "households": household_id,
    }
    # two texts, not `%s IS NULL OR ...`: a prepared statement's generic plan for the OR
    # form scans every open alarm even when five households are named
    only = "AND a.household_id = ANY(%(households)s::text[])" if household_id else ""
    rows = await (await conn.execute(_BOARD.replace("{households}", only), params)).fetchall()
    counts = await (await conn.execute(_COUNTS, params)).fetchone()
    incidents = await (await conn.execute(_INCIDENTS)).fetchall()
    return {
        "now": now,
        "counts": counts,
        "alarms": [board_row(r, now) for r in rows[:limit]],
        "incidents": incidents,
        "truncated": len(rows) > limit,
    }


_ALARM = """SELECT a.id, a.device_id, a.household_id, h.community, h.building, a.kind,
    a.severity, a.state, a.value, a.raised_at, a.cleared_at, a.flow_at_meter, a.incident_id,
    a.acknowledged_by, a.acknowledged_at, a.ack_comment, a.shelved_until, a.shelved_by,
    a.shelve_reason
    FROM alarms a JOIN households h ON h.id = a.household_id WHERE a.id = %s"""


@router.post(
    "/alarms/{alarm_id}/shelve",
    response_model=AlarmPublic,
    summary="Take a non-critical alarm off the board for a while, with a reason (operator)",
    responses={409: {"description": "Critical, or already cleared"}},
)
async def shelve(
    alarm_id: AlarmId, body: ShelveRequest, conn: Conn, who: Operator, state: State
) -> dict[str, Any]:
    now = state.clock()
    until = now + dt.timedelta(minutes=body.minutes)
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT severity, cleared_at, device_id, household_id FROM alarms"
                " WHERE id = %s FOR UPDATE",
                (alarm_id,),
            )
        ).fetchone()
        if row is None:
            raise NotFound(f"no alarm {alarm_id}")
        if row["severity"] == "critical":
            # a leak or an overflow stays in front of the operator until it clears
            raise Conflict(f"alarm {alarm_id} is critical: critical alarms are never shelved")
        if row["cleared_at"] is not None:
            raise Conflict(f"alarm {alarm_id} is cleared; acknowledge it instead")
        await conn.execute(
            "UPDATE alarms SET shelved_until = %s, shelved_by = %s, shelve_reason = %s"
            " WHERE id = %s",
            (until, who.username, body.reason, alarm_id),
        )
        await record(
            conn,
            who.username,
            "alarm.shelve",
            "alarm",
            alarm_id,
            {"until": until.isoformat(), "reason": body.reason},
            event={
                "type": "alarm.shelved",
                "alarm_id": alarm_id,
                "device_id": row["device_id"],
                "household_id": row["household_id"],
                "until": until.isoformat(),
                "by": who.username,
            },
        )
    out = await (await conn.execute(_ALARM, (alarm_id,))).fetchone()
    assert out is not None
    return out


@router.post(
    "/alarms/{alarm_id}/unshelve",
    response_model=AlarmPublic,
    summary="Put a shelved alarm back on the board now (operator)",
    responses={409: {"description": "Not shelved"}},
)
async def unshelve(alarm_id: AlarmId, conn: Conn, who: Operator, state: State) -> dict[str, Any]:
    now = state.clock()
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT shelved_until, device_id, household_id FROM alarms"
                " WHERE id = %s FOR UPDATE",
                (alarm_id,),
            )
        ).fetchone()
        if row is None:
            raise NotFound(f"no alarm {alarm_id}")
        if row["shelved_until"] is None or row["shelved_until"] <= now:
            raise Conflict(f"alarm {alarm_id} is not shelved")
        await conn.execute(
            "UPDATE alarms SET shelved_until = NULL WHERE id = %s",
            (alarm_id,),
        )
        await record(
            conn,
            who.username,
            "alarm.unshelve",
            "alarm",
            alarm_id,
            {},
            event={
                "type": "alarm.unshelved",
                "alarm_id": alarm_id,
                "device_id": row["device_id"],
                "household_id": row["household_id"],
                "by": who.username,
            },
        )
    out = await (await conn.execute(_ALARM, (alarm_id,))).fetchone()
    assert out is not None
    return out


_INCIDENT_COLUMNS = "id, building, community, kind, opened_at, closed_at, households"


@router.get("/incidents", response_model=list[IncidentPublic], summary="Incidents, newest first")
async def list_incidents(
    conn: Conn,
    _: Viewer,
    open: Annotated[bool | None, Query(description="true: not closed; false: closed")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    cond = "" if open is None else f"WHERE closed_at IS {'' if open else 'NOT '}NULL"
    rows = await (
        await conn.execute(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents {cond}"
            " ORDER BY opened_at DESC, id DESC LIMIT %s",
            (limit,),
        )
    ).fetchall()
    return rows


@router.get(
    "/incidents/{incident_id}",
    response_model=IncidentDetail,
    summary="An incident (a building's riser leak) with its households and their alarms",
)
async def get_incident(incident_id: IncidentId, conn: Conn, _: Viewer) -> dict[str, Any]:
    row = await (
        await conn.execute(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE id = %s", (incident_id,)
        )
    ).fetchone()
    if row is None:
        raise NotFound(f"no incident {incident_id}")
    alarms = await (
        await conn.execute(
            "SELECT a.household_id, h.address, h.unit, a.id AS alarm_id, a.kind, a.severity,"
            " a.state, a.value, a.raised_at FROM alarms a JOIN households h"
            " ON h.id = a.household_id WHERE a.incident_id = %s ORDER BY a.raised_at, a.id",
            (incident_id,),
        )
    ).fetchall()
    return {**row, "alarms": alarms}
