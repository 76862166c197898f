"""One device's readings over a time window, raw (paged) or bucketed with time_bucket.

Every query is bounded: the window is at most settings.api.max_range_days, a raw page at
most settings.api.max_points readings, and a bucketed answer at most max_points buckets;
beyond them the answer is 422 naming the parameter to change. Windows are [start, end).
Buckets a whole number of days wide read whole days from the daily rollups where they
exist (dashboard_api.rollup) and the rest raw; the two merge exactly.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from psycopg import AsyncConnection

from dashboard_api import pagination, rollup
from dashboard_api.deps import AppState, State, Viewer
from dashboard_api.errors import Invalid, NotFound
from dashboard_api.params import Cursor, ident
from dashboard_api.reads import MAY_LAG, LagConn
from dashboard_api.schemas import BucketedReadings, Instant, RawReadings

router = APIRouter(prefix="/devices", tags=["readings"])

DeviceId = Annotated[str, ident("d000042a")]
Start = Annotated[
    Instant | None, Query(description="Window start (inclusive); default: a day before end.")
]
End = Annotated[Instant | None, Query(description="Window end (exclusive); default: now.")]

BUCKET_RE = re.compile(r"([1-9][0-9]{0,5})(s|m|h|d)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_DETECTOR_RAW = """
    SELECT time, seq, ch4_lel, fault, flags FROM detector_readings
    WHERE device_id = %(d)s AND time >= %(start)s AND time < %(end)s {after}
    ORDER BY time, seq LIMIT %(n)s"""
_METER_RAW = """
    SELECT time, seq, vol_m3, flow_m3h,
           (CASE valve WHEN 0 THEN 'open' WHEN 1 THEN 'closed' ELSE 'fault' END) AS valve,
           batt_v, rssi, flags FROM meter_readings
    WHERE device_id = %(d)s AND time >= %(start)s AND time < %(end)s {after}
    ORDER BY time, seq LIMIT %(n)s"""
_AFTER = "AND (time, seq) > (%(at)s, %(aseq)s)"

# Buckets are built from partial aggregates (count, min, max, sum, ...) so that raw readings
# and daily rollups (dashboard_api.rollup) of one window merge exactly.
_DETECTOR_PARTIALS = """
    SELECT time_bucket(make_interval(secs => %(b)s), time) AS bucket, count(*) AS n,
           min(ch4_lel) AS vmin, max(ch4_lel) AS vmax, sum(ch4_lel) AS vsum,
           bit_or(fault) AS fault_or
    FROM detector_readings
    WHERE device_id = %(d)s AND time >= %(start)s AND time < %(end)s
    GROUP BY bucket"""
_METER_PARTIALS = """
    SELECT time_bucket(make_interval(secs => %(b)s), time) AS bucket, count(*) AS n,
           min(flow_m3h) AS vmin, max(flow_m3h) AS vmax, sum(flow_m3h) AS vsum,
           last(vol_m3, time) AS vol_last, max(time) AS vol_last_time,
           min(batt_v) AS batt_min
    FROM meter_readings
    WHERE device_id = %(d)s AND time >= %(start)s AND time < %(end)s
    GROUP BY bucket"""
_ROLLUP_PARTIALS = """
    SELECT time_bucket(make_interval(secs => %(b)s), day) AS bucket, sum(n) AS n,
           min(vmin) AS vmin, max(vmax) AS vmax, sum(vsum) AS vsum,
           bit_or(fault_or) AS fault_or, last(vol_last, vol_last_time) AS vol_last,
           max(vol_last_time) AS vol_last_time, min(batt_min) AS batt_min
    FROM reading_days
    WHERE device_id = %(d)s AND day >= %(start)s AND day < %(end)s
    GROUP BY bucket"""


def merge(partials: list[dict[str, Any]], meter: bool) -> list[dict[str, Any]]:
    """Partial aggregates of the same buckets (from raw ranges and rollups) -> buckets."""
    acc: dict[dt.datetime, dict[str, Any]] = {}
    for p in partials:
        a = acc.get(p["bucket"])
        if a is None:
            acc[p["bucket"]] = dict(p)
            continue
        a["n"] += p["n"]
        a["vmin"] = min(a["vmin"], p["vmin"])
        a["vmax"] = max(a["vmax"], p["vmax"])
        a["vsum"] += p["vsum"]
        if meter:
            a["batt_min"] = min(a["batt_min"], p["batt_min"])
            if p["vol_last_time"] > a["vol_last_time"]:
                a["vol_last"], a["vol_last_time"] = p["vol_last"], p["vol_last_time"]
        else:
            a["fault_or"] = (a["fault_or"] or 0) | (p["fault_or"] or 0)
    out = []
    for bucket in sorted(acc):
        a = acc[bucket]
        b = {
            "bucket": bucket,
            "count": int(a["n"]),
            "min": a["vmin"],
            "max": a["vmax"],
            "avg": float(a["vsum"]) / a["n"],
        }
        if meter:
            b.update(vol_m3_last=a["vol_last"], batt_v_min=a["batt_min"])
        else:
            b["fault_any"] = a["fault_or"]
        out.append(b)
    return out


def plan(
    start: dt.datetime,
    end: dt.datetime,
    width_s: int,
    covered: tuple[dt.datetime, dt.datetime] | None,
) -> tuple[list[tuple[dt.datetime, dt.datetime]], tuple[dt.datetime, dt.datetime] | None]:
    """Which parts of [start, end) to read raw, and which from the daily rollups: whole
    covered days, when buckets are whole days (each day then lies inside one bucket)."""
    if covered is None or width_s % 86400:
        return [(start, end)], None
    lo = max(covered[0], rollup.day_ceil(start))
    hi = min(covered[1], rollup.day_floor(end))
    if lo >= hi:
        return [(start, end)], None
    raw = [(a, b) for a, b in ((start, lo), (hi, end)) if a < b]
    return raw, (lo, hi)


def window(
    start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime, max_days: int
) -> tuple[dt.datetime, dt.datetime]:
    end = end or now
    start = start or end - dt.timedelta(days=1)
    if start >= end:
        raise Invalid("start", "must be before end")
    if end - start > dt.timedelta(days=max_days):
        raise Invalid("start", f"the window is longer than {max_days} days")
    return start, end


def bucket_seconds(text: str) -> int:
    m = BUCKET_RE.fullmatch(text)
    if m is None:
        raise Invalid("bucket", "a number and a unit s, m, h or d, such as 15m or 1h")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


async def device_kind(conn: AsyncConnection[Any], device_id: str) -> str:
    row = await (
        await conn.execute("SELECT kind FROM devices WHERE id = %s", (device_id,))
    ).fetchone()
    if row is None:
        raise NotFound(f"no device {device_id}")
    return str(row["kind"])


async def raw_readings(
    conn: AsyncConnection[Any],
    kind: str,
    device_id: str,
    start: dt.datetime,
    end: dt.datetime,
    limit: int,
    after: tuple[Any, Any] | None = None,
) -> list[dict[str, Any]]:
    sql = _METER_RAW if kind == "meter" else _DETECTOR_RAW
    params: dict[str, Any] = {"d": device_id, "start": start, "end": end, "n": limit}
    if after:
        params.update(at=after[0], aseq=after[1])
    cur = await conn.execute(sql.format(after=_AFTER if after else ""), params)
    return await cur.fetchall()


def _max_points(state: AppState) -> int:
    return state.settings.api.max_points


@router.get(
    "/{device_id}/readings",
    response_model=RawReadings,
    summary="A device's readings in a window, oldest first, paged",
    responses=MAY_LAG,
)
async def readings(
    device_id: DeviceId,
    conn: LagConn,
    _: Viewer,
    state: State,
    start: Start = None,
    end: End = None,
    limit: Annotated[
        int,
        Query(ge=1, le=100_000, description=("Readings per page, at most settings.api.max_points")),
    ] = 1000,
    cursor: Cursor = None,
) -> dict[str, Any]:
    start, end = window(start, end, state.clock(), state.settings.api.max_range_days)
    if limit > _max_points(state):
        raise Invalid("limit", f"at most {_max_points(state)} readings a page")
    after = pagination.decode(cursor, dt.datetime, int)
    kind = await device_kind(conn, device_id)
    rows = await raw_readings(conn, kind, device_id, start, end, limit + 1, after)
    points, nxt = pagination.page(rows, limit, lambda r: (r["time"], r["seq"]))
    return {
        "device_id": device_id,
        "kind": kind,
        "start": start,
        "end": end,
        "points": points,
        "next_cursor": nxt,
    }


@router.get(
    "/{device_id}/readings/buckets",
    response_model=BucketedReadings,
    summary="A device's readings in time buckets: count, min, max, avg",
    responses=MAY_LAG,
)
async def bucketed(
    device_id: DeviceId,
    conn: LagConn,
    _: Viewer,
    state: State,
    bucket: Annotated[
        str, Query(max_length=16, examples=["1h"], description="Bucket width: 30s, 15m, 1h, 1d")
    ],
    start: Start = None,
    end: End = None,
) -> dict[str, Any]:
    start, end = window(start, end, state.clock(), state.settings.api.max_range_days)
    width = bucket_seconds(bucket)
    buckets = math.ceil((end - start).total_seconds() / width)
    if buckets > _max_points(state):
        raise Invalid(
            "bucket",
            f"{buckets} buckets in this window; at most "
            f"{_max_points(state)}: widen the bucket or narrow the window",
        )
    kind = await device_kind(conn, device_id)
    meter = kind == "meter"
    raw_ranges, from_rollups = plan(start, end, width, await rollup.covered(conn))
    partials: list[dict[str, Any]] = []
    for a, b in raw_ranges:
        cur = await conn.execute(
            _METER_PARTIALS if meter else _DETECTOR_PARTIALS,
            {"b": width, "d": device_id, "start": a, "end": b},
        )
        partials += await cur.fetchall()
    if from_rollups:
        cur = await conn.execute(
            _ROLLUP_PARTIALS,
            {"b": width, "d": device_id, "start": from_rollups[0], "end": from_rollups[1]},
        )
        partials += await cur.fetchall()
    rows = merge(partials, meter)
    return {
        "device_id": device_id,
        "kind": kind,
        "value": "flow_m3h" if kind == "meter" else "ch4_lel",
        "start": start,
        "end": end,
        "bucket_s": width,
        "buckets": rows,
    }
