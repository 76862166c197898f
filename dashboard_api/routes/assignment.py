"""Dispatch: the dispatcher's board of work orders (open ones, and those closed in the last
day) with the time left on each SLA clock; assignment of an order to an engineer's account
(not free text: the engineer then finds it under "my orders"); the engineers to choose
from; and the engineer's own orders with the household's address and devices.

Assigning an open order dispatches it (open -> dispatched, the same step as
POST /work-orders/{id}/dispatch); assigning a dispatched or on-site order hands it to
another engineer without changing its status. Either way the order's row is locked for the
transaction, the step and the audit row are written with it, and the live stream says so.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from psycopg import AsyncConnection

from dashboard_api import workflow
from dashboard_api.deps import Conn, Engineer, Operator, State, Viewer
from dashboard_api.errors import Conflict, Invalid, NotFound
from dashboard_api.identity import Role
from dashboard_api.params import LabelQuery, row_id
from dashboard_api.queries import given, record, where
from dashboard_api.schemas import (
    AssignRequest,
    DispatchBoard,
    EngineerPublic,
    MyOrder,
    OrderCard,
    Priority,
)

router = APIRouter(tags=["work orders"])

WorkOrderId = Annotated[int, row_id(17)]

CARD_COLUMNS = """w.id, w.household_id, h.address, h.community, h.building, w.cause,
    w.priority, w.status, w.title, w.opened_at, w.arrive_by, w.resolve_by, w.crew, w.assignee,
    w.findings, w.alarm_id, w.version, w.updated_at"""
_FROM = "FROM work_orders w JOIN households h ON h.id = w.household_id"
_RECENT = """(w.status IN ('open', 'dispatched', 'on_site')
              OR w.updated_at >= %(now)s - interval '1 day')"""
_ORDER = """ORDER BY CASE w.status WHEN 'open' THEN 0 WHEN 'dispatched' THEN 1
                WHEN 'on_site' THEN 2 ELSE 3 END,
            CASE w.priority WHEN 'urgent' THEN 0 WHEN 'high' THEN 1 ELSE 2 END,
            w.arrive_by, w.id"""


def card(row: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """An order with the seconds left on the clock that still runs (negative once late)."""
    status = row["status"]
    arrive = (row["arrive_by"] - now).total_seconds() if status in ("open", "dispatched") else None
    live = status in workflow.OPEN_STATUSES
    resolve = (row["resolve_by"] - now).total_seconds() if live else None
    overdue = (arrive is not None and arrive < 0) or (resolve is not None and resolve < 0)
    return {**row, "arrive_in_s": arrive, "resolve_in_s": resolve, "overdue": overdue}


@router.get(
    "/dispatch",
    response_model=DispatchBoard,
    summary="The dispatcher's board: open orders and those closed in the last day",
)
async def dispatch_board(
    conn: Conn,
    _: Viewer,
    state: State,
    community: LabelQuery = None,
    priority: Priority | None = None,
    cause: LabelQuery = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 1000,
) -> dict[str, Any]:
    now = state.clock()
    params: dict[str, Any] = {"now": now, "n": limit}
    conds = [_RECENT]
    conds += given(
        (
            ("community", community, "h.community = %(community)s"),
            ("priority", priority, "w.priority = %(priority)s"),
            ("cause", cause, "w.cause = %(cause)s"),
        ),
        params,
    )
    rows = await (
        await conn.execute(
            f"SELECT {CARD_COLUMNS} {_FROM} {where(conds)} {_ORDER} LIMIT %(n)s", params
        )
    ).fetchall()
    return {"now": now, "orders": [card(r, now) for r in rows]}


@router.get(
    "/engineers",
    response_model=list[EngineerPublic],
    summary="The accounts an order can be assigned to, with their open orders (operator)",
)
async def engineers(conn: Conn, _: Operator) -> list[dict[str, Any]]:
    rows = await (
        await conn.execute(
            "SELECT u.username, u.role, count(w.id) AS open_orders FROM users u"
            " LEFT JOIN work_orders w ON w.assignee = u.username"
            " AND w.status IN ('open', 'dispatched', 'on_site')"
            " WHERE u.role IN ('engineer', 'admin') AND NOT u.disabled"
            " GROUP BY u.username, u.role ORDER BY u.role = 'admin', u.username"
        )
    ).fetchall()
    return rows


async def _card(conn: AsyncConnection[Any], work_order_id: int, now: dt.datetime) -> dict:
    row = await (
        await conn.execute(f"SELECT {CARD_COLUMNS} {_FROM} WHERE w.id = %s", (work_order_id,))
    ).fetchone()
    if row is None:
        raise NotFound(f"no work order {work_order_id}")
    return card(row, now)


@router.post(
    "/work-orders/{work_order_id}/assign",
    response_model=OrderCard,
    summary="Assign an order to an engineer's account; an open order is dispatched (operator)",
    responses={409: {"description": "The order is closed, or a stale expected_version"}},
)
async def assign(
    work_order_id: WorkOrderId, body: AssignRequest, conn: Conn, who: Operator, state: State
) -> dict[str, Any]:
    now = state.clock()
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT status, version, household_id, cause, assignee FROM work_orders"
                " WHERE id = %s FOR UPDATE",
                (work_order_id,),
            )
        ).fetchone()
        if row is None:
            raise NotFound(f"no work order {work_order_id}")
        if body.expected_version is not None and row["version"] != body.expected_version:
            raise Conflict(
                f"work order {work_order_id} is at version {row['version']}, "
                f"not {body.expected_version}: reload it and decide again",
                current_version=row["version"],
                current_status=row["status"],
            )
        if row["status"] not in workflow.OPEN_STATUSES:
            raise Conflict(
                f"work order {work_order_id} is {row['status']}; only open orders are assigned",
                current_status=row["status"],
                current_version=row["version"],
            )
        eng = await (
            await conn.execute(
                "SELECT username, role, disabled FROM users WHERE username = %s",
                (body.engineer,),
            )
        ).fetchone()
        if eng is None or eng["disabled"] or Role[eng["role"]] < Role.engineer:
            raise Invalid(
                "engineer",
                f"{body.engineer} is not an active engineer account",
                "body",
            )
        action = "dispatch" if row["status"] == "open" else "reassign"
        to_status = "dispatched" if row["status"] == "open" else row["status"]
        version = row["version"] + 1
        await conn.execute(
            "UPDATE work_orders SET status = %s, assignee = %s, crew = coalesce(%s, crew),"
            " version = %s, updated_at = %s WHERE id = %s",
            (to_status, body.engineer, body.crew, version, now, work_order_id),
        )
        note = f"engineer {body.engineer}" + (f", crew {body.crew}" if body.crew else "")
        if body.note:
            note += f": {body.note}"
        await conn.execute(
            "INSERT INTO work_order_steps (work_order_id, at, actor, action, from_status,"
            " to_status, note) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (work_order_id, now, who.username, action, row["status"], to_status, note),
        )
        await record(
            conn,
            who.username,
            f"work_order.{action}",
            "work_order",
            work_order_id,
            {
                "from": row["status"],
                "to": to_status,
                "version": version,
                "assignee": body.engineer,
                "previous_assignee": row["assignee"],
                "crew": body.crew,
                "note": body.note,
            },
            event={
                "type": "work_order.changed",
                "work_order_id": work_order_id,
                "household_id": row["household_id"],
                "cause": row["cause"],
                "action": action,
                "from": row["status"],
                "to": to_status,
                "assignee": body.engineer,
                "version": version,
                "by": who.username,
                "at": now.isoformat(),
            },
        )
    return await _card(conn, work_order_id, now)


@router.get(
    "/me/work-orders",
    response_model=list[MyOrder],
    summary="My orders: assigned to me, open first, with the household's devices (engineer)",
)
async def my_orders(conn: Conn, who: Engineer, state: State) -> list[dict[str, Any]]:
    now = state.clock()
    rows = await (
        await conn.execute(
            f"SELECT {CARD_COLUMNS} {_FROM} WHERE w.assignee = %(me)s AND {_RECENT}"
            f" {_ORDER} LIMIT 200",
            {"me": who.username, "now": now},
        )
    ).fetchall()
    households = sorted({r["household_id"] for r in rows})
    devices: dict[str, list[dict[str, Any]]] = {h: [] for h in households}
    if households:
        for d in await (
            await conn.execute(
                "SELECT id, kind, model, household_id FROM devices"
                " WHERE household_id = ANY(%s) AND status = 'active' ORDER BY kind, id",
                (households,),
            )
        ).fetchall():
            devices[d["household_id"]].append(d)
    out = []
    for r in rows:
        mine = devices[r["household_id"]]
        meter = next((d["id"] for d in mine if d["kind"] == "meter"), None)
        out.append({**card(r, now), "devices": mine, "meter_id": meter})
    return out
