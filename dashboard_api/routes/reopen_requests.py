"""The supervisor's list of reopen requests across meters: a resolver's own reopen waits
here for a second person (dashboard_api/routes/valves.py confirms one). Pending first
(oldest first: the longest wait is at the top), then decided ones, newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from dashboard_api import valve_facts
from dashboard_api.deps import Conn, Viewer
from dashboard_api.schemas import ReopenRequestListed
from dashboard_api.schemas.common import ReopenStatus

router = APIRouter(prefix="/valves", tags=["valves"])

_COLUMNS = ", ".join(f"r.{c.strip()}" for c in valve_facts.REQUEST_COLUMNS.split(","))


@router.get(
    "/reopen-requests",
    response_model=list[ReopenRequestListed],
    summary="Reopen requests across meters, pending first (the supervisor's queue)",
)
async def list_reopen_requests(
    conn: Conn,
    _: Viewer,
    status: Annotated[
        ReopenStatus | None, Query(description="Only this status (default: every status)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    rows = await (
        await conn.execute(
            f"SELECT {_COLUMNS}, h.address, h.unit, h.community, h.building"
            " FROM valve_reopen_requests r JOIN households h ON h.id = r.household_id"
            " WHERE (%(s)s::text IS NULL OR r.status = %(s)s::text)"
            " ORDER BY (r.status <> 'pending'),"
            " CASE WHEN r.status = 'pending' THEN r.requested_at END ASC,"
            " r.requested_at DESC, r.id DESC LIMIT %(n)s",
            {"s": status, "n": limit},
        )
    ).fetchall()
    return rows
