"""The detection core: every rule of ARCHITECTURE section 3, its hysteresis, and batching.

Pure functions over NumPy state: no services. A batch with repeated devices must give
exactly what feeding the same readings one at a time gives (checked by hypothesis).
Every test runs on both engines (the NumPy one and the compiled one of
gateway/core/compiled.py); tests/unit/test_kernels.py compares the two directly.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import gas_rules
from gateway.core.alarms import AlarmKind, DeviceKind, ValveCode
from gateway.core.effects import Effects
from gateway.core.fleet import FleetState
from gateway.core.gas_rules import evaluate_detectors
from gateway.core.incidents import group_incidents
from gateway.core.meter_rules import evaluate_meters
from gateway.core.sweep import mark_offline, mark_seen, sweep
from gateway.core.thresholds import Thresholds

T0 = 1_800_000_000.0
DAY = 86400.0
YEAR = 365.25 * DAY
K = AlarmKind
ENGINE = "numpy"  # the engine of the states the tests build; set by the `engine` fixture


@pytest.fixture(scope="module", autouse=True, params=["numpy", "compiled"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run every test of this module on each engine (module scope: hypothesis-friendly)."""
    module = sys.modules[__name__]
    module.ENGINE = request.param
    try:
        yield request.param
    finally:
        module.ENGINE = "numpy"


def new_state(**kwargs) -> FleetState:
    state = FleetState(engine=ENGINE, **kwargs)
    assert state.engine == ENGINE
    return state


# ------------------------------------------------------------------ helpers

def make_fleet(households: int = 2, detectors_per_household: int = 1, *,
               thresholds: Thresholds | None = None, models: dict | None = None,
               detector_model: int = 0, meter_model: int = 0, qmax: float = 2.5,
               installed: float = T0 - YEAR, capacity: int = 2,
               ) -> tuple[FleetState, np.ndarray, np.ndarray]:
    """A small fleet: per household one meter and some detectors, all seen at T0."""
    state = new_state(capacity=capacity, thresholds=thresholds, models=models)
    hh = np.arange(households, dtype=np.int32)
    meters = state.add_devices(
        kinds=np.full(households, DeviceKind.METER, np.uint8), household=hh,
        meter_slot=np.full(households, -1, np.int32),
        model=np.full(households, meter_model, np.int16),
        qmax_m3h=np.full(households, qmax, np.float32),
        installed_ts=np.full(households, installed), last_seen=T0)
    det_hh = np.repeat(hh, detectors_per_household)
    detectors = state.add_devices(
        kinds=np.full(det_hh.size, DeviceKind.DETECTOR, np.uint8), household=det_hh,
        meter_slot=meters[det_hh], model=np.full(det_hh.size, detector_model, np.int16),
        qmax_m3h=np.full(det_hh.size, np.nan, np.float32),
        installed_ts=np.full(det_hh.size, installed), last_seen=T0)
    return state, meters, detectors


def det(state: FleetState, slot: int, ch4: float, ts: float, fault: int = 0,
        now: float | None = None) -> Effects:
    return evaluate_detectors(state, np.array([slot], np.int32), np.array([ch4], np.float32),
                              np.array([fault], np.uint32), np.array([ts]),
                              ts if now is None else now)


def met(state: FleetState, slot: int, flow: float, ts: float, valve: int = ValveCode.OPEN,
        batt: float = 3.6, now: float | None = None) -> Effects:
    return evaluate_meters(state, np.array([slot], np.int32), np.array([flow], np.float32),
                           np.array([100.0]), np.array([valve], np.uint8),
                           np.array([batt], np.float32), np.array([ts]),
                           ts if now is None else now)


def series(state: FleetState, slot: int, values: list[float], t0: float = T0,
           step_s: float = 10.0) -> Effects:
    """Feed detector readings one at a time, step_s apart; all effects joined."""
    return Effects.concat([det(state, slot, v, t0 + i * step_s) for i, v in enumerate(values)])


def raised(e: Effects) -> list[tuple[int, AlarmKind]]:
    return [(int(s), AlarmKind(int(k))) for s, k in zip(e.raised_slot, e.raised_kind)]


def cleared(e: Effects) -> list[tuple[int, AlarmKind]]:
    return [(int(s), AlarmKind(int(k))) for s, k in zip(e.cleared_slot, e.cleared_kind)]


def closes(e: Effects) -> list[tuple[int, AlarmKind, int]]:
    return [(int(m), AlarmKind(int(c)), int(t)) for m, c, t in
            zip(e.close_valve_meter_slot, e.close_cause, e.close_trigger_slot)]


def is_active(state: FleetState, slot: int, kind: AlarmKind) -> bool:
    return bool(int(state.active[slot]) & kind.bit)


# ------------------------------------------------------------------ thresholds

def test_defaults_are_the_architecture_numbers() -> None:
    t = Thresholds()
    assert (t.prealarm_lel, t.prealarm_count, t.leak_lel, t.leak_count, t.leak_instant_lel) == \
        (10.0, 3, 20.0, 2, 40.0)
    assert t.heartbeat_s * t.offline_heartbeats == 900.0
    assert (t.overflow_factor, t.continuous_flow_s, t.micro_flow_factor) == (1.5, 36000.0, 2.0)
    assert (t.valve_closed_flow_count, t.meter_life_years, t.detector_life_years) == (2, 10, 5)


def test_thresholds_refuse_inconsistent_values_and_accept_integral_counts() -> None:
    with pytest.raises(ValueError):
        Thresholds(clear_lel=12.0)  # above the prealarm level: could never clear
    with pytest.raises(ValueError):
        Thresholds(leak_count=0)
    with pytest.raises(ValueError):
        Thresholds(stuck_s=-1.0)
    assert Thresholds(leak_count=3.0).leak_count == 3  # settings parse counts as floats


# ------------------------------------------------------------------ gas

def test_prealarm_after_three_consecutive_readings() -> None:
    state, meters, dets = make_fleet()
    d = int(dets[0])
    assert not raised(series(state, d, [12, 12]))
    e = det(state, d, 12, T0 + 20)
    assert raised(e) == [(d, K.PREALARM)]
    assert e.raised_value[0] == pytest.approx(12)
    assert not closes(e)  # a pre-alarm warns, it does not cut gas
    assert not raised(series(state, d, [13] * 10, T0 + 30))  # still one pre-alarm


def test_prealarm_needs_consecutive_readings() -> None:
    state, meters, dets = make_fleet()
    assert not raised(series(state, int(dets[0]), [12, 12, 3, 12, 12, 0, 11, 11]))


def test_cooking_spike_below_prealarm_never_fires() -> None:
    state, meters, dets = make_fleet()
    e = series(state, int(dets[0]), [0, 0, 8, 8, 8, 8, 7.9, 8.1, 8, 3, 0, 0])
    assert len(e) == 0


def test_single_noisy_sample_is_not_a_leak() -> None:
    state, meters, dets = make_fleet()
    e = series(state, int(dets[0]), [0, 25, 0, 0, 1, 25, 2])
    assert len(e) == 0


def test_leak_two_consecutive_closes_the_household_meter() -> None:
    state, meters, dets = make_fleet(households=2)
    d, m = int(dets[1]), int(meters[1])
    assert not raised(det(state, d, 22, T0))
    e = det(state, d, 23, T0 + 5)
    assert raised(e) == [(d, K.LEAK)]
    assert closes(e) == [(m, K.LEAK, d)]


def test_leak_at_instant_level_once() -> None:
    state, meters, dets = make_fleet()
    e = det(state, int(dets[0]), 41, T0)
    assert raised(e) == [(int(dets[0]), K.LEAK)]
    assert closes(e) == [(int(meters[0]), K.LEAK, int(dets[0]))]


def test_one_leak_is_one_alarm_until_it_clears_then_it_can_raise_again() -> None:
    state, meters, dets = make_fleet()
    d = int(dets[0])
    e = series(state, d, [45] + [30] * 20 + [7, 7, 7, 45])  # 7: above the clear level
    assert raised(e) == [(d, K.LEAK)] and len(closes(e)) == 1 and not cleared(e)
    e = series(state, d, [4, 4], T0 + 1000)
    assert not cleared(e) and is_active(state, d, K.LEAK)
    e = det(state, d, 4, T0 + 1020)
    assert cleared(e) == [(d, K.LEAK)] and not is_active(state, d, K.LEAK)
    e = det(state, d, 45, T0 + 1030)
    assert raised(e) == [(d, K.LEAK)] and len(closes(e)) == 1


def test_prealarm_is_subsumed_by_a_leak() -> None:
    state, meters, dets = make_fleet()
    d = int(dets[0])
    e = series(state, d, [12, 25, 25, 25])  # reading 3 makes both runs: the leak wins
    assert raised(e) == [(d, K.LEAK)]
    e = series(state, d, [12] * 5, T0 + 100)  # below leak, leak still active: no pre-alarm
    assert not raised(e)
    e = series(state, d, [0, 0, 0], T0 + 200)
    assert cleared(e) == [(d, K.LEAK)]


def test_prealarm_then_leak_then_one_clear_for_both() -> None:
    state, meters, dets = make_fleet()
    d = int(dets[0])
    e = series(state, d, [12, 12, 12, 25, 25])
    assert raised(e) == [(d, K.PREALARM), (d, K.LEAK)]
    e = series(state, d, [1, 1, 1], T0 + 100)
    assert cleared(e) == [(d, K.PREALARM), (d, K.LEAK)]


def test_rising_warns_before_the_leak_level() -> None:
    state, meters, dets = make_fleet()
    d = int(dets[0])
    ramp = [0.2 * i for i in range(0, 200, 8)]  # 0.2 %LEL a second, a reading every 8 s
    e = series(state, d, ramp, step_s=8.0)
    kinds = [k for _, k in raised(e)]
    assert K.RISING in kinds
    first_rise = kinds.index(K.RISING)
    assert e.raised_value[first_rise] < 20.0  # before the leak level
    assert kinds.count(K.RISING) == 1
    assert [c for _, c, _ in closes(e)] == [K.LEAK]  # only the leak itself cuts gas
    e = series(state, d, [0, 0, 0], T0 + 1000)
    assert set(cleared(e)) == {(d, K.PREALARM), (d, K.LEAK), (d, K.RISING)}


def test_a_ramp_that_levels_off_is_not_rising() -> None:
    state, meters, dets = make_fleet()
    e = series(state, int(dets[0]), [0, 2, 4, 6, 8, 8.1, 7.9, 8.2, 8.0, 8.1, 8.0], step_s=8.0)
    assert len(e) == 0  # a burner lighting: a rise, then a plateau below the pre-alarm


def test_slow_drift_is_not_rising() -> None:
    state, meters, dets = make_fleet()
    drift = [5 + 0.005 * i * 8 for i in range(40)]  # 0.005 %LEL a second
    assert not raised(series(state, int(dets[0]), drift, step_s=8.0))


def test_fault_bit_asks_for_maintenance_not_a_valve_cut() -> None:
    state, meters, dets = make_fleet()
    d = int(dets[0])
    e = det(state, d, 0, T0, fault=4)
    assert raised(e) == [(d, K.DETECTOR_FAULT)] and not closes(e)
    e = Effects.concat([det(state, d, 0, T0 + 10, fault=4), det(state, d, 0, T0 + 20),
                        det(state, d, 0, T0 + 30)])
    assert not cleared(e)  # two healthy readings: not yet
    assert cleared(det(state, d, 0, T0 + 40)) == [(d, K.DETECTOR_FAULT)]


def test_stuck_sensor_after_days_at_one_value_but_not_at_zero() -> None:
    state, meters, dets = make_fleet(households=2)
    stuck, zero = int(dets[0]), int(dets[1])
    hours = np.arange(0, 73)
    e = Effects.concat([det(state, stuck, 3.2, T0 + h * 3600) for h in hours])
    assert raised(e) == [(stuck, K.STUCK_SENSOR)]
    assert e.raised_ts[0] == T0 + 72 * 3600
    assert cleared(det(state, stuck, 3.3, T0 + 73 * 3600)) == [(stuck, K.STUCK_SENSOR)]
    e = Effects.concat([det(state, zero, 0.0, T0 + h * 3600) for h in range(0, 24 * 5)])
    assert len(e) == 0  # a clean 0.0 background is what a healthy detector reads


# ------------------------------------------------------------------ liveness

def test_offline_after_three_heartbeats_and_never_a_valve_cut() -> None:
    state, meters, dets = make_fleet()
    d, m = int(dets[0]), int(meters[0])
    det(state, d, 0, T0, now=T0)
    met(state, m, 0.0, T0, now=T0)
    assert len(sweep(state, T0 + 899)) == 0
    e = sweep(state, T0 + 901)
    assert set(raised(e)) == {(s, K.OFFLINE) for s in range(state.n_devices)}
    assert not closes(e)
    assert len(sweep(state, T0 + 5000)) == 0  # raised once
    e = det(state, d, 0, T0 + 5001)
    assert cleared(e) == [(d, K.OFFLINE)]


def test_a_silent_detector_never_closes_a_valve() -> None:
    state, meters, dets = make_fleet()
    d = int(dets[0])
    series(state, d, [12, 12, 12, 25])  # pre-alarm, one reading at leak level
    e = Effects.concat([sweep(state, T0 + i * 60) for i in range(200)])
    assert not closes(e)
    assert (d, K.OFFLINE) in raised(e) and (d, K.LEAK) not in raised(e)


def test_status_offline_raises_at_once_and_online_clears() -> None:
    state, meters, dets = make_fleet()
    d = int(dets[0])
    e = mark_offline(state, [d, d], T0 + 10)
    assert raised(e) == [(d, K.OFFLINE)] and not closes(e)
    assert len(mark_offline(state, [d], T0 + 11)) == 0
    assert len(sweep(state, T0 + 2000)) == len(state.active) - 1  # the others, not d again
    e = mark_seen(state, [d], T0 + 2001)
    assert cleared(e) == [(d, K.OFFLINE)] and state.last_seen[d] == T0 + 2001


def test_service_life_of_meters_and_detectors() -> None:
    state, meters, dets = make_fleet(installed=T0 - 4 * YEAR)
    assert not raised(sweep(state, T0))
    e = sweep(state, T0 + 1.1 * YEAR)
    assert set(raised(e)) >= {(int(s), K.DETECTOR_SERVICE_LIFE) for s in dets}
    assert not any(k == K.METER_SERVICE_LIFE for _, k in raised(e))
    e = sweep(state, T0 + 6.1 * YEAR)
    assert {(int(s), K.METER_SERVICE_LIFE) for s in meters} <= set(raised(e))
    assert not any(k == K.DETECTOR_SERVICE_LIFE for _, k in raised(e))  # raised once


# ------------------------------------------------------------------ meters

def test_overflow_closes_the_meter_itself() -> None:
    state, meters, dets = make_fleet(qmax=2.5)
    m = int(meters[1])
    assert not raised(met(state, m, 3.7, T0))  # below 1.5 x qmax
    e = met(state, m, 3.8, T0 + 1)
    assert raised(e) == [(m, K.OVERFLOW)]
    assert closes(e) == [(m, K.OVERFLOW, m)]
    assert len(met(state, m, 3.0, T0 + 2)) == 0  # in the hysteresis band
    assert cleared(met(state, m, 0.0, T0 + 3)) == [(m, K.OVERFLOW)]


def test_continuous_flow_without_a_pause() -> None:
    state, meters, dets = make_fleet()
    m = int(meters[0])
    e = Effects.concat([met(state, m, 0.5, T0 + i * 1800) for i in range(21)])  # 10 h
    assert raised(e) == [(m, K.CONTINUOUS_FLOW)]
    assert not closes(e)
    assert cleared(met(state, m, 0.0, T0 + 21 * 1800)) == [(m, K.CONTINUOUS_FLOW)]
    e = Effects.concat([met(state, m, 0.5 if i % 10 else 0.0, T0 + 22 * 1800 + i * 1800)
                        for i in range(40)])
    assert not raised(e)  # a pause every 5 h


def test_continuous_flow_found_by_the_sweep_between_readings() -> None:
    state, meters, dets = make_fleet()
    m = int(meters[0])
    met(state, m, 0.5, T0, now=T0)
    met(state, m, 0.5, T0 + 9.9 * 3600, now=T0 + 9.9 * 3600)
    e = sweep(state, T0 + 10 * 3600 + 1)
    assert (m, K.CONTINUOUS_FLOW) in raised(e)


def test_micro_leak_below_twice_the_starting_flow() -> None:
    state, meters, dets = make_fleet()
    m = int(meters[0])
    e = Effects.concat([met(state, m, 0.02, T0 + i * 600) for i in range(37)])  # 6 h
    assert raised(e) == [(m, K.MICRO_LEAK)]
    assert not cleared(met(state, m, 1.2, T0 + 37 * 600))  # usage masks, not disproves
    assert cleared(met(state, m, 0.0, T0 + 38 * 600)) == [(m, K.MICRO_LEAK)]
    e = Effects.concat([met(state, m, 0.05, T0 + 40 * 600 + i * 600) for i in range(40)])
    assert (m, K.MICRO_LEAK) not in raised(e)  # 0.05 m3/h is above the micro band


def test_flow_with_the_valve_closed_twice_is_a_valve_fault() -> None:
    state, meters, dets = make_fleet()
    m = int(meters[0])
    closed = ValveCode.CLOSED
    e = Effects.concat([met(state, m, 0.3, T0, closed), met(state, m, 0.0, T0 + 1, closed),
                        met(state, m, 0.3, T0 + 2, closed)])
    assert not raised(e)  # not twice in a row
    e = met(state, m, 0.3, T0 + 3, closed)
    assert raised(e) == [(m, K.VALVE_FAULT)] and not closes(e)
    e = Effects.concat([met(state, m, 0.0, T0 + 4 + i, closed) for i in range(3)])
    assert cleared(e) == [(m, K.VALVE_FAULT)]
    assert raised(met(state, m, 0.0, T0 + 10, ValveCode.FAULT)) == [(m, K.VALVE_FAULT)]
    assert state.valve_state[m] == ValveCode.FAULT


def test_battery_low_with_hysteresis() -> None:
    state, meters, dets = make_fleet()
    m = int(meters[0])
    e = met(state, m, 0.0, T0, batt=3.2)
    assert raised(e) == [(m, K.BATTERY_LOW)] and e.raised_value[0] == pytest.approx(3.2)
    assert len(met(state, m, 0.0, T0 + 1, batt=3.35)) == 0
    assert cleared(met(state, m, 0.0, T0 + 2, batt=3.5)) == [(m, K.BATTERY_LOW)]


# ------------------------------------------------------------------ correlation

def test_leak_with_flow_at_the_meter_is_marked_more_certain() -> None:
    state, meters, dets = make_fleet(households=2)
    met(state, int(meters[0]), 0.6, T0)
    met(state, int(meters[1]), 0.0, T0)
    d = np.array([dets[0], dets[1]], np.int32)
    e = evaluate_detectors(state, d, np.array([45, 45], np.float32), np.zeros(2, np.uint32),
                           np.full(2, T0 + 1), T0 + 1)
    assert raised(e) == [(int(dets[0]), K.LEAK), (int(dets[1]), K.LEAK)]
    assert e.raised_flow_at_meter.tolist() == [True, False]


def test_group_incidents_in_one_building() -> None:
    building = np.array([7, 7, 8, 7, 7, 9])
    household = np.array([1, 2, 3, 1, 4, 5])
    ts = np.array([0.0, 100.0, 120.0, 50.0, 5000.0, 10.0])
    key = group_incidents(building, household, ts, window_s=600)
    # two households of building 7 within 600 s; the one 5000 s later is alone
    assert key.tolist() == [0, 0, -1, 0, -1, -1]
    same_household = group_incidents(np.array([1, 1]), np.array([5, 5]), np.array([0.0, 1.0]))
    assert same_household.tolist() == [-1, -1]
    assert group_incidents(np.array([]), np.array([]), np.array([])).size == 0


# ------------------------------------------------------------------ per model

def test_per_model_thresholds_apply_to_their_devices_only() -> None:
    sensitive = Thresholds(leak_lel=15.0, leak_count=1, prealarm_lel=8.0, rise_floor_lel=5.0)
    state = new_state(models={3: sensitive})
    meters = state.add_devices([1, 1], [0, 1], [-1, -1], [0, 0], [2.5, 2.5], [T0, T0], T0)
    dets = state.add_devices([0, 0], [0, 1], meters, [0, 3], [np.nan, np.nan], [T0, T0], T0)
    e = evaluate_detectors(state, dets, np.array([16, 16], np.float32), np.zeros(2, np.uint32),
                           np.full(2, T0), T0)
    assert raised(e) == [(int(dets[1]), K.LEAK)]
    assert state.thresholds(3) is sensitive and state.thresholds(0) == Thresholds()


def test_per_model_heartbeat_for_hourly_meters() -> None:
    state, meters, dets = make_fleet(models={1: Thresholds(heartbeat_s=3600.0)}, meter_model=1)
    e = sweep(state, T0 + 1000)
    assert set(raised(e)) == {(int(s), K.OFFLINE) for s in dets}


# ------------------------------------------------------------------ state

def test_restored_alarms_are_not_raised_again_and_clear_after_a_full_run() -> None:
    state, meters, dets = make_fleet()
    d, m = int(dets[0]), int(meters[0])
    state.set_active([d, d, m], [K.LEAK, K.PREALARM, K.BATTERY_LOW])
    e = det(state, d, 45, T0)
    assert not raised(e) and not closes(e)
    assert not cleared(series(state, d, [0, 0], T0 + 10))
    assert cleared(det(state, d, 0, T0 + 30)) == [(d, K.PREALARM), (d, K.LEAK)]
    assert not raised(met(state, m, 0.0, T0, batt=3.0))


def test_readings_must_be_numbers() -> None:
    state, meters, dets = make_fleet()
    with pytest.raises(ValueError):
        det(state, int(dets[0]), float("nan"), T0)


def test_capacity_grows_and_keeps_state() -> None:
    state, meters, dets = make_fleet(households=1, capacity=1)
    det(state, int(dets[0]), 45, T0)
    more = state.add_devices([0] * 50, [0] * 50, [int(meters[0])] * 50, [0] * 50,
                             [np.nan] * 50, [T0] * 50)
    assert state.capacity >= 52 and more.tolist() == list(range(2, 52))
    assert is_active(state, int(dets[0]), K.LEAK)
    assert np.isnan(state.last_seen[more]).all()  # never seen: never counted offline
    offline = {slot for slot, k in raised(sweep(state, T0 + 10 * DAY)) if k == K.OFFLINE}
    assert offline == {int(meters[0]), int(dets[0])}


def test_registration_and_evaluation_refuse_wrong_slots() -> None:
    state, meters, dets = make_fleet()
    with pytest.raises(ValueError):  # a detector's meter must be a meter
        state.add_devices([0], [0], [int(dets[0])], [0], [np.nan], [T0])
    with pytest.raises(ValueError):
        state.add_devices([0], [0], [99], [0], [np.nan], [T0])
    with pytest.raises(ValueError):
        det(state, int(meters[0]), 1.0, T0)  # a meter fed as a detector
    with pytest.raises(ValueError):
        det(state, 99, 1.0, T0)
    assert state.n_devices == 4


def test_memory_for_the_whole_city_fits() -> None:
    state = new_state(capacity=400_000)
    assert state.nbytes() < 120e6  # the budget is 200 MB
    assert len(state.active) == 400_000


def test_effects_concat_and_empty() -> None:
    assert len(Effects.empty()) == 0
    assert len(Effects.concat([])) == 0
    state, meters, dets = make_fleet()
    a = det(state, int(dets[0]), 45, T0)
    b = met(state, int(meters[1]), 9.0, T0)
    both = Effects.concat([a, Effects.empty(), b])
    assert raised(both) == raised(a) + raised(b) and closes(both) == closes(a) + closes(b)


# ------------------------------------------------------------------ batches = one at a time

# Short durations so that every rule, stuck and flow runs included, happens in a test.
FAST = Thresholds(stuck_s=60.0, continuous_flow_s=120.0, micro_flow_s=60.0, heartbeat_s=30.0,
                  stuck_ignore_below_lel=0.5)
CH4 = st.sampled_from([0.0, 0.0, 1.5, 3.0, 4.0, 6.0, 9.0, 12.0, 16.0, 22.0, 45.0])
FLOW = st.sampled_from([0.0, 0.0, 0.02, 0.5, 2.0, 3.9, 9.0])


def _fleet_for_property() -> tuple[FleetState, np.ndarray, np.ndarray]:
    return make_fleet(households=3, detectors_per_household=2, thresholds=FAST,
                      models={1: dataclasses.replace(FAST, leak_lel=15.0, prealarm_count=2)},
                      detector_model=0)


def _same_state(a: FleetState, b: FleetState) -> None:
    for name in ("active", "last_seen", "valve_state", "last_flow_m3h"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("runs", "stuck_since_ts", "stuck_ref_lel", "flow_since_ts", "micro_since_ts"):
        np.testing.assert_array_equal(a.records[name], b.records[name], err_msg=name)
    np.testing.assert_array_equal(a.rise_lel, b.rise_lel)
    np.testing.assert_array_equal(a.rise_ts, b.rise_ts)


def _same_effects(a: Effects, b: Effects) -> None:
    for f in dataclasses.fields(Effects):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), err_msg=f.name)


@settings(max_examples=150, deadline=None)
@given(readings=st.lists(st.tuples(st.integers(0, 5), CH4, st.sampled_from([0, 0, 0, 2]),
                                   st.sampled_from([1.0, 4.0, 8.0, 30.0])),
                         min_size=1, max_size=60),
       cuts=st.lists(st.integers(1, 60), max_size=6))
def test_detector_batches_equal_one_reading_at_a_time(readings, cuts) -> None:
    one, _, dets = _fleet_for_property()
    many, _, _ = _fleet_for_property()
    one.model[dets[3:]] = 1  # two models in play
    many.model[dets[3:]] = 1
    slots = dets[[r[0] for r in readings]]
    ch4 = np.array([r[1] for r in readings], np.float32)
    fault = np.array([r[2] for r in readings], np.uint32)
    ts = T0 + np.cumsum([r[3] for r in readings])
    now = float(ts[-1])
    sequential = Effects.concat([
        evaluate_detectors(one, slots[i:i + 1], ch4[i:i + 1], fault[i:i + 1], ts[i:i + 1], now)
        for i in range(len(readings))])
    bounds = sorted({0, len(readings), *[c for c in cuts if c < len(readings)]})
    batched = Effects.concat([
        evaluate_detectors(many, slots[a:b], ch4[a:b], fault[a:b], ts[a:b], now)
        for a, b in zip(bounds, bounds[1:])])
    _same_effects(sequential, batched)
    _same_state(one, many)


@settings(max_examples=150, deadline=None)
@given(readings=st.lists(st.tuples(st.integers(0, 2), FLOW,
                                   st.sampled_from([ValveCode.OPEN, ValveCode.OPEN,
                                                    ValveCode.CLOSED, ValveCode.FAULT]),
                                   st.sampled_from([3.6, 3.6, 3.2, 3.35]),
                                   st.sampled_from([1.0, 20.0, 70.0])),
                         min_size=1, max_size=60),
       cuts=st.lists(st.integers(1, 60), max_size=6))
def test_meter_batches_equal_one_reading_at_a_time(readings, cuts) -> None:
    one, meters, _ = _fleet_for_property()
    many, _, _ = _fleet_for_property()
    slots = meters[[r[0] for r in readings]]
    flow = np.array([r[1] for r in readings], np.float32)
    valve = np.array([r[2] for r in readings], np.uint8)
    batt = np.array([r[3] for r in readings], np.float32)
    ts = T0 + np.cumsum([r[4] for r in readings])
    vol = np.zeros(len(readings))
    now = float(ts[-1])
    sequential = Effects.concat([
        evaluate_meters(one, slots[i:i + 1], flow[i:i + 1], vol[i:i + 1], valve[i:i + 1],
                        batt[i:i + 1], ts[i:i + 1], now)
        for i in range(len(readings))])
    bounds = sorted({0, len(readings), *[c for c in cuts if c < len(readings)]})
    batched = Effects.concat([
        evaluate_meters(many, slots[a:b], flow[a:b], vol[a:b], valve[a:b], batt[a:b], ts[a:b],
                        now)
        for a, b in zip(bounds, bounds[1:])])
    _same_effects(sequential, batched)
    _same_state(one, many)


def test_a_batch_with_repeats_keeps_arrival_order() -> None:
    state, meters, dets = make_fleet(households=2)
    d0, d1 = int(dets[0]), int(dets[1])
    slots = np.array([d0, d1, d0, d0, d1, d0], np.int32)
    ch4 = np.array([25, 3, 25, 2, 3, 2], np.float32)
    e = evaluate_detectors(state, slots, ch4, np.zeros(6, np.uint32), T0 + np.arange(6.0),
                           T0 + 6)
    assert raised(e) == [(d0, K.LEAK)] and e.raised_ts[0] == T0 + 2
    assert closes(e) == [(int(meters[0]), K.LEAK, d0)]


def test_large_batches_split_off_quiet_readings_with_the_same_result() -> None:
    """Rounds of >= _SPLIT_MIN readings run the gas and rise rules on busy readings only."""
    rng = np.random.default_rng(7)
    results = []
    for split_min in (10**9, 0):  # never split / always split
        state, meters, dets = make_fleet(households=300, detectors_per_household=2,
                                         thresholds=FAST,
                                         models={1: dataclasses.replace(FAST, leak_lel=15.0)})
        state.model[dets[::3]] = 1
        rng = np.random.default_rng(7)
        effects = []
        saved = gas_rules.SPLIT_MIN
        gas_rules.SPLIT_MIN = split_min
        try:
            for b in range(30):
                n = 700
                slots = rng.choice(dets, n)  # with repeats
                ch4 = rng.choice([0.0, 0.0, 0.0, 0.0, 0.2, 1.5, 4.0, 8.0, 12.0, 25.0, 45.0],
                                 n).astype(np.float32)
                fault = (rng.random(n) < 0.02).astype(np.uint32)
                ts = T0 + b * 20.0 + np.sort(rng.uniform(0, 20, n))
                effects.append(evaluate_detectors(state, slots, ch4, fault, ts, float(ts[-1])))
        finally:
            gas_rules.SPLIT_MIN = saved
        results.append((state, Effects.concat(effects)))
    (a, ea), (b, eb) = results
    assert len(ea) > 100  # the rules did fire
    _same_effects(ea, eb)
    _same_state(a, b)
