"""Devices with their health (online, last seen, last reading, battery, faults, service
life: meters 10 years, detectors 5 years from installed_on) and the fleet summary."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from dashboard_api import pagination
from dashboard_api.deps import Admin, Conn, State, Viewer
from dashboard_api.errors import NotFound
from dashboard_api.params import Cursor, IdQuery, LabelQuery, Limit, ident
from dashboard_api.queries import (
    DEVICE_COLUMNS,
    DEVICE_FROM,
    device_view,
    given,
    health_limits,
    record,
    where,
)
from dashboard_api.schemas import (
    DeviceKind,
    DevicePublic,
    DeviceStatus,
    DeviceUpdate,
    FleetSummary,
    Page,
)

router = APIRouter(tags=["fleet"])

DeviceId = Annotated[str, ident("m000042")]


@router.get("/devices", response_model=Page[DevicePublic], summary="List devices with health")
async def list_devices(
    conn: Conn,
    _: Viewer,
    state: State,
    community: LabelQuery = None,
    building: LabelQuery = None,
    household_id: IdQuery = None,
    kind: DeviceKind | None = None,
    status: DeviceStatus | None = None,
    model: LabelQuery = None,
    online: Annotated[bool | None, Query()] = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"n": limit + 1}
    conds = given(
        (
            ("community", community, "h.community = %(community)s"),
            ("building", building, "h.building = %(building)s"),
            ("household_id", household_id, "d.household_id = %(household_id)s"),
            ("kind", kind, "d.kind = %(kind)s"),
            ("status", status, "d.status = %(status)s"),
            ("model", model, "d.model = %(model)s"),
        ),
        params,
    )
    if online is not None:
        conds.append("coalesce(s.online, false) = %(online)s")
        params["online"] = online
    conds += pagination.after_key(cursor, "d.id", params)
    rows = await (
        await conn.execute(
            f"SELECT {DEVICE_COLUMNS} {DEVICE_FROM} {where(conds)} ORDER BY d.id LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["id"], r["id"]))
    today = state.clock().date()
    limits = health_limits(state.settings)
    return {"items": [device_view(r, today, limits) for r in items], "next_cursor": nxt}


@router.get("/devices/{device_id}", response_model=DevicePublic, summary="A device's health")
async def get_device(device_id: DeviceId, conn: Conn, _: Viewer, state: State) -> dict[str, Any]:
    row = await (
        await conn.execute(f"SELECT {DEVICE_COLUMNS} {DEVICE_FROM} WHERE d.id = %s", (device_id,))
    ).fetchone()
    if row is None:
        raise NotFound(f"no device {device_id}")
    return device_view(row, state.clock().date(), health_limits(state.settings))


@router.patch(
    "/devices/{device_id}",
    response_model=DevicePublic,
    summary="Retire a device or correct its model and firmware (admin)",
)
async def update_device(
    device_id: DeviceId, body: DeviceUpdate, conn: Conn, admin: Admin, state: State
) -> dict[str, Any]:
    async with conn.transaction():
        row = await (
            await conn.execute(
                "UPDATE devices SET status = coalesce(%s, status), model = coalesce(%s, model),"
                " firmware = coalesce(%s, firmware) WHERE id = %s RETURNING id",
                (body.status, body.model, body.firmware, device_id),
            )
        ).fetchone()
        if row is None:
            raise NotFound(f"no device {device_id}")
        await record(
            conn,
            admin.username,
            "device.update",
            "device",
            device_id,
            body.model_dump(exclude_none=True),
        )
        await conn.execute("NOTIFY gas_registry")
    return await get_device(device_id, conn, admin, state)


_SUMMARY = """
    SELECT count(*) AS devices,
           count(*) FILTER (WHERE d.kind = 'meter') AS meters,
           count(*) FILTER (WHERE d.kind = 'detector') AS detectors,
           count(*) FILTER (WHERE s.online) AS online,
           count(*) FILTER (WHERE NOT coalesce(s.online, false) AND s.last_seen IS NOT NULL)
               AS offline,
           count(*) FILTER (WHERE s.last_seen IS NULL) AS never_seen,
           count(*) FILTER (WHERE d.installed_on + CASE d.kind
                                WHEN 'meter' THEN make_interval(months => %(meter_months)s)
                                ELSE make_interval(months => %(detector_months)s) END
                              < %(today)s)
               AS past_service_life,
           count(*) FILTER (WHERE d.kind = 'meter' AND s.batt_v < %(low)s) AS low_battery,
           count(*) FILTER (WHERE s.fault > 0 OR s.valve = 'fault') AS faulted
    FROM devices d JOIN households h ON h.id = d.household_id
    LEFT JOIN device_state s ON s.device_id = d.id
"""


@router.get(
    "/fleet/summary",
    response_model=FleetSummary,
    summary="Online/offline counts, devices past service life, low batteries",
)
async def fleet_summary(
    conn: Conn, _: Viewer, state: State, community: LabelQuery = None
) -> dict[str, Any]:
    now = state.clock()
    conds = ["d.status = 'active'"]
    limits = health_limits(state.settings)
    params: dict[str, Any] = {
        "today": now.date(),
        "low": limits.battery_low_v,
        "meter_months": limits.meter_life_months,
        "detector_months": limits.detector_life_months,
    }
    if community is not None:
        conds.append("h.community = %(community)s")
        params["community"] = community
    row = await (await conn.execute(_SUMMARY + where(conds), params)).fetchone()
    assert row is not None
    return {**row, "as_of": now, "by_kind": {"meter": row["meters"], "detector": row["detectors"]}}
