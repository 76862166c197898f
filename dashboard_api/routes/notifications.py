"""The notification outbox: what was sent to whom, when, and whether it was delivered.
Newest first. Recipients (phone numbers, addresses) are masked for viewers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from dashboard_api import pagination
from dashboard_api.deps import Conn, Viewer
from dashboard_api.errors import NotFound
from dashboard_api.identity import Principal, Role
from dashboard_api.params import MAX_ROW_ID, Cursor, IdQuery, LabelQuery, Limit, row_id
from dashboard_api.queries import between, given, mask, where
from dashboard_api.schemas import Instant, NotificationPublic, NotificationState, Page

router = APIRouter(prefix="/notifications", tags=["notifications"])

_COLS = """id, household_id, kind, channel, recipient, body, state, attempts, created_at,
    next_attempt_at, delivered_at, last_error, alarm_id, work_order_id"""


def _shown(row: dict[str, Any], who: Principal) -> dict[str, Any]:
    return row if who.may(Role.operator) else {**row, "recipient": mask(row["recipient"])}


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
            f"SELECT {_COLS} FROM notifications {where(conds)}"
            " ORDER BY created_at DESC, id DESC LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["created_at"], r["id"]))
    return {"items": [_shown(r, who) for r in items], "next_cursor": nxt}


@router.get(
    "/{notification_id}",
    response_model=NotificationPublic,
    summary="One notification and its delivery state",
)
async def get_notification(
    notification_id: Annotated[int, row_id()], conn: Conn, who: Viewer
) -> dict[str, Any]:
    row = await (
        await conn.execute(f"SELECT {_COLS} FROM notifications WHERE id = %s", (notification_id,))
    ).fetchone()
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    return _shown(row, who)
