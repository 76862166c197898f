"""The binary COPY payloads of a batch's readings, built column-wise by NumPy.

The writer streams readings into `detector_readings` and `meter_readings` by
`COPY ... FROM STDIN (FORMAT BINARY)`; this module turns a `Readings` block (slots into the
device registry plus value columns) into those bytes without a Python loop per row. It is
apart from the writer's thread so that the row layout (field widths, column order) can be
read and tested on its own; the framing itself is gateway.storage.copy_format's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gateway.core.registry import Registry
from gateway.storage import copy_format
from gateway.storage.rows import Readings

DET_HEAD = copy_format.field_dtype([("nfields", ""), ("time", ">i8"), ("device", "")])
DET_TAIL = copy_format.field_dtype(
    [("seq", ">i8"), ("ch4", ">f4"), ("fault", ">i4"), ("received", ">i8"), ("flags", ">i2")]
)
MET_HEAD = DET_HEAD
MET_TAIL = copy_format.field_dtype(
    [
        ("seq", ">i8"),
        ("vol", ">f8"),
        ("flow", ">f4"),
        ("valve", ">i2"),
        ("batt", ">f4"),
        ("rssi", ">i2"),
        ("received", ">i8"),
        ("flags", ">i2"),
    ]
)
DET_COLS = "time, device_id, seq, ch4_lel, fault, received_at, flags"
MET_COLS = "time, device_id, seq, vol_m3, flow_m3h, valve, batt_v, rssi, received_at, flags"


def copy_chunks(registry: Registry, r: Readings, kind: str) -> Iterator[bytes]:
    """The binary COPY data of `r`, in pieces (see copy_format.chunk_bounds)."""
    for lo, hi, header, trailer in copy_format.chunk_bounds(len(r)):
        part = (
            r
            if (lo, hi) == (0, len(r))
            else Readings(
                r.slot[lo:hi],
                r.seq[lo:hi],
                r.time[lo:hi],
                r.received[lo:hi],
                r.flags[lo:hi],
                {k: v[lo:hi] for k, v in r.values.items()},
            )
        )
        yield copy_payload(registry, part, kind, header, trailer)


def copy_payload(
    registry: Registry, r: Readings, kind: str, header: bool = True, trailer: bool = True
) -> bytes:
    """One piece of COPY data: the rows of `r` (`kind` "detector" or "meter"), framed."""
    n = len(r)
    slots = r.slot
    head = np.empty(n, DET_HEAD)
    head["nfields"] = 7 if kind == "detector" else 10
    head["time_len"] = 8
    head["time"] = copy_format.pg_micros(r.time)
    id_start, id_len = registry.id_spans(slots)
    head["device_len"] = id_len
    if kind == "detector":
        tail = np.empty(n, DET_TAIL)
        tail["ch4"] = r.values["ch4"]
        tail["fault"] = r.values["fault"]
        for name, width in (("seq", 8), ("ch4", 4), ("fault", 4), ("received", 8), ("flags", 2)):
            tail[name + "_len"] = width
    else:
        tail = np.empty(n, MET_TAIL)
        for name in ("vol", "flow", "valve", "batt", "rssi"):
            tail[name] = r.values[name]
        for name, width in (
            ("seq", 8),
            ("vol", 8),
            ("flow", 4),
            ("valve", 2),
            ("batt", 4),
            ("rssi", 2),
            ("received", 8),
            ("flags", 2),
        ):
            tail[name + "_len"] = width
    tail["seq"] = r.seq
    tail["received"] = copy_format.pg_micros(r.received)
    tail["flags"] = r.flags
    return copy_format.assemble(
        head,
        registry.id_bytes,
        id_start,
        id_len,
        tail,
        header,
        trailer,
    )
