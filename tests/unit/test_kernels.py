"""The compiled engine (gateway/core/compiled.py) against the NumPy engine, its specification.

Two FleetStates built alike, one per engine, get the same random steps: fleets with
several models (per-model thresholds), meters and detectors, households without a
meter; batches with repeated slots and values on every threshold (and one float32 step
either side of it), rising ramps, stuck values, faults, flows, valve codes, batteries;
sweeps, status messages and restored alarms in between. After every step the Effects
must be equal field by field (dtype too) and the hot records and rise rings equal byte
for byte. Also: the engine choice, warm-up and the kernels' on-disk cache.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core import compiled, fleet, gas_rules, kernels, thresholds
from gateway.core.alarms import AlarmKind, DeviceKind, ValveCode
from gateway.core.effects import Effects
from gateway.core.fleet import RECORD, FleetState
from gateway.core.gas_rules import evaluate_detectors
from gateway.core.meter_rules import evaluate_meters
from gateway.core.sweep import mark_offline, mark_seen, sweep
from gateway.core.thresholds import Thresholds

T0 = 1_800_000_000.0
RING = thresholds.RING
ROOT = Path(__file__).resolve().parents[2]

# Short durations so that every rule fires within a test; profiles that differ in every
# column the kernels read (levels, counts, rise, flow, valve, battery, service life).
BASE = Thresholds(stuck_s=60.0, continuous_flow_s=120.0, micro_flow_s=60.0, heartbeat_s=30.0)
MODELS = {
    1: dataclasses.replace(BASE, prealarm_lel=8.0, prealarm_count=2, leak_lel=15.0, leak_count=1,
                           leak_instant_lel=30.0, clear_lel=4.0, clear_count=2,
                           fault_clear_count=4, rise_floor_lel=4.0, rise_track_lel=1.0,
                           rise_window_s=40.0, rise_lead_s=90.0, rise_min_samples=3,
                           rise_min_span_s=10.0, rise_sustain_ratio=0.3,
                           stuck_tolerance_lel=0.1, stuck_ignore_below_lel=1.0, stuck_s=30.0),
    2: dataclasses.replace(BASE, start_flow_m3h=0.03, overflow_factor=1.2,
                           overflow_clear_factor=0.9, micro_flow_factor=1.5, micro_flow_s=40.0,
                           continuous_flow_s=60.0, valve_closed_flow_count=3,
                           valve_clear_count=1, battery_low_v=3.0, battery_clear_v=3.2,
                           heartbeat_s=100.0, detector_life_years=1e-4, meter_life_years=2e-4),
    # model 3: the default
}
PROFILES = [BASE, *MODELS.values()]
QMAX = [1.6, 2.5, float("nan")]


def _around(values: list[float]) -> list[float]:
    """Each value as float32 and one float32 step below and above it."""
    out: set[float] = set()
    for v in values:
        f = np.float32(v)
        out |= {float(f), float(np.nextafter(f, np.float32(-np.inf))),
                float(np.nextafter(f, np.float32(np.inf)))}
    return sorted(out)


CH4 = _around([e for p in PROFILES for e in (
    p.clear_lel, p.prealarm_lel, p.leak_lel, p.leak_instant_lel, p.rise_floor_lel,
    p.rise_track_lel, p.stuck_ignore_below_lel, p.stuck_tolerance_lel)]  # (0, tolerance):
) + [0.0, 0.0, 1.5, 3.0, 7.0, 12.0, 60.0]  # a step of exactly the stuck tolerance
FLOW = sorted({float(x) for x in _around(
    [p.start_flow_m3h for p in PROFILES]
    + [float(np.float32(p.micro_flow_factor * p.start_flow_m3h)) for p in PROFILES])}
    | {float(v) for p in PROFILES for q in QMAX[:2] for fac in (p.overflow_factor,
                                                                  p.overflow_clear_factor)
       for v in _around([float(np.float32(q) * np.float32(fac))])}) + [0.0, 0.0, 0.5, 9.0]
BATT = _around([v for p in PROFILES for v in (p.battery_low_v, p.battery_clear_v)]) + [3.6]
DT = [-20.0, -1.0, 0.0, 0.5, 1.0, 5.0, 7.5, 8.0, 10.0, 30.0, 61.0, 130.0]


@dataclasses.dataclass
class Fleet:
    states: tuple[FleetState, FleetState]  # numpy, compiled
    detectors: np.ndarray
    meters: np.ndarray


def build(households: list[tuple[bool, int, int, int, int]]) -> Fleet:
    """households: (has a meter, detectors, meter model, detector model, qmax index)."""
    states = (FleetState(capacity=2, thresholds=BASE, models=MODELS, engine="numpy"),
              FleetState(capacity=2, thresholds=BASE, models=MODELS, engine="compiled"))
    assert [s.engine for s in states] == ["numpy", "compiled"]
    dets, mets = [], []
    for hh, (has_meter, n_det, meter_model, det_model, q) in enumerate(households):
        for state in states:
            meter = -1
            if has_meter:
                meter = int(state.add_devices([DeviceKind.METER], [hh], [-1], [meter_model],
                                              [QMAX[q]], [T0 - 1e6], T0)[0])
            d = state.add_devices([DeviceKind.DETECTOR] * n_det, [hh] * n_det, [meter] * n_det,
                                  [det_model] * n_det, [np.nan] * n_det, [T0 - 2e6] * n_det,
                                  T0 if hh % 3 else np.nan)
        if has_meter:
            mets.append(meter)
        dets.extend(d.tolist())
    return Fleet(states, np.array(dets, np.int32), np.array(mets, np.int32))


def assert_same_state(a: FleetState, b: FleetState) -> None:
    assert a.n_devices == b.n_devices
    assert a.records_bytes.tobytes() == b.records_bytes.tobytes(), _hot_diff(a, b)
    assert a.rise_lel.tobytes() == b.rise_lel.tobytes()
    assert a.rise_ts.tobytes() == b.rise_ts.tobytes()


def _hot_diff(a: FleetState, b: FleetState) -> str:
    rows = np.nonzero((a.records_bytes != b.records_bytes).any(axis=1))[0]
    return "\n".join(f"slot {r}: {a.records[r]} != {b.records[r]}" for r in rows[:5])


def assert_same_effects(a: Effects, b: Effects) -> None:
    for f in dataclasses.fields(Effects):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype and x.shape == y.shape, f.name
        assert x.tobytes() == y.tobytes(), f"{f.name}: {x} != {y}"


def both(fleet: Fleet, step) -> Effects | None:
    """Apply one step to both states; same Effects, or the same ValueError, same state."""
    results = []
    for state in fleet.states:
        try:
            results.append(step(state))
        except ValueError as e:
            results.append(e)
    a, b = results
    assert_same_state(*fleet.states)
    if isinstance(a, ValueError) or isinstance(b, ValueError):
        assert type(a) is type(b) and str(a) == str(b), (a, b)
        return None
    assert_same_effects(a, b)
    return b


# ------------------------------------------------------------------ random steps

households = st.lists(st.tuples(st.sampled_from([True, True, True, False]), st.integers(0, 3),
                                st.integers(0, 3), st.integers(0, 3), st.integers(0, 2)),
                      min_size=1, max_size=6)
det_reading = st.tuples(st.integers(0, 63), st.sampled_from(CH4),
                        st.sampled_from([0, 0, 0, 0, 1, 8]), st.sampled_from(DT))
MICRO = [f for f in FLOW if 0 < f < 0.05]  # micro flows, for the steady runs
hold = st.tuples(st.integers(0, 63), st.sampled_from(CH4), st.integers(1, 6),
                 st.sampled_from([1.0, 10.0, 30.0]), st.sampled_from([0, 0, 4]))
steady = st.tuples(st.integers(0, 63), st.sampled_from(FLOW + MICRO * 2), st.integers(2, 12),
                   st.sampled_from([5.0, 10.0, 30.0]),
                   st.sampled_from([ValveCode.OPEN, ValveCode.CLOSED]), st.sampled_from(BATT))
met_reading = st.tuples(st.integers(0, 63), st.sampled_from(FLOW),
                        st.sampled_from([ValveCode.OPEN, ValveCode.OPEN, ValveCode.CLOSED,
                                         ValveCode.FAULT]),
                        st.sampled_from(BATT), st.sampled_from(DT))
ramp = st.tuples(st.integers(0, 63), st.sampled_from(CH4),  # the last value
                 st.sampled_from([0.0, 0.4, 1.0, 1.6, 3.0, -1.0]), st.integers(2, 14),
                 st.sampled_from([1.0, 4.0, 7.5, 8.0, 10.0, 15.0]), st.booleans())
step = st.one_of(
    st.tuples(st.just("det"), st.lists(det_reading, min_size=1, max_size=30)),
    st.tuples(st.just("ramp"), st.lists(ramp, min_size=1, max_size=3)),
    st.tuples(st.just("hold"), st.lists(hold, min_size=1, max_size=3)),
    st.tuples(st.just("met"), st.lists(met_reading, min_size=1, max_size=30)),
    st.tuples(st.just("steady"), steady),
    st.tuples(st.just("sweep"), st.sampled_from([1.0, 31.0, 95.0, 301.0, 4000.0, 20000.0])),
    st.tuples(st.just("offline"), st.lists(st.integers(0, 63), min_size=1, max_size=3)),
    st.tuples(st.just("seen"), st.lists(st.integers(0, 63), min_size=1, max_size=3)),
    st.tuples(st.just("restore"), st.lists(st.tuples(st.integers(0, 63),
                                                     st.sampled_from(list(AlarmKind))),
                                           min_size=1, max_size=3)),
    st.tuples(st.just("wrong"), st.sampled_from(["kind", "nan", "length", "slot"])),
)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def times(self, dts: list[float]) -> np.ndarray:
        ts = self.t + np.cumsum(dts)
        self.t = max(self.t, float(ts.max())) + 0.25
        return ts


def run_step(fleet: Fleet, clock: Clock, op: tuple) -> None:
    kind, arg = op
    dets, mets = fleet.detectors, fleet.meters
    n = fleet.states[0].n_devices
    if n == 0:
        return
    if kind == "det" and dets.size:
        slots = dets[[r[0] % dets.size for r in arg]]
        ch4 = np.array([r[1] for r in arg], np.float32)
        fault = np.array([r[2] for r in arg], np.uint32)
        ts = clock.times([r[3] for r in arg])
        both(fleet, lambda s: evaluate_detectors(s, slots, ch4, fault, ts, clock.t))
    elif kind == "ramp" and dets.size:
        # ramps of a few detectors, interleaved in one batch, ending on a threshold
        rows = []
        for d, end, slope, count, dt, noisy in arg:
            for k in range(count):
                v = end - slope * (count - 1 - k) + (0.3 * (-1) ** k if noisy and k < count - 1
                                                     else 0.0)
                rows.append((k * dt, int(dets[d % dets.size]), max(v, 0.0)))
        rows.sort()
        slots = np.array([r[1] for r in rows], np.int32)
        ch4 = np.array([r[2] for r in rows], np.float32)
        ts = clock.t + np.array([r[0] for r in rows])
        clock.t = float(ts.max()) + 1.0
        zero = np.zeros(len(rows), np.uint32)
        both(fleet, lambda s: evaluate_detectors(s, slots, ch4, zero, ts, clock.t))
    elif kind == "hold" and dets.size:  # detectors holding a value for a while
        slots, ch4, fault, dts = [], [], [], []
        for d, v, count, dt, f in arg:
            slots += [int(dets[d % dets.size])] * count
            ch4 += [v] * count
            fault += [f] * count
            dts += [dt] * count
        sl, c4 = np.array(slots, np.int32), np.array(ch4, np.float32)
        fl, ts = np.array(fault, np.uint32), clock.times(dts)
        both(fleet, lambda s: evaluate_detectors(s, sl, c4, fl, ts, clock.t))
    elif kind == "met" and mets.size:
        slots = mets[[r[0] % mets.size for r in arg]]
        flow = np.array([r[1] for r in arg], np.float32)
        valve = np.array([r[2] for r in arg], np.uint8)
        batt = np.array([r[3] for r in arg], np.float32)
        ts = clock.times([r[4] for r in arg])
        vol = np.zeros(len(arg))
        both(fleet, lambda s: evaluate_meters(s, slots, flow, vol, valve, batt, ts, clock.t))
    elif kind == "steady" and mets.size:  # one meter, one flow for a while
        m, f, count, dt, valve, batt = arg
        slots = np.full(count, mets[m % mets.size], np.int32)
        ts = clock.times([dt] * count)
        fl, vol = np.full(count, f, np.float32), np.zeros(count)
        vl, bt = np.full(count, valve, np.uint8), np.full(count, batt, np.float32)
        both(fleet, lambda s: evaluate_meters(s, slots, fl, vol, vl, bt, ts, clock.t))
    elif kind == "sweep":
        clock.t += arg
        both(fleet, lambda s: sweep(s, clock.t))
    elif kind in ("offline", "seen"):
        slots = np.array([i % n for i in arg], np.int32)
        fn = mark_offline if kind == "offline" else mark_seen
        both(fleet, lambda s: fn(s, slots, clock.t))
    elif kind == "restore":
        slots = [i % n for i, _ in arg]
        kinds = [k for _, k in arg]
        both(fleet, lambda s: (s.set_active(slots, kinds), Effects.empty())[1])
    elif kind == "wrong" and dets.size and mets.size:
        t = np.full(2, clock.t)
        if arg == "kind":  # a meter in a detector batch, and the other way round
            bad = np.array([dets[0], mets[0]], np.int32)
            both(fleet, lambda s: evaluate_detectors(s, bad, np.array([45, 45], np.float32),
                                                     np.zeros(2, np.uint32), t, clock.t))
            both(fleet, lambda s: evaluate_meters(s, bad[::-1], np.full(2, 9, np.float32),
                                                  np.zeros(2), np.zeros(2, np.uint8),
                                                  np.full(2, 3.6, np.float32), t, clock.t))
        elif arg == "nan":
            both(fleet, lambda s: evaluate_detectors(s, dets[:1].repeat(2),
                                                     np.array([45, np.nan], np.float32),
                                                     np.zeros(2, np.uint32), t, clock.t))
        elif arg == "length":
            both(fleet, lambda s: evaluate_meters(s, mets[:1].repeat(2), np.ones(3, np.float32),
                                                  np.zeros(2), np.zeros(2, np.uint8),
                                                  np.full(2, 3.6, np.float32), t, clock.t))
        else:
            both(fleet, lambda s: evaluate_detectors(s, [10**6], [45.0], [0], [clock.t],
                                                     clock.t))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hh=households, steps=st.lists(step, min_size=1, max_size=14))
def test_compiled_engine_equals_numpy_engine(hh, steps) -> None:
    fleet = build(hh)
    assert_same_state(*fleet.states)
    clock = Clock()
    for op in steps:
        run_step(fleet, clock, op)


def test_large_batches_with_repeats_agree() -> None:
    """Batches past the NumPy engine's quiet/busy split, repeats in several rounds."""
    rng = np.random.default_rng(11)
    hh = [(bool(rng.random() < 0.9), int(rng.integers(0, 3)), int(rng.integers(0, 4)),
           int(rng.integers(0, 4)), int(rng.integers(0, 3))) for _ in range(600)]
    fleet = build(hh)
    clock = Clock()
    ch4_pool = np.array(CH4 + [0.0] * 60, np.float32)
    flow_pool = np.array(FLOW + [0.0] * 10, np.float32)
    for b in range(40):
        n = 1500
        slots = rng.choice(fleet.detectors, n)  # about 1 in 2 slots repeats
        ch4 = rng.choice(ch4_pool, n)
        ramp = slots % 7 == 0
        ch4[ramp] = np.float32(0.4 * b + 0.01 * (slots[ramp] % 13))  # slow rises
        fault = (rng.random(n) < 0.02).astype(np.uint32)
        ts = clock.times(rng.choice([0.0, 0.01, 0.2, 1.0], n) + (b % 3) * 2.0)
        both(fleet, lambda s: evaluate_detectors(s, slots, ch4, fault, ts, clock.t))
        m = 600
        ms = rng.choice(fleet.meters, m)
        flow = rng.choice(flow_pool, m)
        valve = rng.choice(np.array([0, 0, 0, 1, 2], np.uint8), m)
        batt = rng.choice(np.array(BATT, np.float32), m)
        ts = clock.times(rng.choice([0.0, 1.0, 7.0], m))
        both(fleet, lambda s: evaluate_meters(s, ms, flow, np.zeros(m), valve, batt, ts,
                                              clock.t))
        if b % 10 == 9:
            clock.t += 40.0
            both(fleet, lambda s: sweep(s, clock.t))
    assert fleet.states[1].active.any()


def _ramp(end: float, slope: float, before_end: int, shape: str) -> float:
    """A ramp's value `before_end` readings before its `end`: linear, steepening, or a
    plateau and a jump (for those the fit depends on which samples are in the window)."""
    if shape == "line":
        return end - slope * before_end
    if shape == "bend":
        return end - slope * before_end * (1 + 0.15 * before_end)
    return end - 3 * slope * (before_end > 0)


def test_rise_rule_on_a_grid_of_ramps() -> None:
    """Ramps ending on (or one float32 step beside) the rise rule's levels, at spacings
    around its window, span and sample counts: boundaries random steps rarely hit."""
    ends = _around([e for p in PROFILES for e in (p.leak_lel, p.rise_floor_lel,
                                                  p.prealarm_lel, p.rise_track_lel)])
    grid = list(itertools.product(range(4), ends, [0.5, 1.0, 1.6, 3.0], [3, 4, 5, 9],
                                  [3.75, 7.5, 8.0, 10.0, 15.0], ["line", "bend", "jump"]))
    n = len(grid)
    states = tuple(FleetState(capacity=2 * n, thresholds=BASE, models=MODELS, engine=e)
                   for e in ("numpy", "compiled"))
    for state in states:  # one meter for every other detector
        meters = state.add_devices([DeviceKind.METER] * (n // 2), range(n // 2), [-1] * (n // 2),
                                   [0] * (n // 2), [2.5] * (n // 2), [T0] * (n // 2), T0)
        dets = state.add_devices([DeviceKind.DETECTOR] * n, range(n),
                                 np.where(np.arange(n) % 2 == 0, meters[np.arange(n) // 2 %
                                                                        meters.size], -1),
                                 [g[0] for g in grid], [np.nan] * n, [T0] * n, T0)
    fleet = Fleet(states, dets, meters)
    t0 = T0 + 10.0
    rising = 0
    for k in range(max(g[3] for g in grid)):
        rows = [(i, _ramp(end, slope, count - 1 - k, shape), t0 + k * dt)
                for i, (_, end, slope, count, dt, shape) in enumerate(grid) if k < count]
        slots = fleet.detectors[[r[0] for r in rows]]
        ch4 = np.array([max(r[1], 0.0) for r in rows], np.float32)
        ts = np.array([r[2] for r in rows])
        e = both(fleet, lambda s: evaluate_detectors(s, slots, ch4, np.zeros(len(rows), np.uint32),
                                                     ts, float(ts.max())))
        rising += int((e.raised_kind == AlarmKind.RISING).sum())
    assert rising > 100


def test_ring_sums_add_in_the_same_order() -> None:
    """The rise fit's sums: kernels.sum8 adds in gas_rules.pairwise_sum8's order."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3000, RING)) * 10.0 ** rng.integers(-3, 10, (3000, RING))
    expected = gas_rules.pairwise_sum8(a)
    got = np.array([kernels.sum8(row) for row in a])
    assert expected.tobytes() == got.tobytes()
    sequential = a[:, 0].copy()
    for j in range(1, RING):
        sequential += a[:, j]
    assert (sequential != expected).any()  # the order matters for these values


# ------------------------------------------------------------------ engine choice

def test_engine_choice() -> None:
    assert FleetState(engine="numpy").engine == "numpy"
    assert FleetState(engine="compiled").engine == "compiled"
    assert FleetState().engine == "compiled"  # auto, numba is installed
    with pytest.raises(ValueError):
        FleetState(engine="fast")


def test_auto_falls_back_to_numpy_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "_compiled", None)  # as if `import numba` failed
    assert FleetState().engine == "numpy"
    with pytest.raises(ImportError):
        FleetState(engine="compiled")


def test_inputs_of_any_form_use_the_one_compiled_signature() -> None:
    """After warm-up nothing compiles again: odd inputs are converted, not compiled for."""
    compiled.warm_up()
    state = FleetState(engine="compiled")
    m = state.add_devices([1], [0], [-1], [0], [2.5], [T0], T0)
    d = state.add_devices([0, 0], [0, 0], [int(m[0])] * 2, [0, 0], [np.nan] * 2, [T0] * 2, T0)
    ro = np.array([T0, T0 + 1])
    ro.flags.writeable = False
    evaluate_detectors(state, list(d), [12.0, 45.0], (0, 0), ro, T0 + 1)
    evaluate_detectors(state, d.astype(np.int64)[::-1], np.array([1.0, 2.0])[::1],
                       np.zeros(4, np.int8)[::2], np.array([T0 + 2, T0 + 3]), T0 + 3)
    evaluate_meters(state, m.astype(np.int16), [0.5], [1.0], [1], [3.2], [T0 + 4], T0 + 4)
    evaluate_meters(state, [int(m[0])], np.float64(9.0), [0], np.uint8(0), 3.0, T0 + 5,
                    T0 + 5)
    for fn in (kernels.detector_kernel, kernels.meter_kernel):
        assert len(fn.signatures) == 1, fn.signatures


def test_compiled_engine_checks_before_writing() -> None:
    state = FleetState(engine="compiled")
    m = state.add_devices([1], [0], [-1], [0], [2.5], [T0], T0)
    d = state.add_devices([0], [0], m, [0], [np.nan], [T0], T0)
    before = state.records_bytes.copy()
    with pytest.raises(ValueError, match="every slot must be a detector"):
        evaluate_detectors(state, [d[0], m[0]], [45.0, 45.0], [0, 0], [T0, T0], T0)
    with pytest.raises(ValueError, match="every slot must be a meter"):
        evaluate_meters(state, [m[0], d[0]], [9.0, 9.0], [0, 0], [0, 0], [3.6, 3.6],
                        [T0, T0], T0)
    scratch = RECORD.fields["scratch"][1]
    changed = np.nonzero(state.records_bytes != before)[1]
    assert set(changed.tolist()) <= set(range(scratch, scratch + 4))  # only batch positions


def test_a_model_without_thresholds_fails_on_both_engines() -> None:
    fleet = build([(True, 1, 0, 0, 0)])
    for state in fleet.states:
        state.model[:] = 7  # written behind add_devices' back: no row 7 in the table
        with pytest.raises(IndexError):
            evaluate_detectors(state, fleet.detectors, [45.0], [0], [T0], T0)
        with pytest.raises(IndexError):
            evaluate_meters(state, fleet.meters, [9.0], [0], [0], [3.6], [T0], T0)
    assert_same_state(*fleet.states)


def test_a_second_process_loads_the_kernels_from_the_cache() -> None:
    compiled.warm_up()  # this process compiled them, or loaded them itself
    code = textwrap.dedent("""
        import time
        t0 = time.perf_counter()
        from gateway.core import compiled, kernels
        seconds = compiled.warm_up()
        hits = [sum(f.stats.cache_hits.values()) for f in
                (kernels.detector_kernel, kernels.meter_kernel)]
        misses = [sum(f.stats.cache_misses.values()) for f in
                  (kernels.detector_kernel, kernels.meter_kernel)]
        print(hits, misses, round(seconds, 3), round(time.perf_counter() - t0, 3))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_DISABLE")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split("]")
    assert out[0].strip() == "[1, 1" and out[1].strip() == "[0, 0", out
