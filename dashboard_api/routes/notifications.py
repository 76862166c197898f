"""The notification outbox: what was sent to whom, when, and whether it was delivered.
Newest first. Recipients (phone numbers, addresses) are masked for viewers."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from dashboard_api import pagination
from dashboard_api.deps import Conn, Viewer
from dashboard_api.errors import Invalid, NotFound
from dashboard_api.identity import Principal, Role
from dashboard_api.queries import given, mask, where
from dashboard_api.schemas import Instant, NotificationPublic, NotificationState, Page

router = APIRouter(prefix="/notifications", tags=["notifications"])

LabelQuery = Annotated[str | None, Query(min_length=1, max_length=100,
                                          pattern=r"^[^\x00-\x1f\x7f]+$")]
IdQuery = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Limit = Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512)]

_COLS = """id, household_id, kind, channel, recipient, body, state, attempts, created_at,
    next_attempt_at, delivered_at, last_error, alarm_id, work_order_id"""


def _shown(row: dict[str, Any], who: Principal) -> dict[str, Any]:
    return row if who.may(Role.operator) else {**row, "recipient": mask(row["recipient"])}


@router.get("", response_model=Page[NotificationPublic], summary="List notifications")
async def list_notifications(
        conn: Conn, who: Viewer, household_id: IdQuery = None,
        state: NotificationState | None = None, kind: LabelQuery = None,
        channel: LabelQuery = None,
        alarm_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        work_order_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        since: Annotated[Instant | None, Query(description="created_at >= since")] = None,
        until: Annotated[Instant | None, Query(description="created_at < until")] = None,
        limit: Limit = pagination.DEFAULT_LIMIT, cursor: Cursor = None) -> dict[str, Any]:
    if since and until and since >= until:
        raise Invalid("since", "must be before until")
    after = pagination.decode(cursor, dt.datetime, int)
    conds: list[str] = []
    params: dict[str, Any] = {"n": limit + 1}
    conds += given((
            ("household_id", household_id, "household_id = %(household_id)s"),
            ("state", state, "state = %(state)s"),
            ("kind", kind, "kind = %(kind)s"),
            ("channel", channel, "channel = %(channel)s"),
            ("alarm_id", alarm_id, "alarm_id = %(alarm_id)s"),
            ("work_order_id", work_order_id, "work_order_id = %(work_order_id)s"),
            ("since", since, "created_at >= %(since)s"),
            ("until", until, "created_at < %(until)s")), params)
    if after:
        conds.append("(created_at, id) < (%(at)s, %(aid)s)")
        params.update(at=after[0], aid=after[1])
    rows = await (await conn.execute(
        f"SELECT {_COLS} FROM notifications {where(conds)}"
        " ORDER BY created_at DESC, id DESC LIMIT %(n)s", params)).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["created_at"], r["id"]))
    return {"items": [_shown(r, who) for r in items], "next_cursor": nxt}


@router.get("/{notification_id}", response_model=NotificationPublic,
            summary="One notification and its delivery state")
async def get_notification(notification_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
                           conn: Conn, who: Viewer) -> dict[str, Any]:
    row = await (await conn.execute(f"SELECT {_COLS} FROM notifications WHERE id = %s",
                                    (notification_id,))).fetchone()
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    return _shown(row, who)
