"""Writes the devices that changed (`device_state.Changes`) into `device_state`: one binary
COPY into a staging table and one set-based upsert, on a connection of its own so that a
cache of latest values never slows the readings' commits."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg

from gateway.core.registry import Registry
from gateway.storage import copy_format
from gateway.storage.device_state import Changes

_HEAD = copy_format.field_dtype([("nfields", ""), ("device", "")])
_DET_TAIL = copy_format.field_dtype(
    [("online", "u1"), ("last_seen", ">i8"), ("seq", ">i8"), ("ch4", ">f4"), ("fault", ">i4")]
)
_MET_TAIL = copy_format.field_dtype(
    [
        ("online", "u1"),
        ("last_seen", ">i8"),
        ("seq", ">i8"),
        ("flow", ">f4"),
        ("vol", ">f8"),
        ("valve", ">i2"),
        ("batt", ">f4"),
        ("rssi", ">i2"),
    ]
)
DET_COLUMNS = "device_id, online, last_seen, last_seq, ch4_lel, fault"
MET_COLUMNS = "device_id, online, last_seen, last_seq, flow_m3h, vol_m3, valve_code, batt_v, rssi"


def _payload(
    registry: Registry,
    slots: np.ndarray,
    rows: np.ndarray,
    tail_dtype: np.dtype,
    nfields: int,
    values: dict[str, Any],
) -> bytes:
    n = len(slots)
    head = np.empty(n, _HEAD)
    head["nfields"] = nfields
    id_start, id_len = registry.id_spans(slots)
    head["device_len"] = id_len
    tail = np.empty(n, tail_dtype)
    widths = {
        "online": 1,
        "last_seen": 8,
        "seq": 8,
        "ch4": 4,
        "fault": 4,
        "flow": 4,
        "vol": 8,
        "valve": 2,
        "batt": 4,
        "rssi": 2,
    }
    for name in tail_dtype.names or ():
        if name.endswith("_len"):
            tail[name] = widths[name[:-4]]
    tail["online"] = 1
    tail["last_seen"] = copy_format.pg_micros(rows["time"])
    tail["seq"] = rows["seq"]
    for name, value in values.items():
        tail[name] = value
    return copy_format.assemble(head, registry.id_bytes, id_start, id_len, tail)


_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_device_state (device_id text, online boolean,"
    " last_seen timestamptz, last_seq bigint, ch4_lel real, fault integer, flow_m3h real,"
    " vol_m3 double precision, valve_code smallint, batt_v real, rssi smallint,"
    " firmware text) ON COMMIT DELETE ROWS"
)
_UPSERT = (
    "INSERT INTO device_state (device_id, online, last_seen, last_seq, ch4_lel, fault,"
    " flow_m3h, vol_m3, valve, batt_v, rssi, firmware, updated_at)"
    " SELECT device_id, online, last_seen, last_seq, ch4_lel, fault, flow_m3h, vol_m3,"
    " (ARRAY['open', 'closed', 'fault'])[valve_code + 1], batt_v, rssi, firmware, now()"
    " FROM stage_device_state"
    " ON CONFLICT (device_id) DO UPDATE SET online = excluded.online,"
    " last_seen = coalesce(excluded.last_seen, device_state.last_seen),"
    " last_seq = coalesce(excluded.last_seq, device_state.last_seq),"
    " ch4_lel = coalesce(excluded.ch4_lel, device_state.ch4_lel),"
    " fault = coalesce(excluded.fault, device_state.fault),"
    " flow_m3h = coalesce(excluded.flow_m3h, device_state.flow_m3h),"
    " vol_m3 = coalesce(excluded.vol_m3, device_state.vol_m3),"
    " valve = coalesce(excluded.valve, device_state.valve),"
    " batt_v = coalesce(excluded.batt_v, device_state.batt_v),"
    " rssi = coalesce(excluded.rssi, device_state.rssi),"
    " firmware = coalesce(excluded.firmware, device_state.firmware),"
    " updated_at = now()"
)


def write_changes(cur: psycopg.Cursor[Any], registry: Registry, ch: Changes) -> None:
    """Readings' latest values by binary COPY into a staging table, one upsert; then the
    statuses (a device may have both in one round, and one upsert may touch a row once)."""
    cur.execute(_STAGE)
    if len(ch.det_slots):
        data = _payload(
            registry,
            ch.det_slots,
            ch.det,
            _DET_TAIL,
            6,
            {"ch4": ch.det["ch4"], "fault": ch.det["fault"].astype(np.int64)},
        )
        with cur.copy(f"COPY stage_device_state ({DET_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(data)
    if len(ch.met_slots):
        m = ch.met
        data = _payload(
            registry,
            ch.met_slots,
            m,
            _MET_TAIL,
            9,
            {
                "flow": m["flow"],
                "vol": m["vol"],
                "valve": m["valve"],
                "batt": m["batt"],
                "rssi": m["rssi"],
            },
        )
        with cur.copy(f"COPY stage_device_state ({MET_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(data)
    if len(ch.det_slots) or len(ch.met_slots):
        cur.execute(_UPSERT)
    if ch.status:
        cur.execute("TRUNCATE stage_device_state")
        with cur.copy("COPY stage_device_state (device_id, online, firmware) FROM STDIN") as cp:
            for slot, (online, fw) in ch.status.items():
                cp.write_row((registry.ids[slot], online, fw))
        cur.execute(_UPSERT)


class StateWriter:
    """device_state upserts on their own connection: a cache of latest values must never
    slow the readings' commits (and their acknowledgements)."""

    def __init__(self, dsn: str, registry: Registry) -> None:
        self.dsn = dsn
        self.registry = registry
        self._conn: psycopg.Connection[Any] | None = None

    def write(self, changes: Changes) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, connect_timeout=3)
            with self._conn.transaction(), self._conn.cursor() as cur:
                write_changes(cur, self.registry, changes)
            return True
        except psycopg.OperationalError:
            self._conn = None
            return False
