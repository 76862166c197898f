"""How a valve decision of dashboard_api.routes.valves is carried out in the database, apart
from the router so that it stays a list of routes: `decide` runs a decision (the account's
rate check, then the work in a savepoint; a refusal is rolled back but audited and committed,
then answered as 409 or 429), `issue` inserts a command, audits it and wakes the gateway
(`NOTIFY gas_commands`), and `request_for_supervisor` holds the resolver's own reopen for a
second person. The facts and locks are dashboard_api.valve_facts'; the judgements are
dashboard_api.valve_policy's.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from psycopg import AsyncConnection

from dashboard_api import valve_facts, valve_policy
from dashboard_api.errors import ApiError, Conflict, TooManyRequests
from dashboard_api.identity import Principal
from dashboard_api.queries import notify_command, record
from dashboard_api.schemas import ValveRequest
from dashboard_api.valve_policy import Refused
from gateway.settings import ApiSettings

T = TypeVar("T")

# a command as the API answers it (schemas.ValveCommand); routes.alarms reads it via routes.valves
COMMAND_COLUMNS = """cmd_id, meter_id, household_id, action, reason, alarm_id, state, attempts,
    requested_by, issued_at, sent_at, acked_at, ack_ok, ack_valve, ack_error, updated_at,
    attached_to"""


def refusal(err: Refused) -> ApiError:
    """The problem a refusal is answered with: its condition and context as extra members;
    429 with Retry-After for the hard rate limit, 409 for every other condition."""
    extra = {"condition": err.condition, **err.context}
    if err.status == 429:
        return TooManyRequests(
            err.message, headers={"Retry-After": str(err.retry_after_s)}, **extra
        )
    return Conflict(err.message, **extra)


async def decide(
    conn: AsyncConnection[Any],
    who: Principal,
    meter_id: str,
    request: str,
    body: ValveRequest,
    counted: bool,
    work: Callable[[bool], Awaitable[T]],
    limits: ApiSettings,
) -> T:
    """Run `work(mass_action)` in a savepoint, after the account's rate check when the
    request is `counted`. A refusal rolls the work back but is itself audited and committed,
    then answered."""
    refused: Refused | None = None
    async with conn.transaction():
        try:
            mass = False
            if counted:
                await valve_facts.lock_account(conn, who.username)
                db_now, recent = await valve_facts.recent_actions(conn, who.username)
                mass = valve_policy.judge_rate(
                    recent,
                    db_now,
                    body.confirm_mass_action,
                    body.reason,
                    threshold=limits.valve_mass_action_threshold,
                    limit=limits.valve_rate_limit_per_minute,
                    reason_min_chars=limits.valve_mass_reason_min_chars,
                )
            async with conn.transaction():
                return await work(mass)
        except Refused as err:
            refused = err
            await record(
                conn,
                who.username,
                "valve.refused",
                "device",
                meter_id,
                {
                    "request": request,
                    "condition": err.condition,
                    "detail": err.message,
                    "reason": body.reason,
                    "confirm_mass_action": body.confirm_mass_action,
                },
            )
    assert refused is not None
    raise refusal(refused) from None


async def issue(
    conn: AsyncConnection[Any],
    meter: dict[str, Any],
    action: str,
    reason: str,
    who: Principal,
    now: dt.datetime,
    alarm_id: int | None,
    details: dict[str, Any],
) -> dict[str, Any]:
    """Insert the command, audit it and wake the gateway, in the caller's transaction."""
    cmd_id = f"op-{uuid.uuid4().hex}"
    row = await (
        await conn.execute(
            f"""INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason,
                                        alarm_id, state, requested_by, issued_at, updated_at)
            VALUES (%s, %s, %s, %s, %s, %s, 'issued', %s, %s, %s) RETURNING {COMMAND_COLUMNS}""",
            (
                cmd_id,
                meter["id"],
                meter["household_id"],
                action,
                reason,
                alarm_id,
                who.username,
                now,
                now,
            ),
        )
    ).fetchone()
    assert row is not None
    await record(
        conn,
        who.username,
        f"valve.{action}",
        "valve_command",
        cmd_id,
        {
            "meter_id": meter["id"],
            "household_id": meter["household_id"],
            "reason": reason,
            **details,
        },
        event={
            "type": "command.requested",
            "cmd_id": cmd_id,
            "meter_id": meter["id"],
            "household_id": meter["household_id"],
            "action": action,
            "by": who.username,
            "at": now.isoformat(),
        },
    )
    await notify_command(conn, cmd_id)
    return row


async def request_for_supervisor(
    conn: AsyncConnection[Any],
    meter: dict[str, Any],
    facts: valve_policy.ReopenFacts,
    grant: valve_policy.Grant,
    body: ValveRequest,
    who: Principal,
    now: dt.datetime,
) -> dict[str, Any]:
    """The resolver's own reopen: held as the meter's pending request (the same one when it
    is asked for again)."""
    cut = facts.cut
    assert cut is not None
    existing = await valve_facts.pending_reopen(conn, meter["id"])
    if existing is not None:
        if (existing["requested_by"], existing["cut_cmd_id"], existing["cut_at"]) == (
            who.username,
            cut.cmd_id,
            cut.at,
        ):
            return existing
        await conn.execute(
            "UPDATE valve_reopen_requests SET status = 'superseded', decided_at = %s,"
            " decision_note = %s WHERE id = %s",
            (now, f"superseded by a newer request of {who.username}", existing["id"]),
        )
    row = await (
        await conn.execute(
            "INSERT INTO valve_reopen_requests (meter_id, household_id, cut_cmd_id, cut_at,"
            " work_order_id, resolved_by, requested_by, reason, requested_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            f" RETURNING {valve_facts.REQUEST_COLUMNS}",
            (
                meter["id"],
                meter["household_id"],
                cut.cmd_id,
                cut.at,
                grant.basis.id,
                grant.basis.resolved_by,
                who.username,
                body.reason,
                now,
            ),
        )
    ).fetchone()
    assert row is not None
    await record(
        conn,
        who.username,
        "valve.reopen_requested",
        "valve_reopen_request",
        row["id"],
        {
            "meter_id": meter["id"],
            "household_id": meter["household_id"],
            "work_order_id": grant.basis.id,
            "cut_cmd_id": cut.cmd_id,
            "reason": body.reason,
        },
        event={
            "type": "valve.reopen_pending",
            "request_id": row["id"],
            "meter_id": meter["id"],
            "household_id": meter["household_id"],
            "by": who.username,
            "at": now.isoformat(),
        },
    )
    return row
