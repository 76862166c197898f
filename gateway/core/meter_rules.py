"""Meter rules: what a batch of meter readings does (the NumPy engine, the specification).

`evaluate_meters` applies the over-flow, continuous flow, micro flow, valve and battery
rules of ARCHITECTURE section 3 to a batch, updating the FleetState in place, and returns
the Effects (an OVERFLOW asks to close the meter itself). Flow runs are measured on each
reading's own `ts` (device clock); `now` (platform clock) only marks the meter as seen.
With the compiled engine (gateway/core/compiled.py) the same rules run there, bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.alarms import (
    KIND_BITS,
    AlarmKind,
    DeviceKind,
    ValveCode,
    clear_where,
    raise_where,
)
from gateway.core.effects import Collector, Effects, emit
from gateway.core.fleet import (
    RUNS_VALVE_FLOW,
    RUNS_VALVE_OK,
    FleetState,
    bump_runs,
    compiled_engine,
    rounds,
)
from gateway.core.thresholds import Lookup, ThresholdTable, subset
from gateway.core.types import F32, F64, U8, U32, Ix

__all__ = ["evaluate_meters"]

_OFF = KIND_BITS[AlarmKind.OFFLINE]
_NOT_OFFLINE = ~_OFF
_OVF, _CONT, _MICRO = (
    KIND_BITS[AlarmKind.OVERFLOW],
    KIND_BITS[AlarmKind.CONTINUOUS_FLOW],
    KIND_BITS[AlarmKind.MICRO_LEAK],
)
_VALVE, _BATT = KIND_BITS[AlarmKind.VALVE_FAULT], KIND_BITS[AlarmKind.BATTERY_LOW]
_CLOSED, _VFAULT = np.uint8(ValveCode.CLOSED), np.uint8(ValveCode.FAULT)
_METER = np.uint8(DeviceKind.METER)


def evaluate_meters(
    state: FleetState,
    slots: npt.ArrayLike,
    flow_m3h: npt.ArrayLike,
    vol_m3: npt.ArrayLike,
    valve: npt.ArrayLike,
    batt_v: npt.ArrayLike,
    ts: npt.ArrayLike,
    now: float,
) -> Effects:
    """Apply a batch of meter readings (in arrival order; slots may repeat).

    `flow_m3h` m3/h, `valve` ValveCode values (0 open, 1 closed, 2 fault), `batt_v`
    volts, `ts` device time and `now` platform time, epoch seconds. `vol_m3` is taken so
    the call mirrors the reading, but no v1 rule uses the cumulative volume. An
    OVERFLOW also asks to close this meter.
    """
    s = state.check_slots(slots)
    flow = np.asarray(flow_m3h, dtype=np.float32).ravel()
    vl = np.asarray(valve, dtype=np.uint8).ravel()
    batt = np.asarray(batt_v, dtype=np.float32).ravel()
    t = np.asarray(ts, dtype=np.float64).ravel()
    if not flow.size == vl.size == batt.size == t.size == np.size(vol_m3) == s.size:
        raise ValueError("evaluate_meters: all arrays must have the same length")
    if state.engine == "compiled":
        return compiled_engine().evaluate_meters(state, s, flow, vl, batt, t, float(now))
    out = Collector()
    for rows in rounds(state, s):
        if rows is None:
            _meter_round(state, s, flow, vl, batt, t, float(now), None, out)
        else:
            out.sort = True
            _meter_round(
                state, s[rows], flow[rows], vl[rows], batt[rows], t[rows], float(now), rows, out
            )
        out.first_round = False
    return out.finish(state)


def _meter_round(
    state: FleetState,
    s: Ix,
    flow: F32,
    valve: U8,
    batt: F32,
    ts: F64,
    now: float,
    rows: Ix | None,
    out: Collector,
) -> None:
    rec = state.fetch_records(s, _METER, out.first_round)
    act = rec["active"].copy()
    present = int(np.bitwise_or.reduce(act))
    new = act & _NOT_OFFLINE if present & _OFF else act.copy()  # a reading proves it alive
    # (unlike detectors, a large share of meter readings show flow: splitting off the
    # meters at rest costs about what it saves, measured)
    _flow_rules(state.table, rec, flow, valve, batt, ts, act, new, present)

    rec["active"] = new
    rec["valve_state"] = valve
    rec["last_flow_m3h"] = flow
    rec["last_seen"] = now
    state.store_records(s, rec)

    def value_of(i: Ix, k: U8) -> F32:
        v: F32 = np.where(k == AlarmKind.BATTERY_LOW, batt[i], flow[i])
        return v

    ch = emit(out, s, rows, ts, act, new, value_of)
    if ch.size:
        up = ch[((new[ch] & ~act[ch]) & _OVF) != 0]
        if up.size:  # close this meter
            meter = s[up].astype(np.int32)
            r = up if rows is None else rows[up]
            out.closes.append(
                (r, meter, np.full(up.size, AlarmKind.OVERFLOW, dtype=np.uint8), meter)
            )


def _flow_rules(
    table: ThresholdTable,
    rec: npt.NDArray[Any],
    flow: F32,
    valve: U8,
    batt: F32,
    ts: F64,
    act: U32,
    new: U32,
    present: int,
) -> None:
    """Over-flow, continuous flow, micro flow, valve and battery rules.

    Updates the records `rec` (runs and flow runs) and the alarm bits `new` in place.
    """
    th = Lookup(table, rec["model"])
    flowing = flow > th("start_flow_m3h")

    # over-flow against the household load, with a hysteresis band
    qmax = rec["qmax_m3h"]
    if present & _OVF:
        clear_where(new, flow <= qmax * th("overflow_clear_factor"), _OVF)
    raise_where(new, flow > qmax * th("overflow_factor"), _OVF)

    # continuous flow: a run without a pause; a pause clears the alarm
    run = np.where(flowing, np.minimum(rec["flow_since_ts"], ts), np.inf)
    rec["flow_since_ts"] = run
    if present & _CONT:
        clear_where(new, ~flowing, _CONT)
    raise_where(new, ts - run >= th("continuous_flow_s"), _CONT)

    # micro flow: a small steady flow; only a true zero proves the leak gone
    micro = (flow > 0) & (flow < th("micro_max_m3h"))
    msince = rec["micro_since_ts"]
    mi = (micro | (msince < np.inf)).nonzero()[0]  # few: a micro flow now or a run to end
    if mi.size:
        mrun = np.where(micro[mi], np.minimum(msince[mi], ts[mi]), np.inf)
        msince[mi] = mrun
        long = ts[mi] - mrun >= subset(th("micro_flow_s"), mi)
        if long.any():
            new[mi[long]] |= _MICRO
    if present & _MICRO:
        clear_where(new, flow <= 0, _MICRO)

    # valve: flow while closed (debounced), or the meter reports a valve fault
    w = rec["runs"].copy()
    runs = w.view(np.uint8).reshape(-1, 8)
    closed_flow = (valve == _CLOSED) & flowing
    vfault = valve == _VFAULT
    vrun = bump_runs(runs[:, RUNS_VALVE_FLOW], closed_flow)
    vok = bump_runs(runs[:, RUNS_VALVE_OK], ~(closed_flow | vfault))
    runs[:, RUNS_VALVE_FLOW] = vrun
    runs[:, RUNS_VALVE_OK] = vok
    rec["runs"] = w
    if present & _VALVE:
        clear_where(new, vok >= th("valve_clear_count"), _VALVE)
    raise_where(new, (vrun >= th("valve_closed_flow_count")) | vfault, _VALVE)

    # battery, with hysteresis
    if present & _BATT:
        clear_where(new, batt >= th("battery_clear_v"), _BATT)
    raise_where(new, batt < th("battery_low_v"), _BATT)
