"""Sweep and status steps: what the clock and the devices' status messages change.

`sweep` runs on a timer over the whole fleet (OFFLINE after silence, service life, flow
runs that outlast their limit between a meter's readings); `mark_offline` and `mark_seen`
apply a device's online/offline status. Both use the platform clock `now`, passed in.
They are shared by both engines: they touch few records, or all of them in order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.alarms import KIND_BITS, AlarmKind, DeviceKind
from gateway.core.effects import Collector, Effects, emit
from gateway.core.fleet import FleetState
from gateway.core.thresholds import YEAR_S
from gateway.core.types import F32, U8, Ix

__all__ = ["mark_offline", "mark_seen", "sweep"]

_OFF = KIND_BITS[AlarmKind.OFFLINE]
_CONT, _MICRO = KIND_BITS[AlarmKind.CONTINUOUS_FLOW], KIND_BITS[AlarmKind.MICRO_LEAK]
_METER = np.uint8(DeviceKind.METER)


def sweep(state: FleetState, now: float, start: int = 0, stop: int | None = None) -> Effects:
    """Periodic whole-fleet check (every few seconds), optionally over a slot range.

    OFFLINE: no message for offline_heartbeats * heartbeat_s (of the device's model).
    Service life: now past installed_ts + meter/detector life. CONTINUOUS_FLOW and
    MICRO_LEAK: a run of flow that outlasts its limit between a meter's readings (only
    for meters heard from recently). Never requests a valve close.
    """
    now = float(now)
    stop = state.n_devices if stop is None else min(stop, state.n_devices)
    # in chunks that stay in the CPU cache while every field of them is read
    return Effects.concat(
        [
            _sweep_chunk(state, now, a, min(a + _SWEEP_CHUNK, stop))
            for a in range(max(start, 0), stop, _SWEEP_CHUNK)
        ]
    )


_SWEEP_CHUNK = 16384  # records (1 MiB)


def _sweep_chunk(state: FleetState, now: float, start: int, stop: int) -> Effects:
    sl = slice(start, stop)
    hot = state.records[sl]
    act = hot["active"].copy()  # the old bits, kept apart from the view we write into
    model = hot["model"]
    tab = state.table

    def col(name: str) -> Any:
        scalar = tab.scalars[name]
        return scalar if scalar is not None else tab.columns[name].take(model)

    silent = now - hot["last_seen"]
    stale = silent > col("offline_s")
    new = act | stale * _OFF
    due = state.service_due_ts[sl] <= now
    if due.any():
        is_meter = hot["kind"] == _METER
        new |= (due & is_meter) * KIND_BITS[AlarmKind.METER_SERVICE_LIFE]
        new |= (due > is_meter) * KIND_BITS[AlarmKind.DETECTOR_SERVICE_LIFE]
    heard = (new & _OFF) == 0
    new |= ((now - hot["flow_since_ts"] >= col("continuous_flow_s")) & heard) * _CONT
    new |= ((now - hot["micro_since_ts"] >= col("micro_flow_s")) & heard) * _MICRO

    ch = (act != new).nonzero()[0]
    if ch.size == 0:
        return Effects.empty()
    slot = ch + start
    state.active[slot] = new[ch]
    age_years = (now - state.installed_ts[slot]) / YEAR_S
    flow = state.last_flow_m3h[slot]
    silent_ch = silent[ch]

    def value_of(i: Ix, k: U8) -> F32:
        v = np.where(
            k == AlarmKind.OFFLINE,
            silent_ch[i],
            np.where(
                (k == AlarmKind.METER_SERVICE_LIFE) | (k == AlarmKind.DETECTOR_SERVICE_LIFE),
                age_years[i],
                flow[i],
            ),
        )
        return v.astype(np.float32)

    out = Collector()
    emit(out, slot, None, np.full(ch.size, now), act[ch], new[ch], value_of)
    return out.finish(state)


def mark_offline(state: FleetState, slots: npt.ArrayLike, now: float) -> Effects:
    """A device said `{"online": false}` (or its last will fired): OFFLINE at once."""
    return _set_bit(state, state.check_slots(slots), float(now), AlarmKind.OFFLINE, on=True)


def mark_seen(state: FleetState, slots: npt.ArrayLike, now: float) -> Effects:
    """A device spoke without a reading (status online, event, ack): alive again."""
    s = state.check_slots(slots)
    state.last_seen[s] = float(now)
    return _set_bit(state, s, float(now), AlarmKind.OFFLINE, on=False)


def _set_bit(state: FleetState, s: Ix, now: float, kind: AlarmKind, on: bool) -> Effects:
    if s.size == 0:
        return Effects.empty()
    s = np.unique(s)
    act = state.active[s]
    new = act | KIND_BITS[kind] if on else act & ~KIND_BITS[kind]
    out = Collector()
    silent = (now - state.last_seen[s]).astype(np.float32)
    ch = emit(out, s, None, np.full(s.size, now), act, new, lambda i, k: silent[i])
    if ch.size:
        state.active[s[ch]] = new[ch]
    return out.finish(state)
