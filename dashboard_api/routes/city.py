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
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from dashboard_api.deps import Conn, State, Viewer
from dashboard_api.errors import NotFound
from dashboard_api.params import LabelQuery
from dashboard_api.queries import HealthLimits, add_months, health_limits, where
from dashboard_api.schemas import City, FleetHealth

router = APIRouter(tags=["fleet"])

GAS_KINDS = ["leak", "prealarm", "rising", "micro_leak"]
"""Alarm kinds that make a household a leak on the city view while they are not cleared."""

_PAST_LIFE = """d.installed_on < CASE d.kind WHEN 'meter' THEN %(meter_before)s::date
                                 ELSE %(detector_before)s::date END"""

# A household's state is the highest rank among its flagged rows: 4 an active gas alarm,
# 3 its meter's valve closed, 2 a device offline or never seen, 1 a device past its service
# life; no row: ok. Each branch reads only what is flagged (devices past their life from
# `devices` alone, offline or closed from `device_state`, never seen by an anti-join), so
# the whole city is not joined device by device. {scope} narrows `d` (devices) to a
# community's households; the active gas alarms are few and all read.
_FLAGGED = """
    WITH flagged AS (
        SELECT d.household_id, 1 AS rank FROM devices d
        WHERE d.status = 'active' {scope}
          AND d.installed_on < CASE d.kind WHEN 'meter' THEN %(meter_before)s::date
                                           ELSE %(detector_before)s::date END
        UNION ALL
        SELECT d.household_id,
               CASE WHEN d.kind = 'meter' AND s.valve = 'closed' THEN 3 ELSE 2 END
        FROM device_state s JOIN devices d ON d.id = s.device_id
        WHERE d.status = 'active' {scope}
          AND (NOT s.online OR (d.kind = 'meter' AND s.valve = 'closed'))
        UNION ALL
        SELECT d.household_id, 2 FROM devices d
        WHERE d.status = 'active' {scope}
          AND NOT EXISTS (SELECT 1 FROM device_state s WHERE s.device_id = d.id)
        UNION ALL
        SELECT a.household_id, 4 FROM alarms a
        WHERE a.cleared_at IS NULL AND a.kind = ANY(%(gas)s)
    ), ranked AS (
        SELECT household_id, max(rank) AS rank FROM flagged GROUP BY household_id
    )"""
_STATE_OF = """CASE x.rank WHEN 4 THEN 'leak' WHEN 3 THEN 'valve_cut' WHEN 2 THEN 'offline'
                  WHEN 1 THEN 'past_life' ELSE 'ok' END"""
# the devices of one community, found through devices_household_idx
_COMMUNITY_SCOPE = (
    "AND d.household_id = ANY(ARRAY(SELECT id FROM households WHERE community = %(c)s))"
)

_STATES = ("leak", "valve_cut", "offline", "past_life", "ok")
_RANKS = {
    "leak": "x.rank = 4",
    "valve_cut": "x.rank = 3",
    "offline": "x.rank = 2",
    "past_life": "x.rank = 1",
    "ok": "x.rank IS NULL",
}
_COUNTS = ", ".join(f"count(*) FILTER (WHERE {cond}) AS {s}" for s, cond in _RANKS.items())


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


def life_cutoff(today: dt.date, months: int) -> dt.date:
    """The first installation day still within its service life on `today`: a device
    installed before it is past its life (installed_on + months < today, as PostgreSQL and
    `device_view` add months)."""
    cut = add_months(today, -months)
    while add_months(cut, months) < today:
        cut += dt.timedelta(days=1)
    while add_months(cut - dt.timedelta(days=1), months) >= today:
        cut -= dt.timedelta(days=1)
    return cut


def _params(state: Any, limits: HealthLimits) -> dict[str, Any]:
    today = state.clock().date()
    return {
        "meter_before": life_cutoff(today, limits.meter_life_months),
        "detector_before": life_cutoff(today, limits.detector_life_months),
        "mm": limits.meter_life_months,
        "dm": limits.detector_life_months,
        "today": state.clock().date(),
        "gas": GAS_KINDS,
        "low": limits.battery_low_v,
    }


def _counts(row: dict[str, Any]) -> dict[str, int]:
    return {s: int(row[s]) for s in _STATES}


@router.get(
    "/city",
    response_model=City,
    responses={404: {"description": "The named community has no household"}},
    summary="Communities, buildings and households by state",
)
async def city(conn: Conn, _: Viewer, state: State, community: LabelQuery = None) -> dict[str, Any]:
    params = _params(state, health_limits(state.settings))
    buildings: list[dict[str, Any]] = []
    if community is None:
        sql = _FLAGGED.format(scope="")

        async def read() -> list[dict[str, Any]]:
            cur = await conn.execute(
                f"{sql} SELECT h.community, count(*) AS households,"
                f" count(DISTINCT h.building) AS buildings, {_COUNTS}"
                " FROM households h LEFT JOIN ranked x ON x.household_id = h.id"
                " GROUP BY h.community ORDER BY h.community",
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
    sql = _FLAGGED.format(scope=_COMMUNITY_SCOPE)
    rows = await (
        await conn.execute(
            f"{sql} SELECT h.id, h.building, h.unit, {_STATE_OF} AS state"
            " FROM households h LEFT JOIN ranked x ON x.household_id = h.id"
            " WHERE h.community = %(c)s ORDER BY h.building, h.unit, h.id",
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

# Read from the flagged devices only (offline or never seen, past their life, low
# batteries) and the households' own index, never the whole fleet joined device by device.
# A home is unprotected when no active detector of it is online: one of its detectors is
# down and none other is up, or it has none. {scope} narrows devices `d` to a community,
# {hcond} the households `h`.
_HEALTH = f"""
    WITH bad AS (
        SELECT d.household_id, d.kind, s.last_seen IS NULL AS never
        FROM device_state s JOIN devices d ON d.id = s.device_id
        WHERE d.status = 'active' {{scope}} AND (NOT s.online OR s.last_seen IS NULL)
        UNION ALL
        SELECT d.household_id, d.kind, true FROM devices d
        WHERE d.status = 'active' {{scope}}
          AND NOT EXISTS (SELECT 1 FROM device_state s WHERE s.device_id = d.id)
    ), unprotected AS (
        SELECT b.household_id FROM bad b
        WHERE b.kind = 'detector' AND NOT EXISTS (
            SELECT 1 FROM devices d JOIN device_state s ON s.device_id = d.id
            WHERE d.household_id = b.household_id AND d.kind = 'detector'
              AND d.status = 'active' AND s.online)
        UNION
        SELECT h.id FROM households h
        WHERE {{hcond}} NOT EXISTS (SELECT 1 FROM devices d WHERE d.household_id = h.id
                                    AND d.kind = 'detector' AND d.status = 'active')
    ), worn AS (
        SELECT d.household_id, d.kind, false AS low FROM devices d
        WHERE d.status = 'active' {{scope}} AND {_PAST_LIFE}
        UNION ALL
        SELECT d.household_id, d.kind, true
        FROM device_state s JOIN devices d ON d.id = s.device_id
        WHERE d.status = 'active' {{scope}} AND d.kind = 'meter' AND s.batt_v < %(low)s
    )
    SELECT c.community, c.households,
           coalesce(o.offline_households, 0) AS offline_households,
           coalesce(u.unprotected_households, 0) AS unprotected_households,
           coalesce(o.never_seen, 0) AS never_seen,
           coalesce(o.offline_devices, 0) AS offline_devices,
           coalesce(w.low_battery, 0) AS low_battery,
           coalesce(w.past_life_meters, 0) AS past_life_meters,
           coalesce(w.past_life_detectors, 0) AS past_life_detectors
    FROM (SELECT h.community, count(*) AS households FROM households h
          WHERE {{hcond}} true GROUP BY h.community) c
    LEFT JOIN (SELECT h.community, count(DISTINCT b.household_id) AS offline_households,
                      count(*) FILTER (WHERE b.never) AS never_seen,
                      count(*) FILTER (WHERE NOT b.never) AS offline_devices
               FROM bad b JOIN households h ON h.id = b.household_id
               GROUP BY h.community) o USING (community)
    LEFT JOIN (SELECT h.community, count(*) AS unprotected_households
               FROM unprotected x JOIN households h ON h.id = x.household_id
               GROUP BY h.community) u USING (community)
    LEFT JOIN (SELECT h.community, count(*) FILTER (WHERE w.low) AS low_battery,
                      count(*) FILTER (WHERE NOT w.low AND w.kind = 'meter') AS past_life_meters,
                      count(*) FILTER (WHERE NOT w.low AND w.kind = 'detector')
                          AS past_life_detectors
               FROM worn w JOIN households h ON h.id = w.household_id
               GROUP BY h.community) w USING (community)
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
    mine = community is not None
    sql = _HEALTH.format(
        scope=_COMMUNITY_SCOPE if mine else "", hcond="h.community = %(c)s AND" if mine else ""
    )

    async def read() -> list[dict[str, Any]]:
        return await (await conn.execute(sql, params)).fetchall()

    # only the whole fleet's answer is shared: one community's is quick, and keys made of
    # what callers send would let them grow the table
    rows = await (read() if mine else shared.get(state, "health", read))
    return {
        "as_of": state.clock(),
        "meter_life_years": limits.meter_life_months / 12,
        "detector_life_years": limits.detector_life_months / 12,
        "battery_low_v": limits.battery_low_v,
        "communities": rows,
    }


def _text(column: str, name: str) -> str:
    """A text column as a CSV cell: text a spreadsheet would take for a formula (=, +, -,
    @ first) is quoted with a `'`. `column` is written in this module, never input."""
    return (
        f"CASE WHEN left({column}, 1) IN ('=', '+', '-', '@') THEN '''' || {column}"
        f" ELSE {column} END AS {name}"
    )


Issue = Literal["offline", "never_seen", "low_battery", "past_service_life"]
_ISSUES = f"""
    SELECT {_text("h.community", "community")}, {_text("h.building", "building")},
           d.household_id, {_text("h.address", "address")}, d.id AS device_id, d.kind,
           {_text("d.model", "model")}, d.installed_on,
           (d.installed_on + CASE d.kind WHEN 'meter' THEN make_interval(months => %(mm)s)
                ELSE make_interval(months => %(dm)s) END)::date AS service_life_ends,
           to_json(s.last_seen) #>> '{{}}' AS last_seen, s.batt_v AS battery_v,
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
    # PostgreSQL writes the CSV itself (COPY): a whole fleet's 80,000 rows are 20 MB
    query = f"{_ISSUES} {where(conds)} ORDER BY h.community, h.building, d.household_id, d.id"
    chunks: list[bytes] = []
    copy_sql = f"COPY ({query}) TO STDOUT (FORMAT csv, HEADER)"
    async with conn.cursor() as cur, cur.copy(copy_sql, params) as copy:
        async for data in copy:
            chunks.append(bytes(data))
    name = f"fleet-health-{community or 'all'}-{params['today'].isoformat()}.csv"
    return Response(
        b"".join(chunks),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
