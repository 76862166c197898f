"""The audit trail (admin): every state change made through the API, and the gateway's
own actions, with actor, entity and details. Newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from dashboard_api import pagination
from dashboard_api.deps import Admin
from dashboard_api.params import Cursor, LabelQuery, Limit
from dashboard_api.queries import between, given, where
from dashboard_api.reads import MAY_LAG, LagConn
from dashboard_api.schemas import AuditEntry, Instant, Page

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get(
    "",
    response_model=Page[AuditEntry],
    summary="The audit trail, newest first",
    responses=MAY_LAG,
)
async def list_audit(
    conn: LagConn,
    _: Admin,
    entity: LabelQuery = None,
    entity_id: LabelQuery = None,
    actor: LabelQuery = None,
    action: LabelQuery = None,
    since: Annotated[Instant | None, Query()] = None,
    until: Annotated[Instant | None, Query()] = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"n": limit + 1}
    conds = between("at", since, until, params)
    conds += given(
        (
            ("entity", entity, "entity = %(entity)s"),
            ("entity_id", entity_id, "entity_id = %(entity_id)s"),
            ("actor", actor, "actor = %(actor)s"),
            ("action", action, "action = %(action)s"),
        ),
        params,
    )
    conds += pagination.older_than(cursor, "at", "id", params)
    rows = await (
        await conn.execute(
            f"SELECT id, at, actor, action, entity, entity_id, details FROM audit_log"
            f" {where(conds)} ORDER BY at DESC, id DESC LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["at"], r["id"]))
    return {"items": items, "next_cursor": nxt}
