"""The notification outbox: what was sent to whom, when, and whether it was delivered, with
the call chain each notice walks (one attempt row per try, docs/architecture.md); an
operator's confirmation stops a chain. Newest first. Recipients (phone numbers) are masked
for viewers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from psycopg import AsyncConnection

from dashboard_api import pagination
from dashboard_api.deps import Conn, Operator, Viewer
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.identity import Principal, Role
from dashboard_api.params import MAX_ROW_ID, Cursor, IdQuery, LabelQuery, Limit, row_id
from dashboard_api.queries import between, given, mask, record, where
from dashboard_api.schemas import (
    ConfirmRequest,
    Instant,
    NotificationDetail,
    NotificationPublic,
    NotificationState,
    Page,
)

router = APIRouter(prefix="/notifications", tags=["notifications"])

NotificationId = Annotated[int, row_id(3)]

NOTIFICATION_COLUMNS = """id, household_id, kind, channel, recipient, body, state, attempts,
    created_at, next_attempt_at, delivered_at, last_error, alarm_id, work_order_id, chain, step,
    confirmed_at, confirmed_by, finished_at"""
_ATTEMPT_COLS = """id, step, step_name, channel, role, recipient, attempt, call_id, state,
    started_at, finished_at, detail"""


def _shown(row: dict[str, Any], who: Principal) -> dict[str, Any]:
    return row if who.may(Role.operator) else {**row, "recipient": mask(row["recipient"])}


async def with_attempts(
    conn: AsyncConnection[Any], rows: list[dict[str, Any]], who: Principal
) -> list[dict[str, Any]]:
    """Notices with their chain's attempts, oldest first (recipients masked for viewers)."""
    ids = [r["id"] for r in rows]
    attempts: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        got = await (
            await conn.execute(
                f"SELECT notification_id, {_ATTEMPT_COLS} FROM notification_attempts"
                " WHERE notification_id = ANY(%s) ORDER BY id",
                (ids,),
            )
        ).fetchall()
        for a in got:
            attempts[a["notification_id"]].append(_shown(a, who))
    return [{**_shown(r, who), "attempt_list": attempts[r["id"]]} for r in rows]


@router.get("", response_model=Page[NotificationPublic], summary="List notifications")
async def list_notifications(
    conn: Conn,
    who: Viewer,
    household_id: IdQuery = None,
    state: NotificationState | None = None,
    kind: LabelQuery = None,
    channel: LabelQuery = None,
    alarm_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    work_order_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    since: Annotated[Instant | None, Query(description="created_at >= since")] = None,
    until: Annotated[Instant | None, Query(description="created_at < until")] = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"n": limit + 1}
    conds = between("created_at", since, until, params)
    conds += given(
        (
            ("household_id", household_id, "household_id = %(household_id)s"),
            ("state", state, "state = %(state)s"),
            ("kind", kind, "kind = %(kind)s"),
            ("channel", channel, "channel = %(channel)s"),
            ("alarm_id", alarm_id, "alarm_id = %(alarm_id)s"),
            ("work_order_id", work_order_id, "work_order_id = %(work_order_id)s"),
        ),
        params,
    )
    conds += pagination.older_than(cursor, "created_at", "id", params)
    rows = await (
        await conn.execute(
            f"SELECT {NOTIFICATION_COLUMNS} FROM notifications {where(conds)}"
            " ORDER BY created_at DESC, id DESC LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["created_at"], r["id"]))
    return {"items": [_shown(r, who) for r in items], "next_cursor": nxt}


@router.get(
    "/{notification_id}",
    response_model=NotificationDetail,
    summary="One notification, its delivery state and its call chain's attempts",
)
async def get_notification(
    notification_id: NotificationId, conn: Conn, who: Viewer
) -> dict[str, Any]:
    row = await (
        await conn.execute(
            f"SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = %s", (notification_id,)
        )
    ).fetchone()
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    return (await with_attempts(conn, [row], who))[0]


@router.post(
    "/{notification_id}/confirm",
    response_model=NotificationDetail,
    summary="Confirm a notice for the household: its call chain stops (operator)",
    responses={409: {"description": "The chain is already over"}},
)
async def confirm_notification(
    notification_id: NotificationId, body: ConfirmRequest, conn: Conn, who: Operator
) -> dict[str, Any]:
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT id, household_id, kind, state FROM notifications WHERE id = %s FOR UPDATE",
                (notification_id,),
            )
        ).fetchone()
        if row is None:
            raise NotFound(f"no notification {notification_id}")
        if row["state"] != "pending":
            raise Conflict(f"notification {notification_id} is {row['state']}: its chain is over")
        await conn.execute(
            "UPDATE notifications SET state = 'confirmed', confirmed_at = now(),"
            " confirmed_by = %s, finished_at = now() WHERE id = %s",
            (who.username, notification_id),
        )
        await record(
            conn,
            who.username,
            "notification.confirm",
            "notification",
            notification_id,
            {"comment": body.comment, "household": row["household_id"]},
            event={
                "type": "notification.state",
                "id": notification_id,
                "household_id": row["household_id"],
                "kind": row["kind"],
                "state": "confirmed",
                "step": None,
                "channel": None,
                "attempt": 0,
                "attempt_state": None,
                "by": who.username,
            },
        )
    return await get_notification(notification_id, conn, who)
