"""The audit trail (admin): every state change made through the API, and the gateway's
own actions, with actor, entity and details. Newest first."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query

from dashboard_api import pagination
from dashboard_api.deps import Admin, Conn
from dashboard_api.errors import Invalid
from dashboard_api.queries import given, where
from dashboard_api.schemas import AuditEntry, Instant, Page

router = APIRouter(prefix="/audit", tags=["audit"])

Word = Annotated[str | None, Query(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
Limit = Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512)]


@router.get("", response_model=Page[AuditEntry], summary="The audit trail, newest first")
async def list_audit(conn: Conn, _: Admin, entity: Word = None, entity_id: Word = None,
                     actor: Word = None, action: Word = None,
                     since: Annotated[Instant | None, Query()] = None,
                     until: Annotated[Instant | None, Query()] = None,
                     limit: Limit = pagination.DEFAULT_LIMIT,
                     cursor: Cursor = None) -> dict[str, Any]:
    if since and until and since >= until:
        raise Invalid("since", "must be before until")
    after = pagination.decode(cursor, dt.datetime, int)
    conds: list[str] = []
    params: dict[str, Any] = {"n": limit + 1}
    conds += given((("entity", entity, "entity = %(entity)s"),
                              ("entity_id", entity_id, "entity_id = %(entity_id)s"),
                              ("actor", actor, "actor = %(actor)s"),
                              ("action", action, "action = %(action)s"),
                              ("since", since, "at >= %(since)s"),
                              ("until", until, "at < %(until)s")), params)
    if after:
        conds.append("(at, id) < (%(at)s, %(aid)s)")
        params.update(at=after[0], aid=after[1])
    rows = await (await conn.execute(
        f"SELECT id, at, actor, action, entity, entity_id, details FROM audit_log"
        f" {where(conds)} ORDER BY at DESC, id DESC LIMIT %(n)s", params)).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["at"], r["id"]))
    return {"items": items, "next_cursor": nxt}
