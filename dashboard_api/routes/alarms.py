"""Alarms raised by the gateway: list and filter, detail with the readings behind each,
and acknowledgement with a comment (operator). Newest first. An alarm that returned to
normal (cleared) before anyone acknowledged it can still be acknowledged, once: it stays on
the console's board until someone has seen it (ISA-18.2)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query

from dashboard_api import pagination
from dashboard_api.deps import Conn, Operator, State, Viewer
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.params import Cursor, IdQuery, LabelQuery, Limit, row_id
from dashboard_api.queries import between, given, record, where
from dashboard_api.routes.readings import raw_readings
from dashboard_api.routes.valves import COMMAND_COLUMNS
from dashboard_api.routes.work_orders import WORK_ORDER_COLUMNS, with_overdue
from dashboard_api.schemas import (
    AckRequest,
    AlarmDetail,
    AlarmPublic,
    AlarmState,
    Instant,
    Page,
    Severity,
)

router = APIRouter(prefix="/alarms", tags=["alarms"])

AlarmId = Annotated[int, row_id(7)]

ALARM_COLUMNS = """a.id, a.device_id, a.household_id, h.community, h.building, a.kind,
    a.severity, a.state, a.value, a.raised_at, a.cleared_at, a.flow_at_meter, a.incident_id,
    a.acknowledged_by, a.acknowledged_at, a.ack_comment, a.shelved_until, a.shelved_by,
    a.shelve_reason"""
ALARM_FROM = "FROM alarms a JOIN households h ON h.id = a.household_id"


@router.get("", response_model=Page[AlarmPublic], summary="List alarms, newest first")
async def list_alarms(
    conn: Conn,
    _: Viewer,
    active: Annotated[
        bool | None,
        Query(description="true: not cleared yet (active or acknowledged); false: cleared"),
    ] = None,
    state: AlarmState | None = None,
    severity: Severity | None = None,
    kind: LabelQuery = None,
    community: LabelQuery = None,
    building: LabelQuery = None,
    household_id: IdQuery = None,
    device_id: IdQuery = None,
    since: Annotated[Instant | None, Query(description="raised_at >= since")] = None,
    until: Annotated[Instant | None, Query(description="raised_at < until")] = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"n": limit + 1}
    conds = between("a.raised_at", since, until, params)
    conds += given(
        (
            ("state", state, "a.state = %(state)s"),
            ("severity", severity, "a.severity = %(severity)s"),
            ("kind", kind, "a.kind = %(kind)s"),
            ("community", community, "h.community = %(community)s"),
            ("building", building, "h.building = %(building)s"),
            ("household_id", household_id, "a.household_id = %(household_id)s"),
            ("device_id", device_id, "a.device_id = %(device_id)s"),
        ),
        params,
    )
    if active is not None:
        conds.append("a.cleared_at IS NULL" if active else "a.cleared_at IS NOT NULL")
    conds += pagination.older_than(cursor, "a.raised_at", "a.id", params)
    rows = await (
        await conn.execute(
            f"SELECT {ALARM_COLUMNS} {ALARM_FROM} {where(conds)}"
            " ORDER BY a.raised_at DESC, a.id DESC LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["raised_at"], r["id"]))
    return {"items": items, "next_cursor": nxt}


@router.get(
    "/{alarm_id}",
    response_model=AlarmDetail,
    summary="An alarm with its evidence, the readings around it, its orders and commands",
)
async def get_alarm(
    alarm_id: AlarmId,
    conn: Conn,
    _: Viewer,
    state: State,
    window_s: Annotated[
        int,
        Query(
            ge=60,
            le=6 * 3600,
            description=("Readings from raised_at - window_s to raised_at + window_s"),
        ),
    ] = 900,
) -> dict[str, Any]:
    row = await (
        await conn.execute(
            f"SELECT {ALARM_COLUMNS}, a.evidence, d.kind AS device_kind {ALARM_FROM}"
            " JOIN devices d ON d.id = a.device_id WHERE a.id = %s",
            (alarm_id,),
        )
    ).fetchone()
    if row is None:
        raise NotFound(f"no alarm {alarm_id}")
    span = dt.timedelta(seconds=window_s)
    readings = await raw_readings(
        conn,
        row["device_kind"],
        row["device_id"],
        row["raised_at"] - span,
        row["raised_at"] + span + dt.timedelta(microseconds=1),
        min(state.settings.api.max_points, 2000),
    )
    orders = await (
        await conn.execute(
            f"SELECT {WORK_ORDER_COLUMNS} FROM work_orders w JOIN households h"
            " ON h.id = w.household_id WHERE w.alarm_id = %s ORDER BY w.id",
            (alarm_id,),
        )
    ).fetchall()
    commands = await (
        await conn.execute(
            f"SELECT {COMMAND_COLUMNS} FROM valve_commands WHERE alarm_id = %s ORDER BY issued_at",
            (alarm_id,),
        )
    ).fetchall()
    now = state.clock()
    return {
        **row,
        "readings": readings,
        "work_orders": [with_overdue(w, now) for w in orders],
        "commands": commands,
    }


@router.post(
    "/{alarm_id}/acknowledge",
    response_model=AlarmPublic,
    summary="Acknowledge an alarm with a comment, also one that returned to normal (operator)",
    responses={409: {"description": "Already acknowledged"}},
)
async def acknowledge(
    alarm_id: AlarmId, body: AckRequest, conn: Conn, who: Operator, state: State
) -> dict[str, Any]:
    now = state.clock()
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT id, state, device_id, household_id, acknowledged_by, acknowledged_at,"
                " cleared_at FROM alarms WHERE id = %s FOR UPDATE",
                (alarm_id,),
            )
        ).fetchone()
        if row is None:
            raise NotFound(f"no alarm {alarm_id}")
        if row["acknowledged_at"] is not None:
            raise Conflict(
                f"alarm {alarm_id} was acknowledged by {row['acknowledged_by']} "
                f"at {row['acknowledged_at']}"
            )
        returned = row["cleared_at"] is not None  # returned to normal: stays cleared
        await conn.execute(
            "UPDATE alarms SET state = CASE WHEN cleared_at IS NULL THEN 'acknowledged'"
            " ELSE state END, acknowledged_by = %s, acknowledged_at = %s, ack_comment = %s"
            " WHERE id = %s",
            (who.username, now, body.comment, alarm_id),
        )
        await record(
            conn,
            who.username,
            "alarm.acknowledge",
            "alarm",
            alarm_id,
            {"comment": body.comment, "returned_to_normal": returned},
            event={
                "type": "alarm.acknowledged",
                "alarm_id": alarm_id,
                "device_id": row["device_id"],
                "household_id": row["household_id"],
                "by": who.username,
                "at": now.isoformat(),
            },
        )
    out = await (
        await conn.execute(f"SELECT {ALARM_COLUMNS} {ALARM_FROM} WHERE a.id = %s", (alarm_id,))
    ).fetchone()
    assert out is not None
    return out
