"""The console's aggregate reads of the whole fleet, each one SQL statement:

* `GET /city`: communities -> buildings -> households for the schematic, each household in
  the worst of its states (an active gas alarm, its valve cut, a device offline or never
  seen, a device past its service life); with `community`, that community alone, with its
  buildings and their households.
* `GET /fleet/health`: offline and unprotected homes, low batteries and devices past their
  service life, by community; `GET /fleet/health.csv` lists those devices for replacement
  planning (text/csv).

At the city's size (192,000 households, 460,000 devices) the whole-fleet answers take about
a second to compute (bench/bench_city.py): an answer that took longer than `SLOW_S` is kept
`KEEP_S` seconds and shared by every reader, and readers that arrive while one is being
computed wait for it rather than compute it again. Small fleets are always read fresh.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from dashboard_api.deps import Conn, State, Viewer
from dashboard_api.errors import NotFound
from dashboard_api.params import LabelQuery
from dashboard_api.queries import HealthLimits, health_limits, where
from dashboard_api.schemas import City, FleetHealth

router = APIRouter(tags=["fleet"])

GAS_KINDS = ["leak", "prealarm", "rising", "micro_leak"]
"""Alarm kinds that make a household a leak on the city view while they are not cleared."""

_PAST_LIFE = """d.installed_on + CASE d.kind WHEN 'meter' THEN make_interval(months => %(mm)s)
                ELSE make_interval(months => %(dm)s) END < %(today)s"""

_HOUSE_STATES = f"""
    WITH dev AS (
        SELECT d.household_id,
               bool_or(d.kind = 'meter' AND s.valve = 'closed') AS cut,
               bool_or(NOT coalesce(s.online, false)) AS offline,
               bool_or({_PAST_LIFE}) AS past
        FROM devices d LEFT JOIN device_state s ON s.device_id = d.id
        WHERE d.status = 'active' {{dev_filter}}
        GROUP BY d.household_id
    ), gas AS (
        SELECT DISTINCT household_id FROM alarms
        WHERE cleared_at IS NULL AND kind = ANY(%(gas)s)
    ), house AS (
        SELECT h.id, h.community, h.building, h.unit,
               CASE WHEN g.household_id IS NOT NULL THEN 'leak'
                    WHEN dev.cut THEN 'valve_cut'
                    WHEN dev.offline THEN 'offline'
                    WHEN dev.past THEN 'past_life'
                    ELSE 'ok' END AS state
        FROM households h
        LEFT JOIN dev ON dev.household_id = h.id
        LEFT JOIN gas g ON g.household_id = h.id
        {{house_filter}}
    )"""

_STATES = ("leak", "valve_cut", "offline", "past_life", "ok")
_COUNTS = ", ".join(f"count(*) FILTER (WHERE state = '{s}') AS {s}" for s in _STATES)


SLOW_S = 0.25
KEEP_S = 5.0


class SharedAnswers:
    """Slow answers kept for a few seconds, per API instance and key; one computation of a
    key at a time (the others wait for its answer)."""

    def __init__(self) -> None:
        self._kept: dict[tuple[int, str], tuple[float, Any]] = {}
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}

    async def get(self, owner: object, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        k = (id(owner), key)
        async with self._locks.setdefault(k, asyncio.Lock()):
            hit = self._kept.get(k)
            if hit is not None and time.monotonic() < hit[0]:
                return hit[1]
            started = time.monotonic()
            value = await compute()
            took = time.monotonic() - started
            if took > SLOW_S:
                self._kept[k] = (time.monotonic() + KEEP_S, value)
            else:
                self._kept.pop(k, None)
            return value


shared = SharedAnswers()


def _params(state: Any, limits: HealthLimits) -> dict[str, Any]:
    return {
        "mm": limits.meter_life_months,
        "dm": limits.detector_life_months,
        "today": state.clock().date(),
        "gas": GAS_KINDS,
        "low": limits.battery_low_v,
    }


def _counts(row: dict[str, Any]) -> dict[str, int]:
    return {s: int(row[s]) for s in _STATES}


@router.get("/city", response_model=City, summary="Communities, buildings and households by state")
async def city(conn: Conn, _: Viewer, state: State, community: LabelQuery = None) -> dict[str, Any]:
    params = _params(state, health_limits(state.settings))
    buildings: list[dict[str, Any]] = []
    if community is None:
        sql = _HOUSE_STATES.format(dev_filter="", house_filter="")

        async def read() -> list[dict[str, Any]]:
            cur = await conn.execute(
                f"{sql} SELECT community, count(*) AS households,"
                f" count(DISTINCT building) AS buildings, {_COUNTS}"
                " FROM house GROUP BY community ORDER BY community",
                params,
            )
            return await cur.fetchall()

        rows = await shared.get(state, "city", read)
        communities = [
            {
                "community": r["community"],
                "households": r["households"],
                "buildings": r["buildings"],
                "states": _counts(r),
            }
            for r in rows
        ]
    else:  # that community alone: its buildings, and its summary made from them
        buildings = await _buildings(conn, params, community)
        if not buildings:
            raise NotFound(f"no community {community}")
        communities = [
            {
                "community": community,
                "households": sum(b["households"] for b in buildings),
                "buildings": len(buildings),
                "states": {s: sum(b["states"][s] for b in buildings) for s in _STATES},
            }
        ]
    total = {s: sum(c["states"][s] for c in communities) for s in _STATES}
    return {
        "as_of": state.clock(),
        "households": sum(c["households"] for c in communities),
        "states": total,
        "communities": communities,
        "community": community,
        "buildings": buildings,
    }


async def _buildings(conn: Any, params: dict[str, Any], community: str) -> list[dict[str, Any]]:
    sql = _HOUSE_STATES.format(
        dev_filter="AND d.household_id IN (SELECT id FROM households WHERE community = %(c)s)",
        house_filter="WHERE h.community = %(c)s",
    )
    rows = await (
        await conn.execute(
            f"{sql} SELECT id, building, unit, state FROM house ORDER BY building, unit, id",
            {**params, "c": community},
        )
    ).fetchall()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        b = out.setdefault(
            r["building"],
            {
                "building": r["building"],
                "households": 0,
                "states": dict.fromkeys(_STATES, 0),
                "household_list": [],
            },
        )
        b["households"] += 1
        b["states"][r["state"]] += 1
        b["household_list"].append({"id": r["id"], "unit": r["unit"], "state": r["state"]})
    return list(out.values())


# ---------------------------------------------------------------- fleet health

_HEALTH = f"""
    WITH dev AS (
        SELECT h.community, d.household_id, d.kind,
               coalesce(s.online, false) AS online, s.last_seen IS NULL AS never,
               d.kind = 'meter' AND s.batt_v < %(low)s AS low,
               {_PAST_LIFE} AS past
        FROM devices d JOIN households h ON h.id = d.household_id
        LEFT JOIN device_state s ON s.device_id = d.id
        WHERE d.status = 'active' {{filter}}
    ), house AS (
        SELECT community, household_id, bool_or(NOT online) AS offline,
               NOT bool_or(kind = 'detector' AND online) AS unprotected
        FROM dev GROUP BY community, household_id
    )
    SELECT c.community, c.households, c.offline_households, c.unprotected_households,
           d.never_seen, d.offline_devices, d.low_battery, d.past_life_meters,
           d.past_life_detectors
    FROM (SELECT community, count(*) AS households,
                 count(*) FILTER (WHERE offline) AS offline_households,
                 count(*) FILTER (WHERE unprotected) AS unprotected_households
          FROM house GROUP BY community) c
    JOIN (SELECT community, count(*) FILTER (WHERE never) AS never_seen,
                 count(*) FILTER (WHERE NOT online AND NOT never) AS offline_devices,
                 count(*) FILTER (WHERE low) AS low_battery,
                 count(*) FILTER (WHERE past AND kind = 'meter') AS past_life_meters,
                 count(*) FILTER (WHERE past AND kind = 'detector') AS past_life_detectors
          FROM dev GROUP BY community) d USING (community)
    ORDER BY c.community"""


@router.get(
    "/fleet/health",
    response_model=FleetHealth,
    summary="Offline and unprotected homes, low batteries, devices past service life",
)
async def fleet_health(
    conn: Conn, _: Viewer, state: State, community: LabelQuery = None
) -> dict[str, Any]:
    limits = health_limits(state.settings)
    params = {**_params(state, limits), "c": community}
    sql = _HEALTH.format(filter="AND h.community = %(c)s" if community is not None else "")

    async def read() -> list[dict[str, Any]]:
        return await (await conn.execute(sql, params)).fetchall()

    rows = await shared.get(state, f"health:{community or ''}", read)
    return {
        "as_of": state.clock(),
        "meter_life_years": limits.meter_life_months / 12,
        "detector_life_years": limits.detector_life_months / 12,
        "battery_low_v": limits.battery_low_v,
        "communities": rows,
    }


def _cell(value: Any) -> str:
    """A CSV cell; text a spreadsheet would take for a formula is quoted with a `'`."""
    if value is None:
        return ""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _NUMBER.match(text) else text


_NUMBER = re.compile(r"^-?[0-9.]+$")

Issue = Literal["offline", "never_seen", "low_battery", "past_service_life"]
CSV_COLUMNS = (
    "community",
    "building",
    "household_id",
    "address",
    "device_id",
    "kind",
    "model",
    "installed_on",
    "service_life_ends",
    "last_seen",
    "battery_v",
    "issues",
)
_ISSUES = f"""
    SELECT h.community, h.building, d.household_id, h.address, d.id AS device_id, d.kind,
           d.model, d.installed_on,
           (d.installed_on + CASE d.kind WHEN 'meter' THEN make_interval(months => %(mm)s)
                ELSE make_interval(months => %(dm)s) END)::date AS service_life_ends,
           s.last_seen, s.batt_v AS battery_v,
           concat_ws(';',
               CASE WHEN s.last_seen IS NOT NULL AND NOT s.online THEN 'offline' END,
               CASE WHEN s.last_seen IS NULL THEN 'never_seen' END,
               CASE WHEN d.kind = 'meter' AND s.batt_v < %(low)s THEN 'low_battery' END,
               CASE WHEN {_PAST_LIFE} THEN 'past_service_life' END) AS issues
    FROM devices d JOIN households h ON h.id = d.household_id
    LEFT JOIN device_state s ON s.device_id = d.id"""
_ISSUE_CONDS = {
    "offline": "(s.last_seen IS NOT NULL AND NOT s.online)",
    "never_seen": "s.last_seen IS NULL",
    "low_battery": "(d.kind = 'meter' AND s.batt_v < %(low)s)",
    "past_service_life": f"({_PAST_LIFE})",
}


@router.get(
    "/fleet/health.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "One row per device"}},
    summary="Devices offline, never seen, low on battery or past service life, as CSV",
)
async def fleet_health_csv(
    conn: Conn,
    _: Viewer,
    state: State,
    community: LabelQuery = None,
    issue: Annotated[
        list[Issue] | None, Query(description="Only these issues (repeat); default: all")
    ] = None,
) -> Response:
    params = {**_params(state, health_limits(state.settings)), "c": community}
    wanted: list[str] = list(issue or _ISSUE_CONDS)
    conds = ["d.status = 'active'", "(" + " OR ".join(_ISSUE_CONDS[i] for i in wanted) + ")"]
    if community is not None:
        conds.append("h.community = %(c)s")
    rows = await (
        await conn.execute(
            f"{_ISSUES} {where(conds)} ORDER BY h.community, h.building, d.household_id, d.id",
            params,
        )
    ).fetchall()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows([_cell(r[c]) for c in CSV_COLUMNS] for r in rows)
    name = f"fleet-health-{community or 'all'}-{params['today'].isoformat()}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
