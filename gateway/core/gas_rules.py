"""Gas rules: what a batch of detector readings does (the NumPy engine, the specification).

`evaluate_detectors` applies the stuck-sensor, gas level, fault and rate-of-rise rules of
ARCHITECTURE section 3 to a batch, updating the FleetState in place, and returns the
Effects (a LEAK asks to close the household's meter). Conditions over readings use each
reading's own `ts` (device clock), so a backlog replayed after an outage is judged as it
happened; `now` (platform clock) only marks the device as seen.

Repeated slots in one batch apply in batch order (see fleet.rounds). Most readings are
a quiet background: in a large round the gas and rise rules run only on the readings
that can change something. With the compiled engine (gateway/core/compiled.py) the same
rules run there, bit for bit; tests/unit/test_kernels.py compares the two.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.alarms import (
    GAS_FAULT_BITS,
    KIND_BITS,
    AlarmKind,
    DeviceKind,
    clear_where,
    raise_where,
)
from gateway.core.effects import Collector, Effects, emit
from gateway.core.fleet import (
    DETECTOR_RUNS_MASK,
    RUNS_RING_HEAD,
    RUNS_RING_N,
    FleetState,
    compiled_engine,
    rounds,
)
from gateway.core.thresholds import LEVEL_EDGES, RING, Lookup, subset
from gateway.core.types import F32, F64, U8, U32, Ix

__all__ = ["SPLIT_MIN", "evaluate_detectors", "pairwise_sum8"]

SPLIT_MIN = 512  # rounds smaller than this skip the quiet/busy split (it would cost more)
_LEAK, _RISE = KIND_BITS[AlarmKind.LEAK], KIND_BITS[AlarmKind.RISING]
_STUCK, _OFF = KIND_BITS[AlarmKind.STUCK_SENSOR], KIND_BITS[AlarmKind.OFFLINE]
_NOT_OFFLINE = ~_OFF
_U8_1 = np.uint8(1)
_DETECTOR = np.uint8(DeviceKind.DETECTOR)


def evaluate_detectors(
    state: FleetState,
    slots: npt.ArrayLike,
    ch4_lel: npt.ArrayLike,
    fault: npt.ArrayLike,
    ts: npt.ArrayLike,
    now: float,
) -> Effects:
    """Apply a batch of detector readings (in arrival order; slots may repeat).

    `ch4_lel` %LEL (0-100, not NaN), `fault` the device's fault bitmask (0 = healthy),
    `ts` the readings' device time and `now` the platform time, epoch seconds. Raised
    and cleared alarms carry the reading's `ts`; a LEAK also asks to close the
    household's meter.
    """
    s = state.check_slots(slots)
    ch4 = np.asarray(ch4_lel, dtype=np.float32).ravel()
    flt = np.asarray(fault, dtype=np.uint32).ravel()
    t = np.asarray(ts, dtype=np.float64).ravel()
    if not ch4.size == flt.size == t.size == s.size:
        raise ValueError("evaluate_detectors: all arrays must have the same length")
    if np.isnan(ch4).any():
        raise ValueError("evaluate_detectors: ch4_lel must not be NaN")
    if state.engine == "compiled":
        return compiled_engine().evaluate_detectors(state, s, ch4, flt, t, float(now))
    out = Collector()
    for rows in rounds(state, s):
        if rows is None:
            _detector_round(state, s, ch4, flt, t, float(now), None, out)
        else:
            out.sort = True
            _detector_round(state, s[rows], ch4[rows], flt[rows], t[rows], float(now), rows, out)
        out.first_round = False
    return out.finish(state)


def _detector_round(
    state: FleetState,
    s: Ix,
    ch4: F32,
    fault: U32,
    ts: F64,
    now: float,
    rows: Ix | None,
    out: Collector,
) -> None:
    rec = state.fetch_records(s, _DETECTOR, out.first_round)
    model = rec["model"]
    th = Lookup(state.table, model)
    act = rec["active"].copy()
    present = int(np.bitwise_or.reduce(act))  # alarm bits set anywhere in this round
    new = act & _NOT_OFFLINE if present & _OFF else act.copy()  # a reading proves it alive
    w = rec["runs"].copy()

    # stuck: the value has not moved (within tolerance) since stuck_since_ts
    moved = np.abs(ch4 - rec["stuck_ref_lel"]) > th("stuck_tolerance_lel")  # ref starts -inf
    since = rec["stuck_since_ts"]
    np.copyto(since, ts, where=moved)
    np.copyto(rec["stuck_ref_lel"], ch4, where=moved)
    if present & _STUCK:
        clear_where(new, moved, _STUCK)
    raise_where(new, (ts - since >= th("stuck_s")) & (ch4 >= th("stuck_ignore_below_lel")), _STUCK)

    # Gas, fault and rise rules. Most readings are a quiet background from a detector at
    # rest (no gas or fault alarm, runs settled, no rise tracked): for them these rules
    # change nothing, so in a large round they run only on the other, "busy" readings.
    table = state.table
    if s.size < SPLIT_MIN:
        _gas_and_rise(state, th, s, ch4, fault, ts, w, act, new)
    else:
        busy = (
            (ch4 >= table.quiet_below_lel)
            | (fault != 0)
            | ((w & DETECTOR_RUNS_MASK) != table.gas.resting_runs)
            | ((act & GAS_FAULT_BITS) != 0)
        ).nonzero()[0]
        if busy.size:
            wb, nb = w[busy], new[busy]
            _gas_and_rise(
                state,
                Lookup(table, model[busy]),
                s[busy],
                ch4[busy],
                fault[busy],
                ts[busy],
                wb,
                act[busy],
                nb,
            )
            w[busy] = wb
            new[busy] = nb

    rec["runs"] = w
    rec["active"] = new
    rec["last_seen"] = now
    state.store_records(s, rec)

    ch = emit(out, s, rows, ts, act, new, lambda i, k: ch4[i])
    if ch.size:
        leak_up = ch[((new[ch] & ~act[ch]) & _LEAK) != 0]
        if leak_up.size:  # close the household's meter
            trig = s[leak_up]
            meter = state.meter_slot[trig]
            has = meter >= 0
            r = leak_up if rows is None else rows[leak_up]
            out.closes.append(
                (
                    r[has],
                    meter[has],
                    np.full(int(has.sum()), AlarmKind.LEAK, dtype=np.uint8),
                    trig[has].astype(np.int32),
                )
            )


def _gas_and_rise(
    state: FleetState,
    th: Lookup,
    s: Ix,
    ch4: F32,
    fault: U32,
    ts: F64,
    w: npt.NDArray[np.uint64],
    act: U32,
    new: U32,
) -> None:
    """Gas and fault rules (one table lookup, see _GasMachine), then the rise rule.

    Updates the runs words `w` and the alarm bits `new` in place.
    """
    table = state.table
    if table.edges is not None:
        level = np.searchsorted(table.edges, ch4, side="right")
    else:
        level = (ch4 >= th("clear_lel")).astype(np.intp)
        for name in LEVEL_EDGES[1:]:
            level += ch4 >= th(name)
    code = w.view(np.uint16).reshape(-1, 4)[:, 0]
    idx = ((code.astype(np.intp) << 4) | (act & GAS_FAULT_BITS)) * 10 + level
    idx += (fault != 0) * 5
    offset = th("gas_offset")
    if np.ndim(offset) or offset:
        idx += offset
    step = table.gas.table.take(idx)
    code[:] = step >> 4
    new &= ~np.uint32(GAS_FAULT_BITS)
    new |= step & GAS_FAULT_BITS

    # rate of rise, on the readings above the tracking level
    runs = w.view(np.uint8).reshape(-1, 8)
    tracked = ch4 >= th("rise_track_lel")
    runs[:, RUNS_RING_N] *= tracked  # a reading below the tracking level ends the tracked rise
    tr = tracked.nonzero()[0]
    if tr.size:
        _rise(state, th, s, ch4, ts, tr, runs, new)


def _rise(
    state: FleetState, th: Lookup, s: Ix, ch4: F32, ts: F64, tr: Ix, runs: U8, new: U32
) -> None:
    """Rate-of-rise rule on the tracked readings `tr` of a round; updates runs and new.

    Each detector keeps its last RING tracked samples (value, ts), at least
    rise_window_s / RING apart so the ring spans the window whatever the reporting
    rate; `runs[:, RUNS_RING_N]` counts the valid ones (reset by an untracked reading) and
    `runs[:, RUNS_RING_HEAD]` is the next write position. The samples inside the window
    and the current reading give a least-squares slope; RISING is raised when ch4 is in
    [rise_floor_lel, leak_lel) and the slope reaches leak_lel within rise_lead_s.
    """

    def sub(name: str, idx: Ix) -> Any:
        return subset(th(name), idx)

    ss = s[tr]
    v = ch4[tr]
    t = ts[tr]
    rn = runs[tr, RUNS_RING_N]
    hd = runs[tr, RUNS_RING_HEAD]
    flat = ss * RING
    ring_ts = state.rise_ts.reshape(-1)
    last_pos = flat + ((hd - _U8_1) & np.uint8(RING - 1))
    last_t = ring_ts.take(last_pos)

    # candidates: in the warning band, with history, no leak or rise alarm yet
    cand = (
        (v >= sub("rise_floor_lel", tr))
        & (v < sub("leak_lel", tr))
        & (rn >= sub("rise_min_samples", tr) - _U8_1)
    ).nonzero()[0]
    if cand.size:
        cand = cand[(new[tr[cand]] & (_LEAK | _RISE)) == 0]
    if cand.size:
        at = tr[cand]
        cs = ss[cand]
        window = sub("rise_window_s", at)
        window = window[:, None] if np.ndim(window) else window
        x = state.rise_ts.take(cs, axis=0) - t[cand, None]  # <= 0: seconds before now
        age = (hd[cand, None].astype(np.intp) - 1 - np.arange(RING)) & (RING - 1)
        ok = (age < rn[cand, None]) & (x <= 0) & (x >= -window)
        x = np.where(ok, x, 0.0)
        y = np.where(ok, state.rise_lel.take(cs, axis=0).astype(np.float64), 0.0)
        vc = v[cand].astype(np.float64)
        n = ok.sum(axis=1) + 1.0  # the current reading is the point (0, vc)
        sx = pairwise_sum8(x)
        sy = pairwise_sum8(y) + vc
        sxx = pairwise_sum8(x * x)
        sxy = pairwise_sum8(x * y)
        den = n * sxx - sx * sx
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(den > 0, (n * sxy - sx * sy) / den, 0.0)
        span = -x.min(axis=1)
        # still rising: the step from the last sample keeps up with the trend (a ramp
        # that has levelled off, like a burner lighting, is not a sustained rise)
        step = vc - state.rise_lel.reshape(-1).take(last_pos[cand])
        dt = t[cand] - last_t[cand]
        rising = (
            (n >= sub("rise_min_samples", at))
            & (span >= sub("rise_min_span_s", at))
            & (slope > 0)
            & (dt > 0)
            & (step >= sub("rise_sustain_ratio", at) * slope * dt)
            & (vc + slope * sub("rise_lead_s", at) >= sub("leak_lel", at))
        )
        new[at[rising]] |= _RISE

    # record this reading if the ring is empty or its last sample is old enough
    rec = ((rn == 0) | (t - last_t >= sub("rise_spacing_s", tr))).nonzero()[0]
    if rec.size:
        hr = hd[rec]
        pos = flat[rec] + hr
        state.rise_lel.reshape(-1)[pos] = v[rec]
        ring_ts[pos] = t[rec]
        at = tr[rec]
        runs[at, RUNS_RING_N] = np.minimum(rn[rec] + _U8_1, np.uint8(RING))
        runs[at, RUNS_RING_HEAD] = (hr + _U8_1) & np.uint8(RING - 1)


def pairwise_sum8(a: F64) -> F64:
    """Row sums of an (m, RING) array, added as ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7)).

    The order NumPy's pairwise `sum(axis=1)` uses for 8 columns, written out so that it
    does not depend on NumPy's reduction internals and the compiled engine
    (gateway/core/compiled.py) adds in the same order: the rise fit agrees to the bit.
    """
    h = a[:, 0::2] + a[:, 1::2]
    q = h[:, 0::2] + h[:, 1::2]
    out: F64 = q[:, 0] + q[:, 1]
    return out


assert RING == 8  # pairwise_sum8
