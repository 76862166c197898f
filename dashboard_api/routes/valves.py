"""Valve commands of a meter: history, a manual close (operator), a reopen (engineer) held by
the interlock of dashboard_api.valve_policy, its supervisor's confirmation (admin), and the
inspection order that gives any cut a way back.

The API does not speak MQTT. It inserts the command (state 'issued') and, in the same
transaction, `NOTIFY gas_commands, '<cmd_id>'`; the gateway LISTENs there, publishes the
command to the meter and tracks its acknowledgement (sent, acked, failed, timeout) in the
row. A reopened meter still waits for the resident's button press on site.

Authority, each decision under the meter's row lock (and the caller's account lock):
* close: one close per meter in flight; a second close while one is issued or sent joins
  it (no new command, `attached: true`). A new manual close opens, in its transaction, a
  high-priority `valve_inspection` order linked to the command (work_orders.cmd_id).
* reopen: (a) no active gas alarm and no open safety order, (b) a safety order resolved by
  an engineer since the latest cut, (c) a second person: requested by someone other than
  the resolver, or held as a pending request (`/reopen-requests`) that an admin other than
  the resolver confirms.
* the way back from a manual close, or from a cut with no order (the meter closed itself,
  or a command whose order was lost): the cut's inspection order (opened by the close, or
  by an engineer with POST /valves/{meter}/inspection) -> dispatched -> on site -> resolved
  by an engineer -> someone else requests the reopen (or the resolver requests it and a
  supervisor confirms) -> the resident presses the meter's button.
* mass actions: past `api.valve_mass_action_threshold` actions a minute (default 10) an
  account must send `confirm_mass_action` with a reason; at `api.valve_rate_limit_per_minute`
  (default 30) it gets 429.
Every accepted or refused request is in the audit trail (refusals as `valve.refused`). How a
decision runs and a command is issued is dashboard_api.valve_commands'; this module is the routes.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response, status
from psycopg import AsyncConnection

from dashboard_api import pagination, valve_commands, valve_facts, valve_policy
from dashboard_api.deps import Admin, Conn, Engineer, Operator, State, Viewer
from dashboard_api.errors import NotFound
from dashboard_api.params import Cursor, Limit, ident, row_id
from dashboard_api.queries import record, where
from dashboard_api.routes import work_orders
from dashboard_api.schemas import (
    CommandAccepted,
    InspectionOpened,
    Page,
    ReopenPending,
    ReopenRequestPublic,
    ValveCommand,
    ValveRequest,
)
from dashboard_api.valve_commands import COMMAND_COLUMNS
from dashboard_api.valve_policy import Refused
from dashboard_api.workflow import BLOCKING_CAUSES, OPEN_STATUSES

router = APIRouter(prefix="/valves", tags=["valves"])

MeterId = Annotated[str, ident("m000042")]
RequestId = Annotated[int, row_id(3)]

CLOSE_NOTE = (
    "Command issued; the gateway sends it to the meter and records the "
    "acknowledgement. Follow its state in the command history. Inspection order {wo} "
    "answers for this cut: an engineer resolves it before the valve may reopen."
)
ATTACHED_NOTE = (
    "A close of this meter was already in flight (command {cmd}, {state}): this "
    "request joined it and no second command was sent."
)
REOPEN_NOTE = (
    "Reopen command issued. The meter does not open by itself: the resident must "
    "press the valve button on the meter, on site, to let gas flow again."
)
PENDING_NOTE = (
    "You resolved work order {wo} yourself, so the reopen waits for a second "
    "person: a supervisor (admin) other than you confirms it with POST "
    "/valves/{meter}/reopen-requests/{req}/confirm. Then the resident presses the "
    "valve button on the meter, on site."
)
_REFUSALS: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "A condition of valve authority failed: `condition` names it and "
        "the detail says what to do"
    },
    429: {
        "description": "The account's valve actions are over the hard per-minute limit; "
        "see Retry-After"
    },
}


async def _meter(conn: AsyncConnection[Any], meter_id: str) -> dict[str, Any]:
    row = await (
        await conn.execute(
            "SELECT id, kind, status, household_id FROM devices WHERE id = %s", (meter_id,)
        )
    ).fetchone()
    if row is None or row["kind"] != "meter":
        raise NotFound(f"no meter {meter_id}")
    return row


async def _locked_meter(conn: AsyncConnection[Any], meter_id: str) -> dict[str, Any]:
    """The meter a decision is about, locked until the decision commits."""
    meter = await valve_facts.lock_meter(conn, meter_id)
    if meter is None or meter["kind"] != "meter":
        raise NotFound(f"no meter {meter_id}")
    if meter["status"] != "active":
        raise Refused(
            "meter_retired", f"meter {meter_id} is {meter['status']}: it takes no commands"
        )
    return meter


@router.get(
    "/{meter_id}/commands",
    response_model=Page[ValveCommand],
    summary="A meter's valve commands, newest first",
)
async def commands(
    meter_id: MeterId,
    conn: Conn,
    _: Viewer,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    await _meter(conn, meter_id)
    params: dict[str, Any] = {"m": meter_id, "n": limit + 1}
    conds = [
        "meter_id = %(m)s",
        *pagination.older_than(cursor, "issued_at", "cmd_id", params, id_type=str),
    ]
    rows = await (
        await conn.execute(
            f"SELECT {COMMAND_COLUMNS} FROM valve_commands {where(conds)}"
            " ORDER BY issued_at DESC, cmd_id DESC LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["issued_at"], r["cmd_id"]))
    return {"items": items, "next_cursor": nxt}


@router.post(
    "/{meter_id}/close",
    response_model=CommandAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_REFUSALS,
    summary="Close a meter's valve now, or join the close in flight (operator)",
)
async def close(
    meter_id: MeterId, body: ValveRequest, conn: Conn, who: Operator, state: State
) -> dict[str, Any]:
    async def work(mass: bool) -> dict[str, Any]:
        meter = await _locked_meter(conn, meter_id)
        now = state.clock()
        current = await valve_facts.open_command(conn, meter_id, "valve_close", COMMAND_COLUMNS)
        if current is not None:
            wo = await (
                await conn.execute(
                    "SELECT id FROM work_orders WHERE cmd_id = %s ORDER BY id DESC LIMIT 1",
                    (current["cmd_id"],),
                )
            ).fetchone()
            await record(
                conn,
                who.username,
                "valve.close_attached",
                "valve_command",
                current["cmd_id"],
                {
                    "meter_id": meter_id,
                    "household_id": meter["household_id"],
                    "reason": body.reason,
                    "mass_action": mass,
                },
                event={
                    "type": "command.attached",
                    "cmd_id": current["cmd_id"],
                    "meter_id": meter_id,
                    "household_id": meter["household_id"],
                    "by": who.username,
                    "at": now.isoformat(),
                },
            )
            return {
                "command": current,
                "attached": True,
                "work_order_id": wo and wo["id"],
                "note": ATTACHED_NOTE.format(cmd=current["cmd_id"], state=current["state"]),
            }
        row = await valve_commands.issue(
            conn,
            meter,
            "valve_close",
            f"manual: {body.reason}",
            who,
            now,
            None,
            {"mass_action": mass},
        )
        wo_id, _ = await work_orders.open_inspection(
            conn,
            meter,
            row["cmd_id"],
            f"closed manually by {who.username}: {body.reason}",
            who,
            now,
            state.settings.response,
        )
        return {"command": row, "work_order_id": wo_id, "note": CLOSE_NOTE.format(wo=wo_id)}

    return await valve_commands.decide(
        conn, who, meter_id, "close", body, True, work, state.settings.api
    )


@router.post(
    "/{meter_id}/reopen",
    response_model=CommandAccepted | ReopenPending,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_REFUSALS,
    summary="Request a valve reopen after the cut's safety order is resolved "
    "(engineer); the resolver's own request waits for a supervisor",
)
async def reopen(
    meter_id: MeterId, body: ValveRequest, conn: Conn, who: Engineer, state: State
) -> dict[str, Any]:
    async def work(mass: bool) -> dict[str, Any]:
        meter = await _locked_meter(conn, meter_id)
        facts = await valve_facts.reopen_facts(conn, meter)
        grant = valve_policy.judge_reopen(facts, who.username)
        now = state.clock()
        if grant.needs_supervisor:
            req = await valve_commands.request_for_supervisor(
                conn, meter, facts, grant, body, who, now
            )
            return {
                "request": req,
                "note": PENDING_NOTE.format(wo=grant.basis.id, meter=meter_id, req=req["id"]),
            }
        basis = grant.basis
        assert facts.cut is not None
        row = await valve_commands.issue(
            conn,
            meter,
            "valve_open",
            f"reopen: {body.reason}",
            who,
            now,
            basis.alarm_id,
            {
                "work_order_id": basis.id,
                "resolved_by": basis.resolved_by,
                "cut_cmd_id": facts.cut.cmd_id,
                "mass_action": mass,
            },
        )
        await conn.execute(
            "UPDATE valve_reopen_requests SET status = 'superseded', decided_by = %s,"
            " decided_at = %s, decision_note = %s WHERE meter_id = %s AND status = 'pending'",
            (who.username, now, f"reopened by {who.username} ({row['cmd_id']})", meter_id),
        )
        return {"command": row, "note": REOPEN_NOTE}

    return await valve_commands.decide(
        conn, who, meter_id, "reopen", body, True, work, state.settings.api
    )


@router.post(
    "/{meter_id}/reopen-requests/{request_id}/confirm",
    response_model=CommandAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_REFUSALS,
    summary="Confirm a pending reopen as the second person (admin, not its resolver)",
)
async def confirm_reopen(
    meter_id: MeterId,
    request_id: RequestId,
    body: ValveRequest,
    conn: Conn,
    who: Admin,
    state: State,
) -> dict[str, Any]:
    async def work(mass: bool) -> dict[str, Any]:
        meter = await _locked_meter(conn, meter_id)
        req = await valve_facts.pending_reopen(conn, meter_id, request_id)
        if req is None:
            raise NotFound(f"no reopen request {request_id} for meter {meter_id}")
        facts = await valve_facts.reopen_facts(conn, meter)
        basis = valve_policy.judge_confirmation(facts, valve_facts.as_pending(req), who.username)
        now = state.clock()
        row = await valve_commands.issue(
            conn,
            meter,
            "valve_open",
            f"reopen: {req['reason']}",
            who,
            now,
            basis.alarm_id,
            {
                "work_order_id": basis.id,
                "resolved_by": basis.resolved_by,
                "request_id": request_id,
                "requested_by": req["requested_by"],
                "cut_cmd_id": req["cut_cmd_id"],
                "confirmation": body.reason,
                "mass_action": mass,
            },
        )
        await conn.execute(
            "UPDATE valve_reopen_requests SET status = 'confirmed', decided_by = %s,"
            " decided_at = %s, decision_note = %s, cmd_id = %s WHERE id = %s",
            (who.username, now, body.reason, row["cmd_id"], request_id),
        )
        return {"command": row, "note": REOPEN_NOTE}

    return await valve_commands.decide(
        conn, who, meter_id, "confirm_reopen", body, True, work, state.settings.api
    )


@router.get(
    "/{meter_id}/reopen-requests",
    response_model=Page[ReopenRequestPublic],
    summary="A meter's reopen requests held for a second person, newest first",
)
async def reopen_requests(
    meter_id: MeterId,
    conn: Conn,
    _: Viewer,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    await _meter(conn, meter_id)
    params: dict[str, Any] = {"m": meter_id, "n": limit + 1}
    conds = ["meter_id = %(m)s", *pagination.older_than(cursor, "requested_at", "id", params)]
    rows = await (
        await conn.execute(
            f"SELECT {valve_facts.REQUEST_COLUMNS} FROM valve_reopen_requests {where(conds)}"
            " ORDER BY requested_at DESC, id DESC LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["requested_at"], r["id"]))
    return {"items": items, "next_cursor": nxt}


@router.post(
    "/{meter_id}/inspection",
    response_model=InspectionOpened,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {
            "model": InspectionOpened,
            "description": "The household's open inspection order, linked now to this cut",
        },
        **_REFUSALS,
    },
    summary="Open the inspection order of the meter's latest cut (engineer)",
)
async def inspection(
    meter_id: MeterId,
    body: ValveRequest,
    conn: Conn,
    who: Engineer,
    state: State,
    response: Response,
) -> dict[str, Any]:
    """For a cut no order answers for (the meter closed itself, or the order of its command
    was cancelled or lost): the order whose resolution lets the valve reopen."""

    async def work(_: bool) -> dict[str, Any]:
        meter = await _locked_meter(conn, meter_id)
        cut = await valve_facts.latest_cut(conn, meter_id)
        if cut is None:
            raise Refused(
                "no_cut",
                f"meter {meter_id} has no recorded cut: no close command "
                "and no report of its valve closed; nothing to inspect",
            )
        for o in await valve_facts.safety_orders(conn, meter["household_id"]):
            if (
                o.cause in BLOCKING_CAUSES
                and o.status in OPEN_STATUSES
                and o.cause != work_orders.INSPECTION_CAUSE
            ):
                raise Refused(
                    "open_order",
                    f"work order {o.id} ({o.cause}) is {o.status} for household "
                    f"{meter['household_id']}: resolve or cancel that one first; an "
                    "inspection order is for a cut no order answers for",
                    work_order_id=o.id,
                    current_status=o.status,
                )
        now = state.clock()
        wo_id, created = await work_orders.open_inspection(
            conn,
            meter,
            cut.cmd_id,
            f"inspection asked by {who.username}: {body.reason}",
            who,
            now,
            state.settings.response,
        )
        return {
            "work_order": await work_orders.order_detail(conn, wo_id, now),
            "created": created,
            "note": (
                f"Inspection order {wo_id} answers for {cut.describe()}: an "
                "engineer resolves it on site, then someone else requests the "
                "reopen (or its resolver does, and a supervisor confirms)."
            ),
        }

    result = await valve_commands.decide(
        conn, who, meter_id, "inspection", body, False, work, state.settings.api
    )
    if not result["created"]:
        response.status_code = status.HTTP_200_OK
    return result
