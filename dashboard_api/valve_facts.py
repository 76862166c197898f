"""What the database says about a meter's valve, for dashboard_api.valve_policy to judge: its
latest cut, the household's gas alarms and safety orders, a pending reopen, and an account's
recent valve actions; and the locks that make each judgement hold until its commit.

Locks, always taken in this order so that two requests never wait on each other in a cycle:
the account's advisory lock (its actions are counted one request at a time), then the
meter's devices row `FOR NO KEY UPDATE` (one valve decision per meter at a time). NO KEY
UPDATE rather than UPDATE: it conflicts with itself, which is all the serialisation needs,
but not with the KEY SHARE locks the gateway's own inserts take on that row (readings'
device_state, its commands), so the hot path never waits for an operator.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg import AsyncConnection

from dashboard_api import valve_policy, workflow
from dashboard_api.valve_policy import Cut, PendingReopen, ReopenFacts, SafetyOrder
from dashboard_api.workflow import ActiveAlarm

_ACCOUNT_LOCK = "valve-actions:"


async def lock_account(conn: AsyncConnection[Any], username: str) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_ACCOUNT_LOCK + username,)
    )


async def recent_actions(
    conn: AsyncConnection[Any], username: str, window_s: float = valve_policy.WINDOW_S
) -> tuple[dt.datetime, list[dt.datetime]]:
    """(the database's now, when the account's counted valve actions of the window were)."""
    rows = await (
        await conn.execute(
            "SELECT now() AS now, a.at FROM (SELECT 1) one LEFT JOIN audit_log a"
            " ON a.actor = %s AND a.action = ANY(%s) AND a.at > now() - make_interval(secs => %s)",
            (username, list(valve_policy.COUNTED_ACTIONS), window_s),
        )
    ).fetchall()
    return rows[0]["now"], [r["at"] for r in rows if r["at"] is not None]


async def lock_meter(conn: AsyncConnection[Any], meter_id: str) -> dict[str, Any] | None:
    row: dict[str, Any] | None = await (
        await conn.execute(
            "SELECT id, kind, status, household_id FROM devices WHERE id = %s FOR NO KEY UPDATE",
            (meter_id,),
        )
    ).fetchone()
    return row


async def open_command(
    conn: AsyncConnection[Any], meter_id: str, action: str, columns: str
) -> dict[str, Any] | None:
    """The meter's command of this action still in flight (issued or sent), if any."""
    row: dict[str, Any] | None = await (
        await conn.execute(
            f"SELECT {columns} FROM valve_commands WHERE meter_id = %s AND action = %s"
            " AND state IN ('issued', 'sent') ORDER BY issued_at DESC, cmd_id DESC LIMIT 1",
            (meter_id, action),
        )
    ).fetchone()
    return row


async def latest_cut(conn: AsyncConnection[Any], meter_id: str) -> Cut | None:
    cmd = await (
        await conn.execute(
            "SELECT cmd_id, issued_at, requested_by FROM valve_commands WHERE meter_id = %s"
            " AND action = 'valve_close' AND state <> 'attached'"
            " ORDER BY issued_at DESC, cmd_id DESC LIMIT 1",
            (meter_id,),
        )
    ).fetchone()
    command = Cut(cmd["issued_at"], cmd["cmd_id"], cmd["requested_by"]) if cmd else None
    seen = await (
        await conn.execute(
            "SELECT (SELECT time FROM meter_readings WHERE device_id = %(m)s AND valve = 0"
            "        ORDER BY time DESC LIMIT 1) AS last_open",
            {"m": meter_id},
        )
    ).fetchone()
    last_open = seen["last_open"] if seen else None
    closed = await (
        await conn.execute(
            "SELECT time FROM meter_readings WHERE device_id = %s AND valve = 1"
            " AND time > coalesce(%s, '-infinity'::timestamptz) ORDER BY time LIMIT 1",
            (meter_id, last_open),
        )
    ).fetchone()
    return valve_policy.choose_cut(command, last_open, closed["time"] if closed else None)


async def active_gas_alarms(
    conn: AsyncConnection[Any], household_id: str
) -> tuple[ActiveAlarm, ...]:
    rows = await (
        await conn.execute(
            "SELECT id, kind, state, raised_at FROM alarms WHERE household_id = %s"
            " AND cleared_at IS NULL AND kind = ANY(%s) ORDER BY raised_at DESC, id DESC",
            (household_id, list(workflow.GAS_ALARM_KINDS)),
        )
    ).fetchall()
    return tuple(ActiveAlarm(r["id"], r["kind"], r["state"], r["raised_at"]) for r in rows)


async def _last_cut_alarm(conn: AsyncConnection[Any], household_id: str) -> ActiveAlarm | None:
    r = await (
        await conn.execute(
            "SELECT id, kind, state, raised_at FROM alarms WHERE household_id = %s"
            " AND kind = ANY(%s) ORDER BY raised_at DESC, id DESC LIMIT 1",
            (household_id, list(workflow.CUT_ALARM_KINDS)),
        )
    ).fetchone()
    return ActiveAlarm(r["id"], r["kind"], r["state"], r["raised_at"]) if r else None


async def safety_orders(conn: AsyncConnection[Any], household_id: str) -> tuple[SafetyOrder, ...]:
    """The household's blocking orders, open ones first, with who resolved each and when.
    An order of a close that the gateway attached to its own close in flight answers for
    that one."""
    rows = await (
        await conn.execute(
            "SELECT w.id, w.cause, w.status, coalesce(c.attached_to, w.cmd_id) AS cmd_id,"
            "       w.alarm_id, w.updated_at, s.actor AS resolved_by, s.at AS resolved_at,"
            "       u.role AS resolver_role"
            " FROM work_orders w"
            " LEFT JOIN valve_commands c ON c.cmd_id = w.cmd_id"
            " LEFT JOIN LATERAL (SELECT actor, at FROM work_order_steps st"
            "                    WHERE st.work_order_id = w.id AND st.action = 'resolve'"
            "                    ORDER BY st.at DESC, st.id DESC LIMIT 1) s ON true"
            " LEFT JOIN users u ON u.username = s.actor"
            " WHERE w.household_id = %s AND w.cause = ANY(%s)"
            " ORDER BY (w.status = ANY(%s)) DESC, w.opened_at DESC, w.id DESC LIMIT 100",
            (household_id, list(workflow.BLOCKING_CAUSES), list(workflow.OPEN_STATUSES)),
        )
    ).fetchall()
    return tuple(
        SafetyOrder(
            r["id"],
            r["cause"],
            r["status"],
            r["cmd_id"],
            r["updated_at"],
            r["resolved_by"],
            r["resolved_at"],
            r["resolver_role"],
            r["alarm_id"],
        )
        for r in rows
    )


async def reopen_facts(conn: AsyncConnection[Any], meter: dict[str, Any]) -> ReopenFacts:
    household = meter["household_id"]
    in_flight = await open_command(conn, meter["id"], "valve_open", "cmd_id")
    return ReopenFacts(
        meter_id=meter["id"],
        household_id=household,
        cut=await latest_cut(conn, meter["id"]),
        gas_alarms=await active_gas_alarms(conn, household),
        last_cut_alarm=await _last_cut_alarm(conn, household),
        orders=await safety_orders(conn, household),
        reopen_in_flight=in_flight["cmd_id"] if in_flight else None,
    )


REQUEST_COLUMNS = """id, meter_id, household_id, cut_cmd_id, cut_at, work_order_id,
    resolved_by, requested_by, reason, requested_at, status, decided_by, decided_at,
    decision_note, cmd_id"""


async def pending_reopen(
    conn: AsyncConnection[Any], meter_id: str, request_id: int | None = None
) -> dict[str, Any] | None:
    """A reopen request of the meter (by id, or the pending one), locked for this decision."""
    cond = "status = 'pending'" if request_id is None else "id = %s"
    params: tuple[Any, ...] = (meter_id,) if request_id is None else (meter_id, request_id)
    row: dict[str, Any] | None = await (
        await conn.execute(
            f"SELECT {REQUEST_COLUMNS} FROM valve_reopen_requests WHERE meter_id = %s AND {cond}"
            " FOR UPDATE",
            params,
        )
    ).fetchone()
    return row


def as_pending(row: dict[str, Any]) -> PendingReopen:
    return PendingReopen(
        row["id"], row["status"], row["requested_by"], row["cut_cmd_id"], row["cut_at"]
    )
