"""The compiled engine: the reading-driven rules of gas_rules and meter_rules, in numba.

`FleetState(engine="compiled")` (or "auto" with numba installed) routes
`evaluate_detectors` and `evaluate_meters` here; everything else (validation, sweep,
status, registry) is shared with the NumPy engine. That engine (gas_rules, meter_rules)
is the specification: this one must give bit-identical state and Effects
(tests/unit/test_kernels.py checks it on random fleets). The kernels (kernels.py) read
the SAME per-model threshold columns (`ThresholdTable.matrix`, packed by dtype into three
small matrices) and the SAME gas transition table (`GasMachine.table`, `gas_offset`), so
the rules' numbers are defined once.

Here: the kernels' output buffers, kept per state in `FleetState.engine_buffers` and
reused from batch to batch; Effects built from copies of their filled prefixes; and
`warm_up()`, which compiles the kernels or loads them from their cache. Call it before
serving (FleetState construction with the compiled engine does), so that no request ever
waits for the compiler or the cache load.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from gateway.core.alarms import DeviceKind
from gateway.core.effects import Effects
from gateway.core.fleet import FleetState
from gateway.core.kernels import (
    F32_COLUMNS,
    F64_COLUMNS,
    MAX_CHANGES,
    NO_MODEL,
    U8_COLUMNS,
    WRONG_KIND,
    detector_kernel,
    meter_kernel,
)
from gateway.core.thresholds import ThresholdTable

__all__ = ["evaluate_detectors", "evaluate_meters", "warm_up"]


class _Workspace:
    """Output buffers of one FleetState, reused from batch to batch (grown as needed), and
    its threshold table as the kernels read it (`_packed`)."""

    __slots__ = (
        "c_kind",
        "c_slot",
        "c_ts",
        "cnt",
        "packed",
        "packed_rows",
        "r_fam",
        "r_kind",
        "r_slot",
        "r_ts",
        "r_val",
        "readings",
        "v_cause",
        "v_meter",
        "v_trig",
    )

    def __init__(self, readings: int) -> None:
        self.readings = readings
        self.packed: tuple[np.ndarray, ...] = ()
        self.packed_rows = -1
        n = readings * MAX_CHANGES
        self.r_slot = np.empty(n, np.int32)
        self.r_kind = np.empty(n, np.uint8)
        self.r_val = np.empty(n, np.float32)
        self.r_ts = np.empty(n, np.float64)
        self.r_fam = np.empty(n, np.bool_)
        self.c_slot = np.empty(n, np.int32)
        self.c_kind = np.empty(n, np.uint8)
        self.c_ts = np.empty(n, np.float64)
        self.v_meter = np.empty(readings, np.int32)
        self.v_cause = np.empty(readings, np.uint8)
        self.v_trig = np.empty(readings, np.int32)
        self.cnt = np.zeros(3, np.int64)

    def outputs(self) -> tuple[np.ndarray, ...]:
        return (
            self.r_slot,
            self.r_kind,
            self.r_val,
            self.r_ts,
            self.r_fam,
            self.c_slot,
            self.c_kind,
            self.c_ts,
            self.v_meter,
            self.v_cause,
            self.v_trig,
            self.cnt,
        )

    def effects(self) -> Effects:
        nr, nc, nv = (int(c) for c in self.cnt)
        if nr == 0 and nc == 0 and nv == 0:
            return Effects.empty()
        return Effects(
            self.r_slot[:nr].copy(),
            self.r_kind[:nr].copy(),
            self.r_val[:nr].copy(),
            self.r_ts[:nr].copy(),
            self.r_fam[:nr].copy(),
            self.c_slot[:nc].copy(),
            self.c_kind[:nc].copy(),
            self.c_ts[:nc].copy(),
            self.v_meter[:nv].copy(),
            self.v_cause[:nv].copy(),
            self.v_trig[:nv].copy(),
        )


def _workspace(state: FleetState, n: int) -> _Workspace:
    ws: _Workspace | None = state.engine_buffers
    if ws is None or ws.readings < n:
        ws = _Workspace(max(n, 1024, 0 if ws is None else 2 * ws.readings))
        state.engine_buffers = ws
    return ws


def _packed(ws: _Workspace, table: ThresholdTable) -> tuple[np.ndarray, ...]:
    """The threshold columns the kernels read, one row per model, packed by dtype, and the
    gas transition table with each model's offset into it; kept until the table grows."""
    if ws.packed_rows != table.n_rows:
        ws.packed = (
            table.matrix(F32_COLUMNS),
            table.matrix(F64_COLUMNS),
            table.matrix(U8_COLUMNS),
            np.ascontiguousarray(table.columns["gas_offset"], dtype=np.intp),
            np.ascontiguousarray(table.gas.table),
        )
        ws.packed_rows = table.n_rows
    return ws.packed


def _arg(a: np.ndarray) -> np.ndarray:
    """An input in the one array type the kernels are compiled for (C, writeable)."""
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = a.copy()
    return a


def evaluate_detectors(
    state: FleetState, s: np.ndarray, ch4: np.ndarray, fault: np.ndarray, ts: np.ndarray, now: float
) -> Effects:
    """gas_rules.evaluate_detectors after its validation (slots intp, ch4 float32 without
    NaN, fault uint32, ts float64, all one length)."""
    if s.size == 0:
        return Effects.empty()
    ws = _workspace(state, s.size)
    th32, th64, thu8, gas_offset, gas_table = _packed(ws, state.table)
    status = detector_kernel(
        state.records_bytes,
        state.rise_lel,
        state.rise_ts,
        state.meter_slot,
        th32,
        th64,
        thu8,
        gas_offset,
        gas_table,
        _arg(s),
        _arg(ch4),
        _arg(fault),
        _arg(ts),
        float(now),
        *ws.outputs(),
    )
    _raise_for(status, "detector")
    return ws.effects()


def evaluate_meters(
    state: FleetState,
    s: np.ndarray,
    flow: np.ndarray,
    valve: np.ndarray,
    batt: np.ndarray,
    ts: np.ndarray,
    now: float,
) -> Effects:
    """meter_rules.evaluate_meters after its validation (slots intp, flow and batt float32,
    valve uint8, ts float64, all one length)."""
    if s.size == 0:
        return Effects.empty()
    ws = _workspace(state, s.size)
    th32, th64, thu8, _, _ = _packed(ws, state.table)
    status = meter_kernel(
        state.records_bytes,
        th32,
        th64,
        thu8,
        _arg(s),
        _arg(flow),
        _arg(valve),
        _arg(batt),
        _arg(ts),
        float(now),
        *ws.outputs(),
    )
    _raise_for(status, "meter")
    return ws.effects()


def _raise_for(status: int, kind: str) -> None:
    if status == WRONG_KIND:  # the NumPy engine's checks and messages
        raise ValueError(f"every slot must be a {kind}")
    if status == NO_MODEL:  # the NumPy engine fails on the lookup: IndexError
        raise IndexError("a slot's model has no row in the threshold table")


_warm_lock = threading.Lock()
_warm_seconds: float | None = None


def warm_up() -> float:
    """Compile the kernels, or load them from the cache, by running them on a tiny fleet.

    Idempotent and cheap after the first call; returns the seconds the first call took.
    FleetState construction with the compiled engine calls it, so a gateway is warm
    before it serves (gateway.service builds its FleetState at startup).
    """
    global _warm_seconds
    with _warm_lock:
        if _warm_seconds is not None:
            return _warm_seconds
        t0 = time.perf_counter()
        st = FleetState(capacity=4, engine="numpy")
        meter = st.add_devices([DeviceKind.METER], [0], [-1], [0], [2.5], [0.0], 0.0)
        det = st.add_devices([DeviceKind.DETECTOR], [0], meter, [0], [np.nan], [0.0], 0.0)
        one = np.ones(1)
        evaluate_detectors(
            st, det.astype(np.intp), np.full(1, 45.0, np.float32), np.zeros(1, np.uint32), one, 1.0
        )
        evaluate_meters(
            st,
            meter.astype(np.intp),
            np.full(1, 9.0, np.float32),
            np.zeros(1, np.uint8),
            np.full(1, 3.6, np.float32),
            one,
            1.0,
        )
        _warm_seconds = time.perf_counter() - t0
        return _warm_seconds
