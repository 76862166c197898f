"""Compiled detection engine: the reading-driven rules of gateway/detection.py in numba.

`FleetState(engine="compiled")` (or "auto" with numba installed) routes
`evaluate_detectors` and `evaluate_meters` here; everything else (validation, sweep,
status, registry) stays in detection.py. The NumPy engine there is the specification:
this engine must give bit-identical state and Effects (tests/unit/test_kernels.py
checks it on random fleets), and it reads the SAME per-model threshold columns
(`_ThresholdTable.columns`, packed by dtype into three small matrices) and the SAME gas
transition table (`_GasMachine.table`, `gas_offset`), so the rules are defined once.

Design: one kernel per device kind walks the batch in order, one reading at a time,
reading and writing the slot's 64-byte hot record in place (typed views of the raw
record bytes) and the cold rise ring. Sequential processing makes repeated slots
trivial (no rounds, no sorting). A first pass over the batch writes the batch position
into each record's scratch field (as detection._rounds does) and checks the device kind
before anything else is written; it also pulls the batch's records into the cache, so
the rule pass that follows rarely waits for memory. Changes and valve closes are written
to per-state output buffers in exactly the NumPy engine's order (batch order; within a
reading by AlarmKind), and Effects are built from copies of their filled prefixes.

Arithmetic follows the NumPy engine operation for operation: float32 readings against
float32 threshold columns (float32 products for the overflow limits), float64 for time,
and the rise fit's sums over the ring in the fixed pairwise order of detection._sum8.

Compilation: `cache=True` keeps the machine code in gateway/__pycache__, so only the
first process on a machine compiles (a few seconds); later processes load it. Call
`warm_up()` before serving (FleetState construction with the compiled engine does), so
that no request ever waits for the compiler or the cache load.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from numba import njit

from gateway.core import detection as _d

__all__ = ["evaluate_detectors", "evaluate_meters", "warm_up"]

# ------------------------------------------------------------------ layout constants
# Literal copies (numba freezes globals into the cached machine code, and its cache only
# notices edits to this file): checked against detection.py below, so a change there
# fails the import until this file is updated, which also recompiles the kernels.
RING = 8
N_KINDS = 13
DETECTOR, METER = 0, 1
VALVE_CLOSED, VALVE_FAULT = 1, 2
PREALARM, LEAK, RISING, DETECTOR_FAULT, STUCK_SENSOR, OFFLINE = 0, 1, 2, 3, 4, 5
OVERFLOW, CONTINUOUS_FLOW, MICRO_LEAK, VALVE_FAULT_KIND, BATTERY_LOW = 6, 7, 8, 9, 10
GAS_FAULT_BITS = 0b1111
MAX_CHANGES = 6  # alarm bits one reading can change: 5 rule bits + OFFLINE, either kind

# Indices are unsigned (np.uint64) wherever the kernels index: numba adds negative-index
# wraparound code to every signed index, a good part of a reading's instructions.
_u = np.uint64

# The hot record: the index of each field in a flat view of the records in its width
# (record i, field F of width w: view_w[i * REC_w + F]).
REC_1, REC_2, REC_4, REC_8 = _u(64), _u(32), _u(16), _u(8)  # record size in 1/2/4/8-byte units
ACTIVE_U32 = _u(0)  # byte 0
SCRATCH_I32 = _u(1)  # byte 4
LAST_SEEN_F64 = _u(1)  # byte 8
RUNS_B = _u(16)  # byte 16: 8 run-length bytes; the gas code is bytes 16-17
CODE_U16 = _u(8)
STUCK_SINCE_F64 = _u(3)  # byte 24
FLOW_SINCE_F64 = _u(4)  # byte 32
MICRO_SINCE_F64 = _u(5)  # byte 40
STUCK_REF_F32 = _u(12)  # byte 48
LAST_FLOW_F32 = _u(13)  # byte 52
QMAX_F32 = _u(14)  # byte 56
MODEL_I16 = _u(30)  # byte 60
KIND_B = _u(62)
VALVE_B = _u(63)
RING_N_B = RUNS_B + _u(4)  # detection._R_RING_N
RING_HEAD_B = RUNS_B + _u(5)  # detection._R_RING_HEAD
VALVE_FLOW_B = RUNS_B + _u(0)  # detection._R_VALVE_FLOW
VALVE_OK_B = RUNS_B + _u(1)  # detection._R_VALVE_OK
RING_U = _u(RING)

# threshold columns, packed by dtype into (models, columns) matrices, read flat:
# th32[model * N32 + C_x] (column index = position in these tuples)
F32_COLUMNS = ("clear_lel", "prealarm_lel", "leak_lel", "leak_instant_lel", "rise_floor_lel",
               "rise_track_lel", "stuck_tolerance_lel", "stuck_ignore_below_lel",
               "start_flow_m3h", "overflow_factor", "overflow_clear_factor", "battery_low_v",
               "battery_clear_v", "micro_max_m3h")
(C_CLEAR, C_PRE, C_LEAK, C_INSTANT, C_RISE_FLOOR, C_RISE_TRACK, C_STUCK_TOL, C_STUCK_IGNORE,
 C_START_FLOW, C_OVF, C_OVF_CLEAR, C_BATT_LOW, C_BATT_CLEAR, C_MICRO_MAX) = map(_u, range(14))
F64_COLUMNS = ("rise_window_s", "rise_lead_s", "rise_min_span_s", "rise_sustain_ratio",
               "rise_spacing_s", "stuck_s", "continuous_flow_s", "micro_flow_s")
(C_RISE_WINDOW, C_RISE_LEAD, C_RISE_SPAN, C_RISE_SUSTAIN, C_RISE_SPACING, C_STUCK_S,
 C_CONT_S, C_MICRO_S) = map(_u, range(8))
U8_COLUMNS = ("rise_min_samples", "valve_closed_flow_count", "valve_clear_count")
C_RISE_MIN_SAMPLES, C_VALVE_FLOW_COUNT, C_VALVE_CLEAR_COUNT = map(_u, range(3))
N32, N64, NU8 = _u(len(F32_COLUMNS)), _u(len(F64_COLUMNS)), _u(len(U8_COLUMNS))


def _check_layout() -> None:
    K = _d.AlarmKind
    assert RING == _d.RING and N_KINDS == len(K)
    assert (DETECTOR, METER) == (_d.DeviceKind.DETECTOR, _d.DeviceKind.METER)
    assert (VALVE_CLOSED, VALVE_FAULT) == (_d.ValveCode.CLOSED, _d.ValveCode.FAULT)
    assert (PREALARM, LEAK, RISING, DETECTOR_FAULT, STUCK_SENSOR, OFFLINE) == (
        K.PREALARM, K.LEAK, K.RISING, K.DETECTOR_FAULT, K.STUCK_SENSOR, K.OFFLINE)
    assert (OVERFLOW, CONTINUOUS_FLOW, MICRO_LEAK, VALVE_FAULT_KIND, BATTERY_LOW) == (
        K.OVERFLOW, K.CONTINUOUS_FLOW, K.MICRO_LEAK, K.VALVE_FAULT, K.BATTERY_LOW)
    assert GAS_FAULT_BITS == _d._GAS_FAULT_BITS
    assert (RING_N_B, RING_HEAD_B) == (RUNS_B + _d._R_RING_N, RUNS_B + _d._R_RING_HEAD)
    assert (VALVE_FLOW_B, VALVE_OK_B) == (RUNS_B + _d._R_VALVE_FLOW, RUNS_B + _d._R_VALVE_OK)
    hot = _d._HOT
    assert hot.itemsize == REC_1 == 2 * REC_2 == 4 * REC_4 == 8 * REC_8
    offsets = {"active": 4 * ACTIVE_U32, "scratch": 4 * SCRATCH_I32,
               "last_seen": 8 * LAST_SEEN_F64, "runs": RUNS_B, "stuck_since_ts":
               8 * STUCK_SINCE_F64, "flow_since_ts": 8 * FLOW_SINCE_F64,
               "micro_since_ts": 8 * MICRO_SINCE_F64, "stuck_ref_lel": 4 * STUCK_REF_F32,
               "last_flow_m3h": 4 * LAST_FLOW_F32, "qmax_m3h": 4 * QMAX_F32,
               "model": 2 * MODEL_I16, "kind": KIND_B, "valve_state": VALVE_B}
    assert set(offsets) == set(hot.names)
    for name, offset in offsets.items():
        assert hot.fields[name][1] == offset, name
    assert CODE_U16 * 2 == RUNS_B
    for names, dtype in ((F32_COLUMNS, np.float32), (F64_COLUMNS, np.float64),
                         (U8_COLUMNS, np.uint8)):
        for name in names:
            assert _d._COLUMNS[name][0] is dtype, name


_check_layout()


# ------------------------------------------------------------------ kernels

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(inline="always", **_JIT)
def _sum8(a: Any) -> Any:
    """Sum of 8 values in detection._sum8's order (NumPy's pairwise order for 8)."""
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))


@njit(inline="always", **_JIT)
def _np_minimum(a: Any, b: Any) -> Any:
    """np.minimum for two floats: NaN if either is NaN, else the smaller (b on a tie)."""
    return a if (a < b or a != a) else b


OK, WRONG_KIND, NO_MODEL = 0, 1, 2  # _first_pass


@njit(**_JIT)
def _first_pass(raw: Any, slots: Any, kind: int, n_models: int) -> int:
    """Batch positions into the records' scratch field (as detection._rounds does, the
    last reading of a slot winning), then the checks: every slot of `kind` (else
    WRONG_KIND), every model a row of the threshold table (else NO_MODEL). It also
    brings the batch's records into the cache, many at a time, for the rule pass."""
    b1 = raw.reshape(-1)
    i32 = b1.view(np.int32)
    i16 = b1.view(np.int16)
    status = OK
    for i in range(slots.size):
        s = _u(slots[i])
        i32[s * REC_4 + SCRATCH_I32] = i
        if b1[s * REC_1 + KIND_B] != kind:
            status = WRONG_KIND
        elif not 0 <= i16[s * REC_2 + MODEL_I16] < n_models and status == OK:
            status = NO_MODEL
    return status


@njit(inline="always", **_JIT)
def _emit(s: Any, act: int, new: int, value: Any, batt_value: Any, t: float,
          r_slot: Any, r_kind: Any, r_val: Any, r_ts: Any, c_slot: Any, c_kind: Any,
          c_ts: Any, cnt: Any) -> None:
    """Append the bits that changed between act and new, by AlarmKind."""
    diff = act ^ new
    if diff == 0:
        return
    for k in range(N_KINDS):
        if (diff >> k) & 1:
            if (new >> k) & 1:
                j = cnt[0]
                r_slot[j] = s
                r_kind[j] = k
                r_val[j] = batt_value if k == BATTERY_LOW else value
                r_ts[j] = t
                cnt[0] = j + 1
            else:
                j = cnt[1]
                c_slot[j] = s
                c_kind[j] = k
                c_ts[j] = t
                cnt[1] = j + 1


@njit(**_JIT)
def _detector_kernel(raw: Any, rise_lel: Any, rise_ts: Any, meter_slot: Any, th32: Any,
                     th64: Any, thu8: Any, gas_offset: Any, gas_table: Any,
                     slots: Any, ch4: Any, fault: Any, ts: Any, now: float,
                     r_slot: Any, r_kind: Any, r_val: Any, r_ts: Any, r_fam: Any,
                     c_slot: Any, c_kind: Any, c_ts: Any,
                     v_meter: Any, v_cause: Any, v_trig: Any, cnt: Any) -> int:
    """Detector readings in batch order; see detection._detector_round and _rise.

    Returns _first_pass's status: anything but OK means nothing was written (but
    scratch). cnt receives the numbers of raised, cleared and close entries written.
    """
    cnt[0] = cnt[1] = cnt[2] = 0
    status = _first_pass(raw, slots, DETECTOR, th32.shape[0])
    if status != OK:
        return status
    b1 = raw.reshape(-1)  # the records as flat views of 1-, 2-, 4- and 8-byte units
    u16 = b1.view(np.uint16)
    i16 = b1.view(np.int16)
    u32 = b1.view(np.uint32)
    f32 = b1.view(np.float32)
    f64 = b1.view(np.float64)
    t32 = th32.reshape(-1)
    t64 = th64.reshape(-1)
    tu8 = thu8.reshape(-1)
    ring_lel = rise_lel.reshape(-1)
    ring_ts = rise_ts.reshape(-1)
    xs = np.empty(RING, dtype=np.float64)
    ys = np.empty(RING, dtype=np.float64)
    xx = np.empty(RING, dtype=np.float64)
    xy = np.empty(RING, dtype=np.float64)
    rise_bits = (1 << LEAK) | (1 << RISING)
    for i in range(slots.size):
        s = _u(slots[i])
        r1, r2, r4, r8 = s * REC_1, s * REC_2, s * REC_4, s * REC_8
        v = ch4[i]
        t = ts[i]
        m = _u(i16[r2 + MODEL_I16])
        m32, m64, mu8 = m * N32, m * N64, m * NU8
        act = np.int64(u32[r4 + ACTIVE_U32])
        new = act & ~(1 << OFFLINE)  # a reading proves it alive

        # stuck: the value has not moved (within tolerance) since stuck_since_ts
        ref = f32[r4 + STUCK_REF_F32]
        moved = abs(v - ref) > t32[m32 + C_STUCK_TOL]  # float32; the ref starts at -inf
        since = t if moved else f64[r8 + STUCK_SINCE_F64]
        f64[r8 + STUCK_SINCE_F64] = since
        f32[r4 + STUCK_REF_F32] = v if moved else ref
        new &= ~(np.int64(moved) << STUCK_SENSOR)
        new |= np.int64((t - since >= t64[m64 + C_STUCK_S])
                        & (v >= t32[m32 + C_STUCK_IGNORE])) << STUCK_SENSOR

        # gas and fault rules: one lookup in the transition table (_GasMachine)
        level = (np.int64(v >= t32[m32 + C_CLEAR]) + np.int64(v >= t32[m32 + C_PRE])
                 + np.int64(v >= t32[m32 + C_LEAK]) + np.int64(v >= t32[m32 + C_INSTANT]))
        code = np.int64(u16[r2 + CODE_U16])
        idx = (((code << 4) | (act & GAS_FAULT_BITS)) * 10 + level + gas_offset[m]
               + 5 * np.int64(fault[i] != 0))
        step = np.int64(gas_table[_u(idx)])
        u16[r2 + CODE_U16] = step >> 4
        new = (new & ~GAS_FAULT_BITS) | (step & GAS_FAULT_BITS)

        # rate of rise, on readings above the tracking level
        if not v >= t32[m32 + C_RISE_TRACK]:
            b1[r1 + RING_N_B] = 0  # an untracked reading ends the tracked rise
        else:
            ring = s * RING_U
            rn = np.int64(b1[r1 + RING_N_B])
            hd = np.int64(b1[r1 + RING_HEAD_B])
            last = ring + _u((hd - 1) & (RING - 1))
            last_t = ring_ts[last]
            if (v >= t32[m32 + C_RISE_FLOOR] and v < t32[m32 + C_LEAK]
                    and rn >= np.int64(tu8[mu8 + C_RISE_MIN_SAMPLES]) - 1
                    and (new & rise_bits) == 0):
                window = t64[m64 + C_RISE_WINDOW]
                k = 0
                for j in range(RING):
                    x = ring_ts[ring + _u(j)] - t  # <= 0: seconds before now
                    age = (hd - 1 - j) & (RING - 1)
                    if age < rn and x <= 0.0 and x >= -window:
                        xs[j] = x
                        ys[j] = np.float64(ring_lel[ring + _u(j)])
                        k += 1
                    else:
                        xs[j] = 0.0
                        ys[j] = 0.0
                xmin = xs[0]
                for j in range(RING):
                    xx[j] = xs[j] * xs[j]
                    xy[j] = xs[j] * ys[j]
                    if xs[j] < xmin:
                        xmin = xs[j]
                span = -xmin
                vc = np.float64(v)
                n = k + 1.0  # the current reading is the point (0, vc)
                sx = _sum8(xs)
                sy = _sum8(ys) + vc
                sxx = _sum8(xx)
                sxy = _sum8(xy)
                den = n * sxx - sx * sx
                slope = (n * sxy - sx * sy) / den if den > 0 else 0.0
                step_v = vc - np.float64(ring_lel[last])
                dt = t - last_t
                if (n >= tu8[mu8 + C_RISE_MIN_SAMPLES] and span >= t64[m64 + C_RISE_SPAN]
                        and slope > 0 and dt > 0
                        and step_v >= t64[m64 + C_RISE_SUSTAIN] * slope * dt
                        and vc + slope * t64[m64 + C_RISE_LEAD]
                        >= np.float64(t32[m32 + C_LEAK])):
                    new |= 1 << RISING
            # record this reading if the ring is empty or its last sample is old enough
            if rn == 0 or t - last_t >= t64[m64 + C_RISE_SPACING]:
                ring_lel[ring + _u(hd)] = v
                ring_ts[ring + _u(hd)] = t
                b1[r1 + RING_N_B] = min(rn + 1, RING)
                b1[r1 + RING_HEAD_B] = (hd + 1) & (RING - 1)

        u32[r4 + ACTIVE_U32] = new
        f64[r8 + LAST_SEEN_F64] = now
        _emit(s, act, new, v, v, t, r_slot, r_kind, r_val, r_ts, c_slot, c_kind, c_ts, cnt)
        if (new & ~act) & (1 << LEAK):  # close the household's meter
            meter = meter_slot[s]
            if meter >= 0:
                j = cnt[2]
                v_meter[j] = meter
                v_cause[j] = LEAK
                v_trig[j] = s
                cnt[2] = j + 1

    # flow at the meter, from the state after the whole batch (detection._flow_at_meter)
    for j in range(cnt[0]):
        fam = False
        if r_kind[j] <= RISING:
            meter = meter_slot[r_slot[j]]
            if meter >= 0:
                mm = _u(meter)
                model = _u(i16[mm * REC_2 + MODEL_I16])
                fam = f32[mm * REC_4 + LAST_FLOW_F32] > t32[model * N32 + C_START_FLOW]
        r_fam[j] = fam
    return OK


@njit(**_JIT)
def _meter_kernel(raw: Any, th32: Any, th64: Any, thu8: Any,
                  slots: Any, flow: Any, valve: Any, batt: Any, ts: Any, now: float,
                  r_slot: Any, r_kind: Any, r_val: Any, r_ts: Any, r_fam: Any,
                  c_slot: Any, c_kind: Any, c_ts: Any,
                  v_meter: Any, v_cause: Any, v_trig: Any, cnt: Any) -> int:
    """Meter readings in batch order; see detection._meter_round and _flow_rules.

    Half the readings show flow, at random: the rules are written as selects, not
    branches, which the CPU would mispredict.
    """
    cnt[0] = cnt[1] = cnt[2] = 0
    status = _first_pass(raw, slots, METER, th32.shape[0])
    if status != OK:
        return status
    b1 = raw.reshape(-1)
    i16 = b1.view(np.int16)
    u32 = b1.view(np.uint32)
    f32 = b1.view(np.float32)
    f64 = b1.view(np.float64)
    t32 = th32.reshape(-1)
    t64 = th64.reshape(-1)
    tu8 = thu8.reshape(-1)
    for i in range(slots.size):
        s = _u(slots[i])
        r1, r4, r8 = s * REC_1, s * REC_4, s * REC_8
        fl = flow[i]
        vl = valve[i]
        b = batt[i]
        t = ts[i]
        m = _u(i16[s * REC_2 + MODEL_I16])
        m32, m64, mu8 = m * N32, m * N64, m * NU8
        act = np.int64(u32[r4 + ACTIVE_U32])
        new = act & ~(1 << OFFLINE)  # a reading proves it alive
        flowing = fl > t32[m32 + C_START_FLOW]

        # over-flow against the household load (float32 limits), with a hysteresis band
        qmax = f32[r4 + QMAX_F32]
        new &= ~(np.int64(fl <= qmax * t32[m32 + C_OVF_CLEAR]) << OVERFLOW)
        new |= np.int64(fl > qmax * t32[m32 + C_OVF]) << OVERFLOW

        # continuous flow: a run without a pause; a pause clears the alarm
        run = _np_minimum(f64[r8 + FLOW_SINCE_F64], t)
        run = run if flowing else np.inf
        f64[r8 + FLOW_SINCE_F64] = run
        new &= ~(np.int64(not flowing) << CONTINUOUS_FLOW)
        new |= np.int64(t - run >= t64[m64 + C_CONT_S]) << CONTINUOUS_FLOW

        # micro flow: a small steady flow; only a true zero proves the leak gone.
        # The run is updated only where there is a micro flow now or a run to end
        # (as detection._flow_rules, which leaves a NaN start alone otherwise).
        micro = (fl > 0) & (fl < t32[m32 + C_MICRO_MAX])
        msince = f64[r8 + MICRO_SINCE_F64]
        mrun = _np_minimum(msince, t)
        mrun = mrun if micro else np.inf
        update = micro | (msince < np.inf)
        f64[r8 + MICRO_SINCE_F64] = mrun if update else msince
        new |= np.int64(update & (t - mrun >= t64[m64 + C_MICRO_S])) << MICRO_LEAK
        new &= ~(np.int64(fl <= 0) << MICRO_LEAK)

        # valve: flow while closed (debounced), or the meter reports a valve fault
        closed_flow = (vl == VALVE_CLOSED) & flowing
        vfault = vl == VALVE_FAULT
        vrun = (min(np.int64(b1[r1 + VALVE_FLOW_B]), 254) + 1) * np.int64(closed_flow)
        vok = (min(np.int64(b1[r1 + VALVE_OK_B]), 254) + 1) * np.int64(not (closed_flow
                                                                         | vfault))
        b1[r1 + VALVE_FLOW_B] = vrun
        b1[r1 + VALVE_OK_B] = vok
        new &= ~(np.int64(vok >= tu8[mu8 + C_VALVE_CLEAR_COUNT]) << VALVE_FAULT_KIND)
        new |= np.int64((vrun >= tu8[mu8 + C_VALVE_FLOW_COUNT]) | vfault) << VALVE_FAULT_KIND

        # battery, with hysteresis
        new &= ~(np.int64(b >= t32[m32 + C_BATT_CLEAR]) << BATTERY_LOW)
        new |= np.int64(b < t32[m32 + C_BATT_LOW]) << BATTERY_LOW

        u32[r4 + ACTIVE_U32] = new
        b1[r1 + VALVE_B] = vl
        f32[r4 + LAST_FLOW_F32] = fl
        f64[r8 + LAST_SEEN_F64] = now
        _emit(s, act, new, fl, b, t, r_slot, r_kind, r_val, r_ts, c_slot, c_kind, c_ts, cnt)
        if (new & ~act) & (1 << OVERFLOW):  # close this meter
            j = cnt[2]
            v_meter[j] = s
            v_cause[j] = OVERFLOW
            v_trig[j] = s
            cnt[2] = j + 1
    for j in range(cnt[0]):
        r_fam[j] = False  # meter alarms are never gas alarms
    return OK


# ------------------------------------------------------------------ Python side

class _Workspace:
    """Output buffers of one FleetState, reused from batch to batch (grown as needed)."""

    __slots__ = ("c_kind", "c_slot", "c_ts", "cnt", "r_fam", "r_kind", "r_slot", "r_ts",
                 "r_val", "readings", "v_cause", "v_meter", "v_trig")

    def __init__(self, readings: int) -> None:
        self.readings = readings
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
        return (self.r_slot, self.r_kind, self.r_val, self.r_ts, self.r_fam, self.c_slot,
                self.c_kind, self.c_ts, self.v_meter, self.v_cause, self.v_trig, self.cnt)

    def effects(self) -> _d.Effects:
        nr, nc, nv = (int(c) for c in self.cnt)
        if nr == 0 and nc == 0 and nv == 0:
            return _d.Effects.empty()
        return _d.Effects(self.r_slot[:nr].copy(), self.r_kind[:nr].copy(),
                          self.r_val[:nr].copy(), self.r_ts[:nr].copy(),
                          self.r_fam[:nr].copy(), self.c_slot[:nc].copy(),
                          self.c_kind[:nc].copy(), self.c_ts[:nc].copy(),
                          self.v_meter[:nv].copy(), self.v_cause[:nv].copy(),
                          self.v_trig[:nv].copy())


def _workspace(state: _d.FleetState, n: int) -> _Workspace:
    ws: _Workspace | None = state.__dict__.get("_kernel_ws")
    if ws is None or ws.readings < n:
        ws = _Workspace(max(n, 1024, 0 if ws is None else 2 * ws.readings))
        state.__dict__["_kernel_ws"] = ws
    return ws


def _packed(table: _d._ThresholdTable) -> tuple[np.ndarray, ...]:
    """The threshold columns the kernels read, one row per model, packed by dtype."""
    pack = table.__dict__.get("_kernel_pack")
    if pack is None or pack[0] != table.n_rows:
        cols = table.columns
        pack = (table.n_rows,
                np.ascontiguousarray(np.stack([cols[c] for c in F32_COLUMNS], axis=1)),
                np.ascontiguousarray(np.stack([cols[c] for c in F64_COLUMNS], axis=1)),
                np.ascontiguousarray(np.stack([cols[c] for c in U8_COLUMNS], axis=1)),
                np.ascontiguousarray(cols["gas_offset"], dtype=np.intp),
                np.ascontiguousarray(table.gas.table))
        table.__dict__["_kernel_pack"] = pack
    return pack[1:]


def _arg(a: np.ndarray) -> np.ndarray:
    """An input in the one array type the kernels are compiled for (C, writeable)."""
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = a.copy()
    return a


def evaluate_detectors(state: _d.FleetState, s: np.ndarray, ch4: np.ndarray,
                       fault: np.ndarray, ts: np.ndarray, now: float) -> _d.Effects:
    """detection.evaluate_detectors after its validation (slots intp, ch4 float32 without
    NaN, fault uint32, ts float64, all one length)."""
    if s.size == 0:
        return _d.Effects.empty()
    ws = _workspace(state, s.size)
    th32, th64, thu8, gas_offset, gas_table = _packed(state._table)
    status = _detector_kernel(state._hot_bytes, state.rise_lel, state.rise_ts,
                              state.meter_slot, th32, th64, thu8, gas_offset, gas_table,
                              _arg(s), _arg(ch4), _arg(fault), _arg(ts), float(now),
                              *ws.outputs())
    _raise_for(status, "detector")
    return ws.effects()


def evaluate_meters(state: _d.FleetState, s: np.ndarray, flow: np.ndarray, valve: np.ndarray,
                    batt: np.ndarray, ts: np.ndarray, now: float) -> _d.Effects:
    """detection.evaluate_meters after its validation (slots intp, flow and batt float32,
    valve uint8, ts float64, all one length)."""
    if s.size == 0:
        return _d.Effects.empty()
    ws = _workspace(state, s.size)
    th32, th64, thu8, _, _ = _packed(state._table)
    status = _meter_kernel(state._hot_bytes, th32, th64, thu8, _arg(s), _arg(flow),
                           _arg(valve), _arg(batt), _arg(ts), float(now), *ws.outputs())
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
        st = _d.FleetState(capacity=4, engine="numpy")
        meter = st.add_devices([_d.DeviceKind.METER], [0], [-1], [0], [2.5], [0.0], 0.0)
        det = st.add_devices([_d.DeviceKind.DETECTOR], [0], meter, [0], [np.nan], [0.0], 0.0)
        one = np.ones(1)
        evaluate_detectors(st, det.astype(np.intp), np.full(1, 45.0, np.float32),
                           np.zeros(1, np.uint32), one, 1.0)
        evaluate_meters(st, meter.astype(np.intp), np.full(1, 9.0, np.float32),
                        np.zeros(1, np.uint8), np.full(1, 3.6, np.float32), one, 1.0)
        _warm_seconds = time.perf_counter() - t0
        return _warm_seconds
