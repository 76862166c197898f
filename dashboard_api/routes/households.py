"""Households: the registry's flats with their devices' health; admins register new ones
(their devices' MQTT credentials are then set by `gas-safety fleet provision` on the
broker's host, which picks up every device without one)."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, status

from dashboard_api import pagination
from dashboard_api.deps import Admin, Conn, Operator, State, Viewer
from dashboard_api.errors import Conflict, Invalid, NotFound
from dashboard_api.identity import Principal, Role
from dashboard_api.params import Cursor, LabelQuery, Limit, ident
from dashboard_api.queries import (
    DEVICE_COLUMNS,
    DEVICE_FROM,
    device_view,
    given,
    health_limits,
    mask,
    record,
    where,
)
from dashboard_api.schemas import (
    AuditEntry,
    HouseholdCreate,
    HouseholdDetail,
    HouseholdPublic,
    Page,
)

router = APIRouter(prefix="/households", tags=["fleet"])

HouseholdId = Annotated[str, ident("h000042")]

_COLS = """h.id, h.address, h.community, h.building, h.unit, h.owner_name, h.owner_phone,
           h.owner_email, h.qmax_m3h, h.created_at,
           (SELECT count(*) FROM devices d WHERE d.household_id = h.id) AS devices"""


def _shown(row: dict[str, Any], who: Principal) -> dict[str, Any]:
    if who.may(Role.operator):
        return row
    return {**row, "owner_phone": mask(row["owner_phone"]), "owner_email": mask(row["owner_email"])}


@router.get("", response_model=Page[HouseholdPublic], summary="List households")
async def list_households(
    conn: Conn,
    who: Viewer,
    community: LabelQuery = None,
    building: LabelQuery = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"n": limit + 1}
    conds = given(
        (
            ("community", community, "h.community = %(community)s"),
            ("building", building, "h.building = %(building)s"),
        ),
        params,
    )
    conds += pagination.after_key(cursor, "h.id", params)
    rows = await (
        await conn.execute(
            f"SELECT {_COLS} FROM households h {where(conds)} ORDER BY h.id LIMIT %(n)s", params
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["id"], r["id"]))
    return {"items": [_shown(r, who) for r in items], "next_cursor": nxt}


@router.get(
    "/{household_id}",
    response_model=HouseholdDetail,
    summary="A household with its devices' health, active alarms and open orders",
)
async def get_household(
    household_id: HouseholdId, conn: Conn, who: Viewer, state: State
) -> dict[str, Any]:
    row = await (
        await conn.execute(f"SELECT {_COLS} FROM households h WHERE h.id = %s", (household_id,))
    ).fetchone()
    if row is None:
        raise NotFound(f"no household {household_id}")
    devices = await (
        await conn.execute(
            f"SELECT {DEVICE_COLUMNS} {DEVICE_FROM} WHERE d.household_id = %s ORDER BY d.id",
            (household_id,),
        )
    ).fetchall()
    counts = await (
        await conn.execute(
            """SELECT (SELECT count(*) FROM alarms WHERE household_id = %(h)s
                   AND cleared_at IS NULL) AS active_alarms,
                  (SELECT count(*) FROM work_orders WHERE household_id = %(h)s
                   AND status IN ('open', 'dispatched', 'on_site')) AS open_work_orders""",
            {"h": household_id},
        )
    ).fetchone()
    assert counts is not None
    today = state.clock().date()
    limits = health_limits(state.settings)
    return {
        **_shown(row, who),
        **counts,
        "device_list": [device_view(d, today, limits) for d in devices],
    }


# Entries about the household, its devices, alarms and orders (audit_log_entity_idx), and
# those naming it in their details (audit_log_household_idx, migration 0010).
_AUDIT = """
    SELECT id, at, actor, action, entity, entity_id, details FROM audit_log
    WHERE id IN (
        SELECT id FROM audit_log WHERE entity = 'household' AND entity_id = %(h)s
        UNION ALL
        SELECT a.id FROM audit_log a JOIN devices d
            ON a.entity = 'device' AND a.entity_id = d.id WHERE d.household_id = %(h)s
        UNION ALL
        SELECT a.id FROM audit_log a JOIN alarms x
            ON a.entity = 'alarm' AND a.entity_id = x.id::text WHERE x.household_id = %(h)s
        UNION ALL
        SELECT a.id FROM audit_log a JOIN work_orders w
            ON a.entity = 'work_order' AND a.entity_id = w.id::text WHERE w.household_id = %(h)s
        UNION ALL
        SELECT id FROM audit_log
        WHERE coalesce(details->>'household_id', details->>'household') = %(h)s
          AND (details ? 'household_id' OR details ? 'household'))
    {older} ORDER BY at DESC, id DESC LIMIT %(n)s"""


@router.get(
    "/{household_id}/audit",
    response_model=Page[AuditEntry],
    summary="The household's audit trail, newest first (operator)",
)
async def household_audit(
    household_id: HouseholdId,
    conn: Conn,
    _: Operator,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    found = await (
        await conn.execute("SELECT 1 FROM households WHERE id = %s", (household_id,))
    ).fetchone()
    if found is None:
        raise NotFound(f"no household {household_id}")
    params: dict[str, Any] = {"h": household_id, "n": limit + 1}
    older = pagination.older_than(cursor, "at", "id", params)
    rows = await (
        await conn.execute(_AUDIT.format(older="".join(" AND " + c for c in older)), params)
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["at"], r["id"]))
    return {"items": items, "next_cursor": nxt}


@router.post(
    "",
    response_model=HouseholdDetail,
    status_code=status.HTTP_201_CREATED,
    summary="Register a household and its devices (admin)",
)
async def create_household(
    body: HouseholdCreate, conn: Conn, admin: Admin, state: State
) -> dict[str, Any]:
    kinds = [d.kind for d in body.devices]
    if kinds.count("meter") != 1:
        raise Invalid("devices", "a household has exactly one meter", "body")
    if len({d.id for d in body.devices}) != len(body.devices):
        raise Invalid("devices", "device ids repeat", "body")
    try:
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO households (id, address, community, building, unit, owner_name,
                                          owner_phone, owner_email, qmax_m3h)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (
                    body.id,
                    body.address,
                    body.community,
                    body.building,
                    body.unit,
                    body.owner_name,
                    body.owner_phone,
                    body.owner_email,
                    body.qmax_m3h,
                ),
            )
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO devices (id, kind, model, household_id, installed_on)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [(d.id, d.kind, d.model, body.id, d.installed_on) for d in body.devices],
                )
            await record(
                conn,
                admin.username,
                "household.create",
                "household",
                body.id,
                {"devices": [d.id for d in body.devices]},
            )
            await conn.execute("NOTIFY gas_registry")
    except psycopg.errors.UniqueViolation:
        raise Conflict(f"household {body.id} or one of its device ids exists already") from None
    return await get_household(body.id, conn, admin, state)
