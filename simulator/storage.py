"""What reached the database: stored readings counted by device and sequence number.

Loss accounting is exact: for every device the simulator knows the first and last seq it
used and how many readings it sent in between (events and deliberate gaps take seqs too);
the platform stored them all if it holds that many distinct (device, seq) reading rows in
the range. Duplicates (redeliveries, deliberate repeats) count once.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence

import numpy as np
import psycopg

from simulator.chaos import SKEW_S

_COUNT = """
WITH s(device_id, lo, hi) AS (SELECT * FROM unnest(%(ids)s::text[], %(lo)s::bigint[],
                                                   %(hi)s::bigint[]))
SELECT (SELECT count(*) FROM (SELECT DISTINCT r.device_id, r.seq FROM detector_readings r
          JOIN s ON r.device_id = s.device_id AND r.seq BETWEEN s.lo AND s.hi
          WHERE r.time >= %(since)s) x)
     + (SELECT count(*) FROM (SELECT DISTINCT r.device_id, r.seq FROM meter_readings r
          JOIN s ON r.device_id = s.device_id AND r.seq BETWEEN s.lo AND s.hi
          WHERE r.time >= %(since)s) y)
"""


def count_stored(
    dsn: str, ids: Sequence[str], lo: np.ndarray, hi: np.ndarray, since_wall: float
) -> int:
    """Distinct stored readings of `ids` with seq in [lo, hi] and time after `since_wall`.

    The platform stores a reading whose clock is far off at its receive time; a platform
    that keeps the device's time instead still has it within the simulator's largest
    deliberate skew (a day), so that bounds the scan (two or three daily chunks).
    """
    if not len(ids):
        return 0
    since = dt.datetime.fromtimestamp(since_wall - SKEW_S - 600, dt.UTC)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            _COUNT, {"ids": list(ids), "lo": lo.tolist(), "hi": hi.tolist(), "since": since}
        ).fetchone()
    return int(row[0]) if row else 0


def wait_stored(
    dsn: str,
    ids: Sequence[str],
    lo: np.ndarray,
    hi: np.ndarray,
    since_wall: float,
    expected: int,
    settle_s: float = 10.0,
    max_wait_s: float = 60.0,
) -> tuple[int, float]:
    """Poll until all `expected` readings are stored or the count stops growing.

    Returns (stored, seconds waited)."""
    t0 = time.monotonic()
    last, last_change = -1, t0
    while True:
        n = count_stored(dsn, ids, lo, hi, since_wall)
        now = time.monotonic()
        if n >= expected or now - t0 > max_wait_s:
            return n, now - t0
        if n != last:
            last, last_change = n, now
        elif now - last_change > settle_s:
            return n, now - t0
        time.sleep(0.5)


def last_seqs(dsn: str, ids: Sequence[str]) -> dict[str, int]:
    """Next seq per device from the platform's device_state, where it knows one."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT device_id, last_seq FROM device_state"
            " WHERE device_id = ANY(%s) AND last_seq IS NOT NULL",
            (list(ids),),
        ).fetchall()
    return {d: int(s) + 1 for d, s in rows}


def platform_state(
    dsn: str, household_ids: Sequence[str], meter_ids: Sequence[str]
) -> tuple[set[str], set[str]]:
    """(households the platform still has business with, meters it last saw closed).

    A rerun must not inject a leak where an alarm is still open or a work order unresolved:
    the platform rightly would not cut again, and the run would score a miss. A meter
    whose valve was left closed by an earlier run starts closed, as the real one would."""
    with psycopg.connect(dsn) as conn:
        busy = {
            r[0]
            for r in conn.execute(
                "SELECT household_id FROM alarms WHERE household_id = ANY(%(h)s)"
                " AND cleared_at IS NULL AND state <> 'cleared'"
                " UNION SELECT household_id FROM work_orders WHERE household_id = ANY(%(h)s)"
                " AND status IN ('open', 'dispatched', 'on_site')"
                " UNION SELECT household_id FROM valve_commands WHERE household_id = ANY(%(h)s)"
                " AND state IN ('issued', 'sent', 'timeout', 'escalated')",
                {"h": list(household_ids)},
            )
        }
        closed = {
            r[0]
            for r in conn.execute(
                "SELECT device_id FROM device_state WHERE device_id = ANY(%s) AND valve = 'closed'",
                (list(meter_ids),),
            )
        }
    return busy, closed
