"""The pure device models: reproducible, harmless when they should be, dangerous when injected."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.ops.provision import generate_city
from simulator import behaviour as bh
from simulator.behaviour import FaultKind, LeakKind
from simulator.fleet import Fleet
from simulator.scenario import plan

DAY = 86_400.0
T0 = 1_795_000_000.0 - 1_795_000_000.0 % DAY  # a midnight


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet.from_households(generate_city(400, seed=3))


def model(fleet: Fleet, seed: int = 5) -> bh.Model:
    return bh.Model(seed, fleet.detector_household, fleet.qmax_m3h, fleet.meter_age_days)


def test_same_seed_same_readings_in_any_order(fleet: Fleet) -> None:
    a, b = model(fleet), model(fleet)
    idx = np.arange(fleet.detectors)
    t = T0 + 18.6 * 3600
    ch4_a, _ = a.detector_lel(idx, t)
    ch4_b, _ = b.detector_lel(idx[::-1], t)  # order of the call must not matter
    assert np.array_equal(ch4_a, ch4_b[::-1])
    m = np.arange(fleet.households)
    for t in (T0 + 3600, T0 + 7 * 3600, T0 + 19 * 3600):
        assert all(np.array_equal(x, y) for x, y in zip(a.meter_reading(m, t),
                                                         b.meter_reading(m, t), strict=True))
    c = model(fleet, seed=6)
    assert not np.array_equal(c.detector_lel(idx, t)[0], a.detector_lel(idx, t)[0])


def test_background_and_cooking_stay_below_prealarm_all_day(fleet: Fleet) -> None:
    m = model(fleet)
    idx = np.arange(fleet.detectors)
    peak, spikes = 0.0, 0
    for t in np.arange(T0, T0 + DAY, 37.0):  # every 37 s for a day: all slots, all phases
        ch4, fault = m.detector_lel(idx, float(t))
        peak = max(peak, float(ch4.max()))
        spikes += int((ch4 > 2.5).sum())
        assert not fault.any()
    assert peak < bh.PREALARM_LEL
    assert spikes > 100  # cooking really happens, it just stays harmless


def test_background_is_zero_to_two_at_night(fleet: Fleet) -> None:
    m = model(fleet)
    ch4, _ = m.detector_lel(np.arange(fleet.detectors), T0 + 3 * 3600)
    assert ch4.min() >= 0 and ch4.max() <= 2.0
    assert ch4.std() > 0.1  # noise, not a constant


def test_gas_use_follows_the_day_and_stays_under_qmax(fleet: Fleet) -> None:
    m = model(fleet)
    idx = np.arange(fleet.households)
    def share_using(hour: float) -> float:
        return float(np.mean([(m.meter_flow(idx, T0 + hour * 3600 + k * 300) > 0).mean()
                              for k in range(12)]))
    night, dinner, afternoon = share_using(2), share_using(18), share_using(15)
    assert night < 0.02 < afternoon < dinner
    for h in range(24):
        assert (m.meter_flow(idx, T0 + h * 3600) <= 0.7 * fleet.qmax_m3h).all()


def test_volume_integrates_flow(fleet: Fleet) -> None:
    m = model(fleet)
    idx = np.arange(fleet.households)
    t = T0 + 17.5 * 3600
    v0 = m.meter_reading(idx, t)[0].copy()
    expected = np.zeros(fleet.households)
    for k in range(24):  # two hours, 5-minute slots, flow constant within a slot
        expected += m.meter_flow(idx, t + k * 300 + 150) * 300 / 3600
    v1 = m.meter_reading(idx, t + 7200)[0]
    assert (v1 >= v0).all()
    assert np.allclose(v1 - v0, expected, atol=2e-3)


def test_leak_kinds_cross_their_levels(fleet: Fleet) -> None:
    m = model(fleet)
    p = plan(fleet, m.background, seed=2, leaks=4, faults=0, sim_start=T0 + 3 * 3600,
             sim_span=1200.0, kinds=(LeakKind.SEEP, LeakKind.RUPTURE, LeakKind.HOSE_OFF,
                                     LeakKind.RISER))
    m.inj = p.injection
    by_kind = {lk.kind: lk for lk in p.leaks}
    seep, rupture, hose = by_kind[LeakKind.SEEP], by_kind[LeakKind.RUPTURE], by_kind[
        LeakKind.HOSE_OFF]
    d = np.array(seep.detectors[:1])
    assert m.detector_lel(d, seep.start_sim + 5)[0][0] < bh.PREALARM_LEL  # slow: not yet
    assert m.detector_lel(d, seep.start_sim + 600)[0][0] >= bh.CUT_LEL  # minutes later
    d = np.array(rupture.detectors[:1])
    assert m.detector_lel(d, rupture.start_sim + 10)[0][0] >= bh.INSTANT_LEL  # seconds
    h = np.array([hose.household])
    assert m.meter_flow(h, hose.start_sim + 1)[0] > bh.OVERFLOW_FACTOR * fleet.qmax_m3h[h][0]
    assert m.meter_flow(h, hose.start_sim - 1)[0] < fleet.qmax_m3h[h][0]
    risers = [lk for lk in p.leaks if lk.kind is LeakKind.RISER]
    assert len(risers) >= 3 and len({lk.incident for lk in risers}) == 1
    assert len({int(fleet.building[lk.household]) for lk in risers}) == 1
    felt = [m.detector_lel(np.array(lk.detectors), lk.start_sim + 900)[0].max() for lk in risers]
    assert all(x >= bh.PREALARM_LEL for x in felt)


def test_closing_the_valve_stops_gas_but_not_a_riser(fleet: Fleet) -> None:
    m = model(fleet)
    p = plan(fleet, m.background, seed=4, leaks=2, faults=0, sim_start=T0 + 3 * 3600,
             sim_span=1200.0, kinds=(LeakKind.RUPTURE, LeakKind.RISER))
    m.inj = p.injection
    rup = p.leaks[0]
    riser = p.leaks[1]
    t_close = max(rup.start_sim, riser.start_sim) + 300
    for lk in (rup, riser):
        m.set_valve(lk.household, bh.VALVE_CLOSED, t_close)
    later = t_close + 900
    assert m.detector_lel(np.array(rup.detectors[:1]), later)[0][0] < 2.5
    assert m.detector_lel(np.array(riser.detectors[:1]), later)[0][0] >= bh.PREALARM_LEL
    _, flow, valve, *_ = m.meter_reading(np.array([rup.household]), later)
    assert flow[0] == 0 and valve[0] == bh.VALVE_CLOSED


def test_faults(fleet: Fleet) -> None:
    m = model(fleet)
    p = plan(fleet, m.background, seed=9, leaks=0, faults=5, sim_start=T0, sim_span=3600.0)
    m.inj = p.injection
    f = {fp.kind: fp for fp in p.faults}
    stuck = np.array([f[FaultKind.STUCK].device])
    values = {float(m.detector_lel(stuck, f[FaultKind.STUCK].start_sim + k * 61.0)[0][0])
              for k in range(20)}
    assert len(values) == 1
    bits = np.array([f[FaultKind.FAULT_BITS].device])
    assert m.detector_lel(bits, f[FaultKind.FAULT_BITS].start_sim + 1)[1][0] == bh.FAULT_SENSOR
    laser = np.array([f[FaultKind.LASER].device])
    t_l = f[FaultKind.LASER].start_sim
    assert m.detector_lel(laser, t_l - 1)[1][0] == 0
    assert m.detector_lel(laser, t_l + 3 * p.injection.fault_span_s[laser][0])[1][0] & \
        bh.FAULT_LASER_DEGRADED
    off = np.array([f[FaultKind.OFFLINE].device])
    assert m.detector_online(off, f[FaultKind.OFFLINE].start_sim - 1)[0]
    assert not m.detector_online(off, f[FaultKind.OFFLINE].start_sim + 1)[0]
    batt = np.array([f[FaultKind.BATTERY].device])
    t_b = f[FaultKind.BATTERY].start_sim
    assert m.meter_reading(batt, t_b - 1)[3][0] > 3.4
    assert m.meter_reading(batt, t_b + 0.4 * 3600)[3][0] < 3.3


def test_plan_uses_distinct_households(fleet: Fleet) -> None:
    m = model(fleet)
    p = plan(fleet, m.background, seed=1, leaks=12, faults=10, sim_start=T0, sim_span=600.0)
    houses = [lk.household for lk in p.leaks]
    fault_houses = [fp.device if fp.is_meter else int(fleet.detector_household[fp.device])
                    for fp in p.faults]
    assert len(houses + fault_houses) == len(set(houses + fault_houses))
    again = plan(fleet, m.background, seed=1, leaks=12, faults=10, sim_start=T0, sim_span=600.0)
    assert [(lk.id, lk.household, lk.start_sim) for lk in again.leaks] == \
        [(lk.id, lk.household, lk.start_sim) for lk in p.leaks]


def test_rule_mirror_marks_when_a_cut_is_due() -> None:
    mirror = bh.RuleMirror(1, 2, np.array([4.0]))
    idx = np.array([0, 1])
    zero = np.zeros(2, np.uint32)
    danger, due = mirror.detectors(idx, np.array([25.0, 5.0]), zero)
    assert danger.tolist() == [True, False] and not due.any()
    danger, due = mirror.detectors(idx, np.array([22.0, 41.0]), zero)
    assert due.tolist() == [True, True]  # twice >= 20; once >= 40
    _, due = mirror.detectors(idx, np.array([45.0, 45.0]), np.array([1, 0], np.uint32))
    assert due.tolist() == [False, True]  # a faulty sensor's reading is not evidence
    assert mirror.meters(np.array([0]), np.array([6.1])).tolist() == [True]
    assert mirror.meters(np.array([0]), np.array([5.9])).tolist() == [False]
