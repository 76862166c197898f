"""Daily rollups of readings, so a device's year in day-wide buckets reads 365 rows instead
of a full-resolution year through 365 daily chunks (the Apache TimescaleDB build has no
continuous aggregates; this is the do-it-yourself kind).

`reading_days` holds, per device and UTC day: count, min, max and sum of the main value
(ch4 %LEL or flow m3/h), the OR of fault masks (detectors), the last volume and its time
and the lowest battery (meters). `reading_rollup_state` holds the covered range [lo, hi):
every day in it is rolled up. A day is rolled once it is final, when `today >= day + 2`
(a day's grace for buffered and spooled readings); readings that arrive later than that
still show raw but not in day-wide buckets. Rollups outlive the raw chunks that retention
drops, so year views keep working past the retention horizon.

`step(conn, today)` does one unit of work (extend hi by a day, else backfill lo by a day,
towards the oldest chunk) under an advisory lock, so any number of API processes may run
`RollupWorker`; it returns the day rolled, or None when there is nothing to do. The
bucketed-readings route merges rollups for the covered days with raw readings for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

DAY = dt.timedelta(days=1)
GRACE_DAYS = 1  # day D is final when today >= D + 1 + GRACE_DAYS
_LOCK_KEY = 0x6A5_D175

_ROLL_DETECTORS = """
INSERT INTO reading_days (device_id, day, n, vmin, vmax, vsum, fault_or)
SELECT device_id, %(day)s, count(*), min(ch4_lel), max(ch4_lel), sum(ch4_lel), bit_or(fault)
FROM detector_readings WHERE time >= %(day)s AND time < %(next)s GROUP BY device_id
"""
_ROLL_METERS = """
INSERT INTO reading_days (device_id, day, n, vmin, vmax, vsum, vol_last, vol_last_time,
                          batt_min)
SELECT device_id, %(day)s, count(*), min(flow_m3h), max(flow_m3h), sum(flow_m3h),
       last(vol_m3, time), max(time), min(batt_v)
FROM meter_readings WHERE time >= %(day)s AND time < %(next)s GROUP BY device_id
"""
_OLDEST_CHUNK = """
SELECT min(range_start) AS oldest FROM timescaledb_information.chunks
WHERE hypertable_name IN ('detector_readings', 'meter_readings')
"""


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def day_floor(t: dt.datetime) -> dt.datetime:
    return midnight(t.astimezone(dt.UTC).date())


def day_ceil(t: dt.datetime) -> dt.datetime:
    floor = day_floor(t)
    return floor if floor == t else floor + DAY


async def covered(conn: AsyncConnection[Any]) -> tuple[dt.datetime, dt.datetime] | None:
    row = await (await conn.execute("SELECT lo, hi FROM reading_rollup_state")).fetchone()
    if row is None:
        return None
    lo, hi = (row["lo"], row["hi"]) if isinstance(row, dict) else row
    return (lo, hi) if lo < hi else None


async def roll_day(conn: AsyncConnection[Any], day: dt.datetime) -> None:
    """(Re)compute one day's rollups, in the caller's transaction."""
    params = {"day": day, "next": day + DAY}
    await conn.execute("DELETE FROM reading_days WHERE day = %(day)s", params)
    await conn.execute(_ROLL_DETECTORS, params)
    await conn.execute(_ROLL_METERS, params)


async def step(conn: AsyncConnection[Any], today: dt.date) -> dt.datetime | None:
    """Roll one more day if one is due; None when the rollups are complete (or another
    process holds the lock)."""
    final_before = midnight(today) - GRACE_DAYS * DAY  # days < this are final
    async with conn.transaction():
        locked = await (
            await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (_LOCK_KEY,))
        ).fetchone()
        if not _first(locked):
            return None
        state = await (
            await conn.execute("SELECT lo, hi FROM reading_rollup_state FOR UPDATE")
        ).fetchone()
        oldest_row = await (await conn.execute(_OLDEST_CHUNK)).fetchone()
        oldest = _first(oldest_row)
        if state is None:
            if oldest is None:
                return None
            start = min(day_floor(oldest), final_before)
            await conn.execute(
                "INSERT INTO reading_rollup_state (lo, hi) VALUES (%s, %s)", (start, start)
            )
            lo = hi = start
        else:
            lo, hi = (state["lo"], state["hi"]) if isinstance(state, dict) else state
        if hi < final_before:
            await roll_day(conn, hi)
            await conn.execute("UPDATE reading_rollup_state SET hi = %s", (hi + DAY,))
            return hi
        if oldest is not None and day_floor(oldest) < lo:
            day = lo - DAY
            await roll_day(conn, day)
            await conn.execute("UPDATE reading_rollup_state SET lo = %s", (day,))
            return day
    return None


def _first(row: Any) -> Any:
    if row is None:
        return None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


@dataclass
class RollupWorker:
    """Runs `step` in the background: back to back while behind (with a pause that leaves
    the database to the gateway), then every `idle_s`."""

    pool: AsyncConnectionPool[Any]
    clock: Callable[[], dt.datetime]
    idle_s: float = 300.0
    pause_s: float = 0.5
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reading-rollups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with self.pool.connection() as conn:
                    day = await step(conn, self.clock().date())
                if day is not None:
                    logger.info("rolled up readings day=%s", day.date())
                await asyncio.sleep(self.pause_s if day is not None else self.idle_s)
            except asyncio.CancelledError:
                raise
            except psycopg.Error as err:
                logger.warning("reading rollup failed error=%s retry_in_s=%.0f", err, self.idle_s)
                await asyncio.sleep(self.idle_s)
