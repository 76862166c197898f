"""A household's call chain from its side: its notices with every attempt, and its optional
emergency contact (called when the owner does not answer). Operators set and clear the
contact (audited); viewers see the number masked, like the owner's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from dashboard_api import pagination
from dashboard_api.deps import Conn, Operator, Viewer
from dashboard_api.errors import NotFound
from dashboard_api.identity import Principal, Role
from dashboard_api.params import Cursor, Limit, ident
from dashboard_api.queries import mask, record, where
from dashboard_api.routes.notifications import NOTIFICATION_COLUMNS, with_attempts
from dashboard_api.schemas import (
    EmergencyContact,
    EmergencyContactSet,
    NotificationDetail,
    NotificationState,
    Page,
)

router = APIRouter(prefix="/households", tags=["notifications"])

HouseholdId = Annotated[str, ident("h000042")]


def _contact(row: dict[str, Any], who: Principal) -> dict[str, Any]:
    phone = row["emergency_contact_phone"]
    return {
        "household_id": row["id"],
        "name": row["emergency_contact_name"],
        "phone": phone if who.may(Role.operator) else mask(phone),
    }


async def _household(conn: Conn, household_id: str, lock: bool = False) -> dict[str, Any]:
    row = await (
        await conn.execute(
            "SELECT id, emergency_contact_name, emergency_contact_phone FROM households"
            " WHERE id = %s" + (" FOR UPDATE" if lock else ""),
            (household_id,),
        )
    ).fetchone()
    if row is None:
        raise NotFound(f"no household {household_id}")
    return dict(row)


@router.get(
    "/{household_id}/notifications",
    response_model=Page[NotificationDetail],
    summary="A household's notices, newest first, each with its call chain's attempts",
)
async def household_notifications(
    household_id: HouseholdId,
    conn: Conn,
    who: Viewer,
    state: Annotated[NotificationState | None, Query()] = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    await _household(conn, household_id)
    params: dict[str, Any] = {"n": limit + 1, "h": household_id}
    conds = ["household_id = %(h)s"]
    if state is not None:
        conds.append("state = %(state)s")
        params["state"] = state
    conds += pagination.older_than(cursor, "created_at", "id", params)
    rows = await (
        await conn.execute(
            f"SELECT {NOTIFICATION_COLUMNS} FROM notifications {where(conds)}"
            " ORDER BY created_at DESC, id DESC LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["created_at"], r["id"]))
    return {"items": await with_attempts(conn, items, who), "next_cursor": nxt}


@router.get(
    "/{household_id}/emergency-contact",
    response_model=EmergencyContact,
    summary="The household's emergency contact (the number masked for viewers)",
)
async def get_emergency_contact(
    household_id: HouseholdId, conn: Conn, who: Viewer
) -> dict[str, Any]:
    return _contact(await _household(conn, household_id), who)


@router.put(
    "/{household_id}/emergency-contact",
    response_model=EmergencyContact,
    summary="Set the household's emergency contact (operator, audited)",
)
async def set_emergency_contact(
    household_id: HouseholdId, body: EmergencyContactSet, conn: Conn, who: Operator
) -> dict[str, Any]:
    async with conn.transaction():
        before = await _household(conn, household_id, lock=True)
        await conn.execute(
            "UPDATE households SET emergency_contact_name = %s, emergency_contact_phone = %s"
            " WHERE id = %s",
            (body.name, body.phone, household_id),
        )
        await record(
            conn,
            who.username,
            "household.emergency_contact.set",
            "household",
            household_id,
            {
                "name": body.name,
                "phone": mask(body.phone),
                "replaced": before["emergency_contact_phone"] is not None,
            },
        )
    return _contact(await _household(conn, household_id), who)


@router.delete(
    "/{household_id}/emergency-contact",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Clear the household's emergency contact (operator, audited)",
)
async def clear_emergency_contact(household_id: HouseholdId, conn: Conn, who: Operator) -> None:
    async with conn.transaction():
        before = await _household(conn, household_id, lock=True)
        await conn.execute(
            "UPDATE households SET emergency_contact_name = NULL,"
            " emergency_contact_phone = NULL WHERE id = %s",
            (household_id,),
        )
        await record(
            conn,
            who.username,
            "household.emergency_contact.clear",
            "household",
            household_id,
            {"had": before["emergency_contact_phone"] is not None},
        )
