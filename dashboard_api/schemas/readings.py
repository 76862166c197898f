"""A device's readings: the raw points of a detector or a meter, with the window they came
from and a cursor, and the time-bucketed min/max/avg of its main value for charts.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import ConfigDict, Field

from dashboard_api.schemas.common import DeviceKind, Model


class DetectorPoint(Model):
    time: dt.datetime
    seq: int
    ch4_lel: float
    fault: int
    flags: int


class MeterPoint(Model):
    time: dt.datetime
    seq: int
    vol_m3: float
    flow_m3h: float
    valve: Literal["open", "closed", "fault"]
    batt_v: float
    rssi: int
    flags: int


class RawReadings(Model):
    device_id: str
    kind: DeviceKind
    start: dt.datetime
    end: dt.datetime
    points: list[DetectorPoint] | list[MeterPoint]
    next_cursor: str | None = Field(description="More readings in the window: pass as `cursor`.")


class Bucket(Model):
    """min/max/avg of the device's main value (ch4 %LEL or flow m3/h) in one bucket."""

    bucket: dt.datetime
    count: int
    min: float
    max: float
    avg: float
    fault_any: int | None = Field(default=None, description="Detectors: OR of fault masks.")
    vol_m3_last: float | None = Field(default=None, description="Meters: last volume.")
    batt_v_min: float | None = Field(default=None, description="Meters: lowest battery.")


class BucketedReadings(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "device_id": "d000042a",
                    "kind": "detector",
                    "value": "ch4_lel",
                    "start": "2026-10-01T00:00:00Z",
                    "end": "2026-10-02T00:00:00Z",
                    "bucket_s": 3600,
                    "buckets": [
                        {
                            "bucket": "2026-10-01T00:00:00Z",
                            "count": 12,
                            "min": 0.0,
                            "max": 1.5,
                            "avg": 0.4,
                            "fault_any": 0,
                        }
                    ],
                }
            ]
        },
    )
    device_id: str
    kind: DeviceKind
    value: Literal["ch4_lel", "flow_m3h"]
    start: dt.datetime
    end: dt.datetime
    bucket_s: int
    buckets: list[Bucket]
