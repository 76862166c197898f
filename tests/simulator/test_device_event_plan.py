"""Type A detectors, tamper and outages in the plan and the truth; meter flow faults; the
clock shared with a gateway on an accelerated clock (pure: no services)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gateway.ops.provision import generate_city
from gateway.settings import ClockSettings, Settings
from simulator import behaviour as bh
from simulator.behaviour import FaultKind, LeakKind
from simulator.fleet import Fleet
from simulator.runner import Clock
from simulator.scenario import MICRO_FLOW_M3H, plan
from simulator.truth import Truth, cut_by, cut_due


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet.from_households(generate_city(80, seed=2))


def seep_truth(fleet: Fleet, leaks: int = 3) -> tuple[Truth, list]:
    m = bh.Model(1, fleet.detector_household, fleet.qmax_m3h, fleet.meter_age_days)
    p = plan(
        fleet,
        m.background,
        seed=1,
        leaks=leaks,
        faults=0,
        sim_start=0.0,
        sim_span=100.0,
        kinds=(LeakKind.SEEP,),
    )
    return Truth(fleet, p, lambda t: 1000.0 + t), p.leaks


def test_detector_cut_platform_cut_and_failed_local_close(fleet: Fleet) -> None:
    truth, (a, b, c) = seep_truth(fleet)
    type_a = np.zeros(fleet.detectors, bool)
    for lk in (a, b):
        type_a[lk.detectors[0]] = True
    truth.mark_type_a(type_a)
    # a: the detector alarms, the meter closes on its word, the platform only confirms
    truth.local_alarm(a.detectors[0], 2000.0)
    truth.valve_moved(a.household, "closed", None, 2000.2, local=True)
    # b: the detector alarms, its meter does not close; the platform closes 5 s later
    truth.local_alarm(b.detectors[0], 2001.0, meter_fails=True)
    truth.command_received(b.household, "c-b", "valve_close", "prompt", 2006.0)
    truth.valve_moved(b.household, "closed", "c-b", 2006.001)
    # c: no Type A; the rules make the cut due, nobody cuts it
    d = np.array(c.detectors[:1])
    truth.detectors_published(d, 50.0, np.array([True]), np.array([True]), 2002.0)
    recs = {lk.id: lk for lk in truth.leaks}
    assert [cut_by(recs[x.id]) for x in (a, b, c)] == ["detector", "platform", None]
    assert all(cut_due(recs[x.id]) for x in (a, b, c))
    assert recs[b.id].local_close_failed and not recs[a.id].local_close_failed
    assert recs[a.id].type_a and recs[b.id].type_a and not recs[c.id].type_a
    s = truth.score()
    assert (s["cut_due"], s["cut"], s["cut_by_detector"], s["cut_by_platform"]) == (3, 2, 1, 1)
    assert s["missed"] == [c.id] and s["local_close_failed"] == [b.id]
    assert s["local_alarm_to_valve_closed_ms"]["p50"] == pytest.approx(200.0, abs=0.01)
    assert s["local_alarm_to_platform_close_ms"]["p50"] == pytest.approx(5000.0, abs=0.01)
    # the platform's own rule path does not count a cut on the detector's word
    assert s["latency_to_command_ms"]["n"] == 0 and s["early_cuts"] == 0
    # nor one after the confirmation window, where the rules made the cut due meanwhile
    d = np.array(b.detectors[:1])
    truth.detectors_published(d, 50.0, np.array([True]), np.array([True]), 2002.0)
    assert truth.score()["latency_to_command_ms"]["n"] == 1
    assert truth.score({"unconfirmed_cmds": ["c-b"]})["latency_to_command_ms"]["n"] == 0


def test_a_local_alarm_without_a_leak_is_reported(fleet: Fleet) -> None:
    truth, leaks = seep_truth(fleet, 1)
    innocent = next(d for d in range(fleet.detectors) if d not in leaks[0].detectors)
    truth.local_alarm(innocent, 5.0)
    assert truth.score()["unexpected_local_alarms"] == [
        {"device_id": fleet.detector_ids[innocent], "at": 5.0}
    ]


def test_leak_outcomes_read_orders_and_notices(fleet: Fleet) -> None:
    truth, (a, b, _) = seep_truth(fleet)
    truth.local_alarm(a.detectors[0], 2000.0)
    truth.valve_moved(a.household, "closed", None, 2000.2, local=True)
    h = fleet.household_ids
    start = {lk.id: lk.start_wall for lk in truth.leaks}
    db = {
        "orders": {
            h[a.household]: [
                {
                    "cause": "leak",
                    "priority": "urgent",
                    "status": "dispatched",
                    "opened_at": start[a.id] + 3.5,
                    "dispatched_at": 9e9,
                }
            ],
        },
        "notices": {
            h[a.household]: [
                {
                    "kind": "leak",
                    "channel": "webhook",
                    "outcome": "answered at voice_owner",
                    "first_attempt_at": start[a.id] + 4.0,
                }
            ]
        },
    }
    plat = truth.score(db)["platform"]
    out = {o["id"]: o for o in plat["leak_outcomes"]}
    assert out[a.id]["cut_by"] == "detector"
    assert out[a.id]["order"] == {
        "cause": "leak",
        "priority": "urgent",
        "status": "dispatched",
        "dispatched": True,
        "leak_to_order_s": 3.5,
    }
    assert out[a.id]["notice"]["outcome"] == "answered at voice_owner"
    assert out[a.id]["notice"]["leak_to_first_call_s"] == 4.0
    assert out[b.id]["order"] is None and out[b.id]["notice"] is None
    paths = plat["leak_paths"]
    assert paths["detector"]["dispatched"] == 1
    assert paths["detector"]["notices"] == {"answered at voice_owner": 1}
    assert paths["detector"]["first_call_s"] == {"p50": 4.0, "max": 4.0, "n": 1}
    assert paths["not_cut"]["first_call_s"] == {"n": 0}
    assert paths["not_cut"]["leaks"] == 2 and paths["not_cut"]["notices"] == {"none": 2}


def test_plan_tampers_and_outages_on_their_own_households(fleet: Fleet) -> None:
    m = bh.Model(1, fleet.detector_household, fleet.qmax_m3h, fleet.meter_age_days)
    p = plan(
        fleet,
        m.background,
        seed=3,
        leaks=4,
        faults=2,
        sim_start=100.0,
        sim_span=1000.0,
        tampers=2,
        outages=1,
        outage_share=0.1,
    )
    kinds = [e.kind for e in p.events]
    assert kinds == ["tamper", "tamper", "outage"]
    assert [e.is_meter for e in p.events] == [False, True, False]
    (out,) = [e for e in p.events if e.kind == "outage"]
    assert out.end_sim == pytest.approx(out.start_sim + 100.0)
    homes = [e.device if e.is_meter else int(fleet.detector_household[e.device]) for e in p.events]
    taken = {lk.household for lk in p.leaks} | {
        f.device if f.is_meter else int(fleet.detector_household[f.device]) for f in p.faults
    }
    assert len(set(homes)) == 3 and not set(homes) & taken
    truth = Truth(fleet, p, lambda t: t)
    assert [e.id for e in truth.events] == ["tamper-001", "tamper-002", "outage-001"]


def test_meter_flow_faults(fleet: Fleet) -> None:
    m = bh.Model(1, fleet.detector_household, fleet.qmax_m3h, fleet.meter_age_days)
    p = plan(
        fleet,
        m.background,
        seed=2,
        leaks=0,
        faults=2,
        sim_start=0.0,
        sim_span=3600.0,
        fault_kinds=(FaultKind.CONTINUOUS, FaultKind.MICRO_FLOW),
        fault_window=(0.0, 0.01),
    )
    m.inj = p.injection
    cont, micro = (f.device for f in p.faults)
    ts = np.arange(60.0, 48 * 3600.0, 300.0)
    flows = np.array([m.meter_flow(np.array([cont, micro]), t) for t in ts])
    assert (flows[:, 0] >= 0.3).all(), "a continuous flow never pauses"
    assert np.allclose(flows[:, 1], MICRO_FLOW_M3H), "nobody home: only the micro-flow"
    others = np.array([h for h in range(fleet.households) if h not in (cont, micro)])
    night = np.array([m.meter_flow(others, t) for t in ts])
    assert (night == 0).any(axis=0).all(), "every other household pauses some time"


def test_stuck_value_is_above_the_rules_floor(fleet: Fleet) -> None:
    m = bh.Model(1, fleet.detector_household, fleet.qmax_m3h, fleet.meter_age_days)
    p = plan(
        fleet,
        m.background,
        seed=2,
        leaks=0,
        faults=6,
        sim_start=0.0,
        sim_span=100.0,
        fault_kinds=(FaultKind.STUCK,),
    )
    vals = p.injection.fault_value[[f.device for f in p.faults]]
    assert (vals >= 0.5).all()  # a flat reading below 0.5 %LEL is a clean room, not stuck


def test_shared_clock_matches_the_gateways() -> None:
    wall = [1000.0]
    cs = ClockSettings(speed=3600.0, wall_origin=1010.0, sim_origin=5000.0)
    gw = cs.source(lambda: wall[0])
    sim = Clock(1010.0, 5000.0, 3600.0)
    for w in (1000.0, 1010.0, 1010.5, 1012.25):
        wall[0] = w
        assert gw() == sim.sim(w)
    assert sim.sim(1000.0) == 5000.0  # stands still until the origin
    assert sim.sim(1011.0) == 5000.0 + 3600.0


def test_accelerated_clock_is_refused_outside_tests() -> None:
    with pytest.raises(ValueError, match="for tests only"):
        Settings(clock=ClockSettings(speed=10.0))
    with pytest.raises(ValueError, match="for tests only"):
        Settings(environment="production", clock=ClockSettings(sim_origin=0.0))
    assert Settings(environment="test", clock=ClockSettings(speed=10.0)).clock.speed == 10.0
    assert Settings().clock.source() is time.time  # the wall clock unless asked


@pytest.mark.parametrize(
    ("state", "attempts", "words"),
    [
        ("confirmed", [("voice_owner", "answered")], "answered at voice_owner"),
        (
            "confirmed",
            [("voice_owner", "failed"), ("voice_owner", "answered")],
            "answered at voice_owner",
        ),
        (
            "pending",
            [("voice_owner", "no_answer"), ("sms_owner", "sent"), ("voice_emergency", "calling")],
            "voice_owner no_answer -> sms_owner sent -> voice_emergency calling (pending)",
        ),
        ("sent", [("voice_owner", "no_answer"), ("sms_owner", "sent")],
         "voice_owner no_answer -> sms_owner sent"),
        ("pending", [], "pending"),
        ("sent", [], "sent"),  # a notice sent on the log channel: no chain rows
    ],
)
def test_a_notice_chain_in_words(state: str, attempts: list, words: str) -> None:
    from simulator.notices import chain_outcome

    assert chain_outcome(state, attempts) == words
