"""Work orders: list and filter (overdue against arrive_by / resolve_by), detail with every
step and who took it, and the transitions dispatch, on_site, resolve and cancel.

A safety order (workflow.SAFETY_CAUSES) is not resolved while its household still has an
active gas alarm: the reopen of a cut valve rests on that resolution. Inspection orders for
a valve cut (`open_inspection`) are opened by the valves router.

Each transition locks the order's row (SELECT ... FOR UPDATE) for its transaction, so
concurrent requests on one order are applied one after the other: each sees the status
the previous one left, illegal ones get 409, and no step is ever lost. `expected_version`
adds an optimistic check for clients that want to act only on what they last saw.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from psycopg import AsyncConnection

from dashboard_api import pagination, workflow
from dashboard_api.deps import Conn, Engineer, Operator, State, Viewer
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.identity import Principal
from dashboard_api.params import Cursor, IdQuery, LabelQuery, Limit, row_id
from dashboard_api.queries import between, given, record, where
from dashboard_api.schemas import (
    CancelRequest,
    DispatchRequest,
    Instant,
    OnSiteRequest,
    Page,
    Priority,
    ResolveRequest,
    WorkOrderDetail,
    WorkOrderPublic,
    WorkOrderStatus,
)
from dashboard_api.valve_facts import active_gas_alarms
from gateway.core import response
from gateway.settings import ResponseSettings

router = APIRouter(prefix="/work-orders", tags=["work orders"])

WorkOrderId = Annotated[int, row_id(17)]

WORK_ORDER_COLUMNS = """w.id, w.household_id, h.community, w.cause, w.priority, w.status,
    w.title, w.opened_at, w.arrive_by, w.resolve_by, w.crew, w.findings, w.repeats,
    w.alarm_id, w.incident_id, w.cmd_id, w.version, w.updated_at, w.flagged_at, w.flag"""
_FROM = "FROM work_orders w JOIN households h ON h.id = w.household_id"
_OVERDUE = """((w.status IN ('open', 'dispatched') AND w.arrive_by < %(now)s)
               OR (w.status IN ('open', 'dispatched', 'on_site') AND w.resolve_by < %(now)s))"""
_CONFLICT_DOC: dict[int | str, dict[str, Any]] = {
    409: {"description": "Illegal transition (the detail says why) or a stale expected_version"}
}


def with_overdue(row: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    return {
        **row,
        "overdue_arrival": row["status"] in ("open", "dispatched") and row["arrive_by"] < now,
        "overdue_resolution": (row["status"] in workflow.OPEN_STATUSES and row["resolve_by"] < now),
    }


@router.get("", response_model=Page[WorkOrderPublic], summary="List work orders, newest first")
async def list_work_orders(
    conn: Conn,
    _: Viewer,
    state: State,
    status: Annotated[
        list[WorkOrderStatus] | None,
        Query(description="One or more statuses (repeat the parameter)"),
    ] = None,
    priority: Priority | None = None,
    cause: LabelQuery = None,
    overdue: Annotated[
        bool | None,
        Query(description="true: past arrive_by or resolve_by and not yet there or done"),
    ] = None,
    household_id: IdQuery = None,
    community: LabelQuery = None,
    since: Annotated[Instant | None, Query(description="opened_at >= since")] = None,
    until: Annotated[Instant | None, Query(description="opened_at < until")] = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    now = state.clock()
    params: dict[str, Any] = {"n": limit + 1, "now": now}
    conds = between("w.opened_at", since, until, params)
    conds += given(
        (
            ("priority", priority, "w.priority = %(priority)s"),
            ("cause", cause, "w.cause = %(cause)s"),
            ("household_id", household_id, "w.household_id = %(household_id)s"),
            ("community", community, "h.community = %(community)s"),
        ),
        params,
    )
    if status:
        conds.append("w.status = ANY(%(status)s)")
        params["status"] = list(status)
    if overdue is not None:
        conds.append(_OVERDUE if overdue else f"NOT {_OVERDUE}")
    conds += pagination.older_than(cursor, "w.opened_at", "w.id", params)
    rows = await (
        await conn.execute(
            f"SELECT {WORK_ORDER_COLUMNS} {_FROM} {where(conds)}"
            " ORDER BY w.opened_at DESC, w.id DESC LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["opened_at"], r["id"]))
    return {"items": [with_overdue(r, now) for r in items], "next_cursor": nxt}


async def order_detail(
    conn: AsyncConnection[Any], work_order_id: int, now: dt.datetime
) -> dict[str, Any]:
    row = await (
        await conn.execute(f"SELECT {WORK_ORDER_COLUMNS} {_FROM} WHERE w.id = %s", (work_order_id,))
    ).fetchone()
    if row is None:
        raise NotFound(f"no work order {work_order_id}")
    steps = await (
        await conn.execute(
            "SELECT id, at, actor, action, from_status, to_status, note FROM work_order_steps"
            " WHERE work_order_id = %s ORDER BY at, id",
            (work_order_id,),
        )
    ).fetchall()
    return {**with_overdue(row, now), "steps": steps}


@router.get(
    "/{work_order_id}",
    response_model=WorkOrderDetail,
    summary="A work order with every step and who took it",
)
async def get_work_order(
    work_order_id: WorkOrderId, conn: Conn, _: Viewer, state: State
) -> dict[str, Any]:
    return await order_detail(conn, work_order_id, state.clock())


async def _transition(
    conn: AsyncConnection[Any],
    work_order_id: int,
    action: str,
    who: Principal,
    now: dt.datetime,
    expected_version: int | None,
    note: str | None,
    crew: str | None = None,
    findings: str | None = None,
) -> dict[str, Any]:
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT status, version, household_id, cause FROM work_orders WHERE id = %s"
                " FOR UPDATE",
                (work_order_id,),
            )
        ).fetchone()
        if row is None:
            raise NotFound(f"no work order {work_order_id}")
        if expected_version is not None and row["version"] != expected_version:
            raise Conflict(
                f"work order {work_order_id} is at version {row['version']}, "
                f"not {expected_version}: reload it and decide again",
                current_version=row["version"],
                current_status=row["status"],
            )
        try:
            to_status = workflow.next_status(action, row["status"])
        except workflow.IllegalTransition as err:
            raise Conflict(
                str(err), current_status=row["status"], current_version=row["version"]
            ) from None
        if action == "resolve":
            why = workflow.resolve_refusal(
                row["cause"],
                row["household_id"],
                await active_gas_alarms(conn, row["household_id"]),
            )
            if why is not None:
                raise Conflict(
                    why,
                    condition="gas_alarm",
                    current_status=row["status"],
                    current_version=row["version"],
                )
        version = row["version"] + 1
        await conn.execute(
            "UPDATE work_orders SET status = %s, crew = coalesce(%s, crew),"
            " findings = coalesce(%s, findings), version = %s, updated_at = %s WHERE id = %s",
            (to_status, crew, findings, version, now, work_order_id),
        )
        step_note = findings if action == "resolve" else note
        if action == "dispatch" and crew:
            step_note = f"crew {crew}" + (f": {note}" if note else "")
        await conn.execute(
            "INSERT INTO work_order_steps (work_order_id, at, actor, action, from_status,"
            " to_status, note) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (work_order_id, now, who.username, action, row["status"], to_status, step_note),
        )
        details = {"from": row["status"], "to": to_status, "version": version}
        details.update(
            {k: v for k, v in (("crew", crew), ("note", note), ("findings", findings)) if v}
        )
        await record(
            conn,
            who.username,
            f"work_order.{action}",
            "work_order",
            work_order_id,
            details,
            event={
                "type": "work_order.changed",
                "work_order_id": work_order_id,
                "household_id": row["household_id"],
                "cause": row["cause"],
                "action": action,
                "from": row["status"],
                "to": to_status,
                "version": version,
                "by": who.username,
                "at": now.isoformat(),
            },
        )
    return await order_detail(conn, work_order_id, now)


@router.post(
    "/{work_order_id}/dispatch",
    response_model=WorkOrderDetail,
    responses=_CONFLICT_DOC,
    summary="Dispatch an open order to a crew (operator)",
)
async def dispatch(
    work_order_id: WorkOrderId, body: DispatchRequest, conn: Conn, who: Operator, state: State
) -> dict[str, Any]:
    return await _transition(
        conn,
        work_order_id,
        "dispatch",
        who,
        state.clock(),
        body.expected_version,
        body.note,
        crew=body.crew,
    )


@router.post(
    "/{work_order_id}/on-site",
    response_model=WorkOrderDetail,
    responses=_CONFLICT_DOC,
    summary="The crew is on site (engineer)",
)
async def on_site(
    work_order_id: WorkOrderId, body: OnSiteRequest, conn: Conn, who: Engineer, state: State
) -> dict[str, Any]:
    return await _transition(
        conn, work_order_id, "on_site", who, state.clock(), body.expected_version, body.note
    )


@router.post(
    "/{work_order_id}/resolve",
    response_model=WorkOrderDetail,
    responses=_CONFLICT_DOC,
    summary="Resolved, with the findings (engineer)",
)
async def resolve(
    work_order_id: WorkOrderId, body: ResolveRequest, conn: Conn, who: Engineer, state: State
) -> dict[str, Any]:
    return await _transition(
        conn,
        work_order_id,
        "resolve",
        who,
        state.clock(),
        body.expected_version,
        None,
        findings=body.findings,
    )


@router.post(
    "/{work_order_id}/cancel",
    response_model=WorkOrderDetail,
    responses=_CONFLICT_DOC,
    summary="Cancel an order that is not closed (operator)",
)
async def cancel(
    work_order_id: WorkOrderId, body: CancelRequest, conn: Conn, who: Operator, state: State
) -> dict[str, Any]:
    return await _transition(
        conn, work_order_id, "cancel", who, state.clock(), body.expected_version, body.reason
    )


INSPECTION_CAUSE = "valve_inspection"


async def open_inspection(
    conn: AsyncConnection[Any],
    meter: dict[str, Any],
    cmd_id: str | None,
    why: str,
    who: Principal,
    now: dt.datetime,
    sla: ResponseSettings,
) -> tuple[int, bool]:
    """The inspection order of a valve cut, in the caller's transaction: a new one (high
    priority), or the household's open one, linked now to this cut (one open order per
    household and cause). Returns (order id, created)."""
    arrive_by, resolve_by = response.sla_deadlines(
        response.Priority.HIGH, now, sla.emergency_arrival_s, sla.routine_repair_s
    )
    row = await (
        await conn.execute(
            "INSERT INTO work_orders (household_id, cause, priority, title, opened_at, arrive_by,"
            " resolve_by, cmd_id) VALUES (%s, %s, 'high', %s, %s, %s, %s, %s)"
            " ON CONFLICT (household_id, cause) WHERE status IN ('open', 'dispatched', 'on_site')"
            " DO UPDATE SET repeats = work_orders.repeats + 1, cmd_id = excluded.cmd_id,"
            " version = work_orders.version + 1, updated_at = excluded.opened_at"
            " RETURNING id, (xmax = 0) AS created, version",
            (
                meter["household_id"],
                INSPECTION_CAUSE,
                f"Valve of {meter['id']} cut ({why}): inspect before it may reopen",
                now,
                arrive_by,
                resolve_by,
                cmd_id,
            ),
        )
    ).fetchone()
    assert row is not None
    wo_id, created = row["id"], row["created"]
    note = f"cut {cmd_id or 'reported by the meter'}: {why}"
    await conn.execute(
        "INSERT INTO work_order_steps (work_order_id, at, actor, action, from_status,"
        " to_status, note) VALUES (%s, %s, %s, %s, NULL, %s, %s)",
        (
            wo_id,
            now,
            who.username,
            "opened" if created else "attached",
            "open" if created else None,
            note,
        ),
    )
    await record(
        conn,
        who.username,
        "work_order.open" if created else "work_order.attach",
        "work_order",
        wo_id,
        {
            "household": meter["household_id"],
            "cause": INSPECTION_CAUSE,
            "priority": "high",
            "meter_id": meter["id"],
            "cmd_id": cmd_id,
            "note": note,
        },
        event={
            "type": "work_order.opened" if created else "work_order.changed",
            "work_order_id": wo_id,
            "household_id": meter["household_id"],
            "cause": INSPECTION_CAUSE,
            "priority": "high",
            "cmd_id": cmd_id,
            "version": row["version"],
            "by": who.username,
            "at": now.isoformat(),
        },
    )
    return wo_id, created
