"""Kernels of the compiled engine: the reading-driven rules in numba, over raw record bytes.

One kernel per device kind walks a batch in order, one reading at a time, reading and
writing the slot's 64-byte record (fleet.RECORD) in place through typed views of its raw
bytes, and the cold rise ring. Sequential processing makes repeated slots trivial (no
rounds, no sorting). A first pass over the batch writes the batch position into each
record's scratch field (as fleet.rounds does) and checks the device kind before anything
else is written; it also pulls the batch's records into the cache, so the rule pass that
follows rarely waits for memory. Changes and valve closes are written to output buffers in
exactly the NumPy engine's order (batch order; within a reading by AlarmKind).

Arithmetic follows the NumPy engine (gas_rules, meter_rules) operation for operation:
float32 readings against float32 threshold columns (float32 products for the overflow
limits), float64 for time, and the rise fit's sums over the ring in the fixed pairwise
order of gas_rules.pairwise_sum8.

`cache=True` keeps the machine code in gateway/core/__pycache__, so only the first process
on a machine compiles (a few seconds); later processes load it. gateway/core/compiled.py
drives these kernels and warms them up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from gateway.core import alarms, fleet, thresholds
from gateway.core.alarms import DeviceKind

__all__ = [
    "F32_COLUMNS",
    "F64_COLUMNS",
    "MAX_CHANGES",
    "NO_MODEL",
    "OK",
    "U8_COLUMNS",
    "WRONG_KIND",
    "detector_kernel",
    "meter_kernel",
    "sum8",
]

# ------------------------------------------------------------------ layout constants
# Literal copies (numba freezes globals into the cached machine code, and its cache only
# notices edits to this file): checked against alarms, fleet and thresholds below, so a
# change there
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
RING_N_B = RUNS_B + _u(4)  # fleet.RUNS_RING_N
RING_HEAD_B = RUNS_B + _u(5)  # fleet.RUNS_RING_HEAD
VALVE_FLOW_B = RUNS_B + _u(0)  # fleet.RUNS_VALVE_FLOW
VALVE_OK_B = RUNS_B + _u(1)  # fleet.RUNS_VALVE_OK
RING_U = _u(RING)

# threshold columns, packed by dtype into (models, columns) matrices, read flat:
# th32[model * N32 + C_x] (column index = position in these tuples)
F32_COLUMNS = (
    "clear_lel",
    "prealarm_lel",
    "leak_lel",
    "leak_instant_lel",
    "rise_floor_lel",
    "rise_track_lel",
    "stuck_tolerance_lel",
    "stuck_ignore_below_lel",
    "start_flow_m3h",
    "overflow_factor",
    "overflow_clear_factor",
    "battery_low_v",
    "battery_clear_v",
    "micro_max_m3h",
)
(
    C_CLEAR,
    C_PRE,
    C_LEAK,
    C_INSTANT,
    C_RISE_FLOOR,
    C_RISE_TRACK,
    C_STUCK_TOL,
    C_STUCK_IGNORE,
    C_START_FLOW,
    C_OVF,
    C_OVF_CLEAR,
    C_BATT_LOW,
    C_BATT_CLEAR,
    C_MICRO_MAX,
) = map(_u, range(14))
F64_COLUMNS = (
    "rise_window_s",
    "rise_lead_s",
    "rise_min_span_s",
    "rise_sustain_ratio",
    "rise_spacing_s",
    "stuck_s",
    "continuous_flow_s",
    "micro_flow_s",
)
(
    C_RISE_WINDOW,
    C_RISE_LEAD,
    C_RISE_SPAN,
    C_RISE_SUSTAIN,
    C_RISE_SPACING,
    C_STUCK_S,
    C_CONT_S,
    C_MICRO_S,
) = map(_u, range(8))
U8_COLUMNS = ("rise_min_samples", "valve_closed_flow_count", "valve_clear_count")
C_RISE_MIN_SAMPLES, C_VALVE_FLOW_COUNT, C_VALVE_CLEAR_COUNT = map(_u, range(3))
N32, N64, NU8 = _u(len(F32_COLUMNS)), _u(len(F64_COLUMNS)), _u(len(U8_COLUMNS))


def _check_layout() -> None:
    K = alarms.AlarmKind
    assert RING == thresholds.RING and N_KINDS == len(K) == alarms.N_KINDS
    assert (DETECTOR, METER) == (DeviceKind.DETECTOR, DeviceKind.METER)
    assert (VALVE_CLOSED, VALVE_FAULT) == (alarms.ValveCode.CLOSED, alarms.ValveCode.FAULT)
    assert (PREALARM, LEAK, RISING, DETECTOR_FAULT, STUCK_SENSOR, OFFLINE) == (
        K.PREALARM,
        K.LEAK,
        K.RISING,
        K.DETECTOR_FAULT,
        K.STUCK_SENSOR,
        K.OFFLINE,
    )
    assert (OVERFLOW, CONTINUOUS_FLOW, MICRO_LEAK, VALVE_FAULT_KIND, BATTERY_LOW) == (
        K.OVERFLOW,
        K.CONTINUOUS_FLOW,
        K.MICRO_LEAK,
        K.VALVE_FAULT,
        K.BATTERY_LOW,
    )
    assert GAS_FAULT_BITS == alarms.GAS_FAULT_BITS
    assert (RING_N_B, RING_HEAD_B) == (RUNS_B + fleet.RUNS_RING_N, RUNS_B + fleet.RUNS_RING_HEAD)
    assert (VALVE_FLOW_B, VALVE_OK_B) == (
        RUNS_B + fleet.RUNS_VALVE_FLOW,
        RUNS_B + fleet.RUNS_VALVE_OK,
    )
    hot = fleet.RECORD
    assert hot.names is not None and hot.fields is not None
    assert hot.itemsize == REC_1 == 2 * REC_2 == 4 * REC_4 == 8 * REC_8
    offsets = {
        "active": 4 * ACTIVE_U32,
        "scratch": 4 * SCRATCH_I32,
        "last_seen": 8 * LAST_SEEN_F64,
        "runs": RUNS_B,
        "stuck_since_ts": 8 * STUCK_SINCE_F64,
        "flow_since_ts": 8 * FLOW_SINCE_F64,
        "micro_since_ts": 8 * MICRO_SINCE_F64,
        "stuck_ref_lel": 4 * STUCK_REF_F32,
        "last_flow_m3h": 4 * LAST_FLOW_F32,
        "qmax_m3h": 4 * QMAX_F32,
        "model": 2 * MODEL_I16,
        "kind": KIND_B,
        "valve_state": VALVE_B,
    }
    assert set(offsets) == set(hot.names)
    for name, offset in offsets.items():
        assert hot.fields[name][1] == offset, name
    assert CODE_U16 * 2 == RUNS_B
    for names, dtype in (
        (F32_COLUMNS, np.float32),
        (F64_COLUMNS, np.float64),
        (U8_COLUMNS, np.uint8),
    ):
        for name in names:
            assert thresholds.COLUMNS[name][0] is dtype, name


_check_layout()


# ------------------------------------------------------------------ kernels

_JIT: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(inline="always", **_JIT)
def sum8(a: Any) -> Any:
    """Sum of 8 values in gas_rules.pairwise_sum8's order (NumPy's pairwise order for 8)."""
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))


@njit(inline="always", **_JIT)
def _np_minimum(a: Any, b: Any) -> Any:
    """np.minimum for two floats: NaN if either is NaN, else the smaller (b on a tie)."""
    return a if (a < b or a != a) else b


OK, WRONG_KIND, NO_MODEL = 0, 1, 2  # _first_pass


@njit(**_JIT)
def _first_pass(raw: Any, slots: Any, kind: int, n_models: int) -> int:
    """Batch positions into the records' scratch field (as fleet.rounds does, the
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
def _emit(
    s: Any,
    act: int,
    new: int,
    value: Any,
    batt_value: Any,
    t: float,
    r_slot: Any,
    r_kind: Any,
    r_val: Any,
    r_ts: Any,
    c_slot: Any,
    c_kind: Any,
    c_ts: Any,
    cnt: Any,
) -> None:
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
def detector_kernel(
    raw: Any,
    rise_lel: Any,
    rise_ts: Any,
    meter_slot: Any,
    th32: Any,
    th64: Any,
    thu8: Any,
    gas_offset: Any,
    gas_table: Any,
    slots: Any,
    ch4: Any,
    fault: Any,
    ts: Any,
    now: float,
    r_slot: Any,
    r_kind: Any,
    r_val: Any,
    r_ts: Any,
    r_fam: Any,
    c_slot: Any,
    c_kind: Any,
    c_ts: Any,
    v_meter: Any,
    v_cause: Any,
    v_trig: Any,
    cnt: Any,
) -> int:
    """Detector readings in batch order; see gas_rules._detector_round and _rise.

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
        new |= (
            np.int64((t - since >= t64[m64 + C_STUCK_S]) & (v >= t32[m32 + C_STUCK_IGNORE]))
            << STUCK_SENSOR
        )

        # gas and fault rules: one lookup in the transition table (_GasMachine)
        level = (
            np.int64(v >= t32[m32 + C_CLEAR])
            + np.int64(v >= t32[m32 + C_PRE])
            + np.int64(v >= t32[m32 + C_LEAK])
            + np.int64(v >= t32[m32 + C_INSTANT])
        )
        code = np.int64(u16[r2 + CODE_U16])
        idx = (
            ((code << 4) | (act & GAS_FAULT_BITS)) * 10
            + level
            + gas_offset[m]
            + 5 * np.int64(fault[i] != 0)
        )
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
            if (
                v >= t32[m32 + C_RISE_FLOOR]
                and v < t32[m32 + C_LEAK]
                and rn >= np.int64(tu8[mu8 + C_RISE_MIN_SAMPLES]) - 1
                and (new & rise_bits) == 0
            ):
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
                sx = sum8(xs)
                sy = sum8(ys) + vc
                sxx = sum8(xx)
                sxy = sum8(xy)
                den = n * sxx - sx * sx
                slope = (n * sxy - sx * sy) / den if den > 0 else 0.0
                step_v = vc - np.float64(ring_lel[last])
                dt = t - last_t
                if (
                    n >= tu8[mu8 + C_RISE_MIN_SAMPLES]
                    and span >= t64[m64 + C_RISE_SPAN]
                    and slope > 0
                    and dt > 0
                    and step_v >= t64[m64 + C_RISE_SUSTAIN] * slope * dt
                    and vc + slope * t64[m64 + C_RISE_LEAD] >= np.float64(t32[m32 + C_LEAK])
                ):
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

    # flow at the meter, from the state after the whole batch (effects._flow_at_meter)
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
def meter_kernel(
    raw: Any,
    th32: Any,
    th64: Any,
    thu8: Any,
    slots: Any,
    flow: Any,
    valve: Any,
    batt: Any,
    ts: Any,
    now: float,
    r_slot: Any,
    r_kind: Any,
    r_val: Any,
    r_ts: Any,
    r_fam: Any,
    c_slot: Any,
    c_kind: Any,
    c_ts: Any,
    v_meter: Any,
    v_cause: Any,
    v_trig: Any,
    cnt: Any,
) -> int:
    """Meter readings in batch order; see meter_rules._meter_round and _flow_rules.

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
        # (as meter_rules._flow_rules, which leaves a NaN start alone otherwise).
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
        cap = np.int64(254)
        vrun = (min(np.int64(b1[r1 + VALVE_FLOW_B]), cap) + 1) * np.int64(closed_flow)
        vok = (min(np.int64(b1[r1 + VALVE_OK_B]), cap) + 1) * np.int64(not (closed_flow | vfault))
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
