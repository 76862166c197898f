"""What the devices measure: pure, seeded, vectorised models of gas use, leaks and faults.

Every function takes device indices and a simulated time and returns columns; nothing here
reads a clock or a socket, so the same (seed, scenario, time) gives the same readings in a
test, in a 400 k-device benchmark and on the wire. Randomness that must not depend on call
order (noise, who cooks when) comes from a counter-based hash of (seed, device, time slot),
not from a stateful generator.

Signals, in %LEL for detectors and m3/h for meters:
- gas use by time of day: 5-minute slots in which a household burns gas or not, likelier at
  the cooking peaks and the water-heating hours, almost never at night; flow stays below qmax;
- detector background 0–2 %LEL with noise, plus harmless cooking spikes that never reach 10;
- leaks (`LeakKind`): a slow seep rising over minutes, a rupture jumping above 40, a hose off
  at the meter (flow > 1.5 × qmax) and a riser leak felt in several flats of one building;
  gas stops when the valve closes, except in a riser, which is upstream of the flat's valve;
- faults (`FaultKind`): a stuck sensor, fault bits, a degrading laser, a detector going
  offline, a meter battery draining; at the meter, a flow that never pauses (an appliance
  left on) and a micro-flow in a flat nobody uses (a micro-leak behind the meter).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

SLOT_S = 300.0  # one gas-use decision per household per 5 simulated minutes
CUT_LEL = 20.0  # rule defaults (ARCHITECTURE.md section 3), mirrored for the ground truth
CUT_COUNT = 2
INSTANT_LEL = 40.0
PREALARM_LEL = 10.0
OVERFLOW_FACTOR = 1.5
SPIKE_MAX_LEL = 6.0  # cooking: background (<= 2) + spike stays under the pre-alarm level
HARMLESS_CAP_LEL = 9.0

FAULT_SENSOR = 0x01
FAULT_LASER_DEGRADED = 0x02
FAULT_LOW_POWER = 0x04

VALVE_OPEN, VALVE_CLOSED, VALVE_FAULT = 0, 1, 2
VALVE_NAMES = ("open", "closed", "fault")


class LeakKind(IntEnum):
    NONE = 0
    SEEP = 1  # slow seep: rises over minutes
    RUPTURE = 2  # a hose bursts: above 40 within seconds
    HOSE_OFF = 3  # at the meter: flow > 1.5 x qmax, little gas at the detector
    RISER = 4  # the building's riser: several flats, upstream of their valves


class FaultKind(IntEnum):
    NONE = 0
    STUCK = 1
    FAULT_BITS = 2
    LASER = 3
    OFFLINE = 4
    BATTERY = 5  # meter
    CONTINUOUS = 6  # meter: an appliance left on, the flow never pauses
    MICRO_FLOW = 7  # meter: a micro-leak behind the meter in a flat nobody uses


# ---------------------------------------------------------------- counter-based randomness
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a good 64-bit hash, vectorised (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniform(seed: int, stream: int, a: ArrayLike, b: ArrayLike = 0) -> np.ndarray:
    """Uniform [0, 1) from the key (seed, stream, a, b): same key, same number, any order."""
    with np.errstate(over="ignore"):
        x = np.asarray(a, np.int64).astype(np.uint64) * _GOLD
        x = _mix(x ^ (np.uint64(seed & 0xFFFFFFFF) << np.uint64(32)) ^ np.uint64(stream))
        x = _mix(x + np.asarray(b, np.int64).astype(np.uint64) * _M2)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


# ---------------------------------------------------------------- gas use
def use_probability(hour: np.ndarray) -> np.ndarray:
    """Chance that a household burns gas in a 5-minute slot, by local hour of day."""
    h = np.asarray(hour, np.float64)
    p = np.full(h.shape, 0.06)
    p = np.where(h < 5.5, 0.005, p)  # nights of no use
    p = np.where((h >= 6.0) & (h < 9.0), 0.25, p)  # breakfast, showers
    p = np.where((h >= 11.5) & (h < 13.0), 0.35, p)  # lunch
    p = np.where((h >= 17.5) & (h < 19.5), 0.5, p)  # dinner: the big peak
    p = np.where((h >= 19.5) & (h < 22.5), 0.15, p)  # washing up, showers
    return p


def is_cooking_hour(hour: np.ndarray) -> np.ndarray:
    h = np.asarray(hour)
    return ((h >= 6.5) & (h < 8.0)) | ((h >= 11.5) & (h < 13.0)) | ((h >= 17.5) & (h < 19.5))


def hour_of_day(t: float | np.ndarray) -> np.ndarray:
    return np.asarray((np.asarray(t, np.float64) % 86400.0) / 3600.0)


def demand_m3h(
    seed: int, households: np.ndarray, qmax: np.ndarray, t: float | np.ndarray
) -> np.ndarray:
    """Normal gas flow of `households` at time `t` (one time, or one per household)."""
    t_arr = np.broadcast_to(np.asarray(t, np.float64), households.shape)
    slot = np.floor(t_arr / SLOT_S).astype(np.int64)
    on = uniform(seed, 1, households, slot) < use_probability(hour_of_day(t_arr))
    level = 0.08 + 0.6 * uniform(seed, 2, households, slot)  # share of qmax: < 0.7 x qmax
    return np.where(on, level * qmax, 0.0)


def cooking_spike_lel(seed: int, households: np.ndarray, t: float) -> np.ndarray:
    """The whiff a detector above the hob sees while cooking: harmless, always below 10."""
    slot = np.int64(np.floor(t / SLOT_S))
    hour = hour_of_day(t)
    cooking = (uniform(seed, 1, households, slot) < use_probability(hour)) & is_cooking_hour(hour)
    amp = SPIKE_MAX_LEL * uniform(seed, 3, households, slot)
    frac = (t - slot * SLOT_S) / SLOT_S
    shape = min(1.0, frac * 6.0) * float(np.exp(-3.0 * frac)) / 0.6066  # peak 1 at frac 1/6
    return np.where(cooking, amp * min(shape, 1.0), 0.0)


# ---------------------------------------------------------------- scenario state
@dataclass
class Injection:
    """Leaks and faults as per-device columns (NaN start = none); applied by `Model`."""

    leak_kind: np.ndarray  # int8 [D] detector view of the leak
    leak_start: np.ndarray  # float64 [D] sim time
    leak_peak: np.ndarray  # float32 [D] %LEL
    leak_rise_s: np.ndarray  # float32 [D] time to reach the peak (seep, riser) or tau (rupture)
    leak_stops_on_close: np.ndarray  # bool [D]
    hose_start: np.ndarray  # float64 [H] sim time of a hose coming off at the meter
    hose_factor: np.ndarray  # float32 [H] flow as a multiple of qmax
    fault_kind: np.ndarray  # int8 [D]
    fault_start: np.ndarray  # float64 [D]
    fault_value: np.ndarray  # float32 [D] stuck value, or fault bits
    fault_span_s: np.ndarray  # float32 [D] laser: time to lose half its gain
    battery_start: np.ndarray  # float64 [H] fast drain begins
    battery_rate: np.ndarray  # float32 [H] volts per simulated hour
    flow_start: np.ndarray  # float64 [H] an extra flow begins (CONTINUOUS, MICRO_FLOW)
    flow_extra: np.ndarray  # float32 [H] m3/h added to the household's use ...
    flow_alone: np.ndarray  # bool [H] ... or instead of it (nobody home: MICRO_FLOW)

    @classmethod
    def empty(cls, households: int, detectors: int) -> Injection:
        nan_d = np.full(detectors, np.nan)
        nan_h = np.full(households, np.nan)
        return cls(
            np.zeros(detectors, np.int8),
            nan_d.copy(),
            np.zeros(detectors, np.float32),
            np.ones(detectors, np.float32),
            np.ones(detectors, bool),
            nan_h.copy(),
            np.zeros(households, np.float32),
            np.zeros(detectors, np.int8),
            nan_d.copy(),
            np.zeros(detectors, np.float32),
            np.ones(detectors, np.float32),
            nan_h.copy(),
            np.zeros(households, np.float32),
            nan_h.copy(),
            np.zeros(households, np.float32),
            np.zeros(households, bool),
        )


def leak_lel(
    kind: np.ndarray, start: np.ndarray, peak: np.ndarray, rise_s: np.ndarray, t: float | np.ndarray
) -> np.ndarray:
    """Gas at the detector from an ongoing leak, before any valve closes."""
    age = t - start
    active = np.isfinite(start) & (age >= 0)
    age = np.where(active, age, 0.0)
    ramp = np.minimum(peak, peak * age / np.maximum(rise_s, 1e-3))
    jump = peak * (1.0 - np.exp(-age / np.maximum(rise_s, 1e-3)))
    out = np.where(kind == LeakKind.RUPTURE, jump, ramp)
    return np.where(active, out, 0.0)


class Model:
    """Readings of a fleet at a time: the pure part of every simulated device.

    Holds the static columns (background per detector, battery per meter) and the scenario;
    meter volumes and valve states are the only evolving state, advanced by the caller with
    `integrate` and `set_valve` so that a replay with the same calls gives the same bytes.
    """

    def __init__(
        self,
        seed: int,
        detector_household: np.ndarray,
        qmax_m3h: np.ndarray,
        meter_age_days: np.ndarray,
        injection: Injection | None = None,
    ) -> None:
        self.seed = seed
        self.det_house = np.asarray(detector_household, np.int32)
        self.qmax = np.asarray(qmax_m3h, np.float64)
        h, d = len(self.qmax), len(self.det_house)
        self.inj = injection or Injection.empty(h, d)
        idx_d = np.arange(d)
        idx_h = np.arange(h)
        self.background = 0.2 + 1.3 * uniform(seed, 10, idx_d)
        age_y = np.asarray(meter_age_days, np.float64) / 365.0
        self.batt0 = 3.62 - 0.018 * age_y - 0.05 * uniform(seed, 11, idx_h)
        self.rssi0 = -60.0 - 45.0 * uniform(seed, 12, idx_h)
        self.vol = 100.0 + 4000.0 * uniform(seed, 13, idx_h)
        self.vol_t = np.full(h, np.nan)
        self.valve = np.zeros(h, np.int8)
        self.valve_closed_at = np.full(h, np.nan)  # sim time

    # ------------------------------------------------------------ detectors
    def detector_lel(self, idx: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(ch4 %LEL, fault bits) of detectors `idx` at sim time `t`."""
        inj, seed = self.inj, self.seed
        house = self.det_house[idx]
        tick = np.int64(np.floor(t * 10.0))
        noise = 0.5 * (uniform(seed, 20, idx, tick) - 0.5)
        base = np.clip(self.background[idx] + noise, 0.0, 2.0)
        harmless = np.minimum(base + cooking_spike_lel(seed, house, t), HARMLESS_CAP_LEL)
        gas = leak_lel(
            inj.leak_kind[idx], inj.leak_start[idx], inj.leak_peak[idx], inj.leak_rise_s[idx], t
        )
        # Once the valve is shut the gas stops and the room airs out (not for a riser leak).
        closed_at = self.valve_closed_at[house]
        stops = inj.leak_stops_on_close[idx] & np.isfinite(closed_at) & (closed_at <= t)
        if stops.any():
            tc = np.where(stops, closed_at, t)
            at_close = leak_lel(
                inj.leak_kind[idx],
                inj.leak_start[idx],
                inj.leak_peak[idx],
                inj.leak_rise_s[idx],
                tc,
            )
            gas = np.where(stops, at_close * np.exp(-(t - tc) / 90.0), gas)
        ch4 = harmless + gas
        fault = np.zeros(len(idx), np.uint32)
        kind = inj.fault_kind[idx]
        started = np.isfinite(inj.fault_start[idx]) & (inj.fault_start[idx] <= t)
        if started.any():
            stuck = started & (kind == FaultKind.STUCK)
            ch4 = np.where(stuck, inj.fault_value[idx], ch4)
            bits = started & (kind == FaultKind.FAULT_BITS)
            ch4 = np.where(bits, 0.0, ch4)
            fault = np.where(bits, inj.fault_value[idx].astype(np.uint32), fault)
            laser = started & (kind == FaultKind.LASER)
            gain = 0.5 ** ((t - inj.fault_start[idx]) / inj.fault_span_s[idx])
            gain = np.where(laser, gain, 1.0)
            ch4 = ch4 * gain + np.where(laser, (1.0 - gain) * 3.0 * noise, 0.0)
            fault = np.where(laser & (gain < 0.5), fault | FAULT_LASER_DEGRADED, fault)
        return np.clip(np.round(ch4, 2), 0.0, 100.0), fault.astype(np.uint32)

    def detector_online(self, idx: np.ndarray, t: float) -> np.ndarray:
        inj = self.inj
        gone = (inj.fault_kind[idx] == FaultKind.OFFLINE) & (inj.fault_start[idx] <= t)
        return ~gone

    # ------------------------------------------------------------ meters
    def meter_flow(self, idx: np.ndarray, t: float | np.ndarray) -> np.ndarray:
        """Flow (m3/h) through meters `idx` at `t`, before the valve."""
        flow = demand_m3h(self.seed, idx, self.qmax[idx], t)
        inj = self.inj
        fs = inj.flow_start[idx]
        extra = np.isfinite(fs) & (fs <= t)
        if extra.any():
            base = np.where(extra & inj.flow_alone[idx], 0.0, flow)
            flow = np.where(extra, base + inj.flow_extra[idx], flow)
        hs = inj.hose_start[idx]
        hose = np.isfinite(hs) & (hs <= t)
        return np.where(hose, inj.hose_factor[idx] * self.qmax[idx], flow)

    def integrate(self, idx: np.ndarray, t: float) -> None:
        """Advance the volumes of meters `idx` to `t`, integrating flow slot by slot."""
        last = self.vol_t[idx]
        last = np.where(np.isfinite(last), last, t)
        span = t - last
        if np.any(span > 0):
            # Flow is constant within a 5-minute slot; sample up to 24 points per interval.
            steps = int(min(24, max(1, np.ceil(span.max() / SLOT_S))))
            vol = np.zeros(len(idx))
            for k in range(steps):
                tk = last + span * (k + 0.5) / steps
                vol += self.meter_flow(idx, tk) * (span / steps) / 3600.0
            closed = self.valve[idx] != VALVE_OPEN
            self.vol[idx] += np.where(closed, 0.0, vol)
        self.vol_t[idx] = t

    def meter_reading(self, idx: np.ndarray, t: float) -> tuple[Any, ...]:
        """(vol m3, flow m3/h, valve code, batt V, rssi dBm) of meters `idx` at `t`."""
        self.integrate(idx, t)
        seed = self.seed
        valve = self.valve[idx]
        flow = np.where(valve == VALVE_OPEN, self.meter_flow(idx, t), 0.0)
        batt = self.batt0[idx].copy()
        bs = self.inj.battery_start[idx]
        draining = np.isfinite(bs) & (bs <= t)
        batt = np.where(draining, batt - self.inj.battery_rate[idx] * (t - bs) / 3600.0, batt)
        tick = np.int64(np.floor(t))
        batt = np.clip(batt + 0.01 * (uniform(seed, 30, idx, tick) - 0.5), 2.0, 3.7)
        rssi = np.round(self.rssi0[idx] + 4.0 * (uniform(seed, 31, idx, tick) - 0.5))
        return (
            np.round(self.vol[idx], 3),
            np.round(flow, 3),
            valve,
            np.round(batt, 2),
            rssi.astype(np.int16),
        )

    def set_valve(self, household: int, state: int, t: float) -> None:
        self.integrate(np.array([household]), t)
        if state == VALVE_CLOSED and self.valve[household] != VALVE_CLOSED:
            self.valve_closed_at[household] = t
        elif state == VALVE_OPEN:
            self.valve_closed_at[household] = np.nan
        self.valve[household] = state


# ---------------------------------------------------------------- the rules, as ground truth
class RuleMirror:
    """The default cut rules, evaluated on what was actually published: when a cut is due.

    Used only to stamp the ground truth (which reading made a cut due, and when it went out),
    never to decide anything on the platform's behalf.
    """

    def __init__(self, households: int, detectors: int, qmax_m3h: np.ndarray) -> None:
        self.streak = np.zeros(detectors, np.int16)
        self.qmax = np.asarray(qmax_m3h, np.float64)

    def detectors(
        self, idx: np.ndarray, ch4: np.ndarray, fault: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(dangerous, cut_due) masks for these readings; updates the streaks."""
        ok = fault == 0
        high = ok & (ch4 >= CUT_LEL)
        streak = np.where(high, self.streak[idx] + 1, 0)
        self.streak[idx] = streak
        cut_due = (ok & (ch4 >= INSTANT_LEL)) | (streak >= CUT_COUNT)
        return high, cut_due

    def meters(self, idx: np.ndarray, flow: np.ndarray) -> np.ndarray:
        return flow > OVERFLOW_FACTOR * self.qmax[idx]
