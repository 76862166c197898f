"""Ground truth and scoring: cut, missed, false cut, latency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gateway.ops.provision import generate_city
from simulator import behaviour as bh
from simulator.behaviour import LeakKind
from simulator.fleet import Fleet
from simulator.scenario import plan
from simulator.truth import Truth


def test_score_cut_missed_false_and_latency(tmp_path: Path) -> None:
    fleet = Fleet.from_households(generate_city(60, seed=1))
    m = bh.Model(1, fleet.detector_household, fleet.qmax_m3h, fleet.meter_age_days)
    p = plan(fleet, m.background, seed=1, leaks=2, faults=1, sim_start=0.0, sim_span=100.0,
             kinds=(LeakKind.RUPTURE, LeakKind.SEEP))
    truth = Truth(fleet, p, lambda t: 1000.0 + t)
    a, b = p.leaks
    mirror = bh.RuleMirror(fleet.households, fleet.detectors, fleet.qmax_m3h)
    for lk, at in ((a, 2000.0), (b, 2001.0)):
        d = np.array(lk.detectors[:1])
        danger, due = mirror.detectors(d, np.array([45.0]), np.zeros(1, np.uint32))
        truth.detectors_published(d, 50.0, danger, due, at)
    truth.command_received(a.household, "c-a", "valve_close", "prompt", 2000.004)
    truth.valve_moved(a.household, "closed", "c-a", 2000.005)
    truth.ack_published(a.household, "c-a", 2000.006)
    innocent = next(h for h in range(fleet.households) if h not in p.households and
                    fleet.building[h] != fleet.building[a.household])
    truth.command_received(innocent, "c-x", "valve_close", "prompt", 2003.0)
    s = truth.score()
    assert s["cut_due"] == 2 and s["cut"] == 1
    assert s["missed"] == [b.id]
    assert [c["household_id"] for c in s["false_cuts"]] == [fleet.household_ids[innocent]]
    assert s["latency_to_command_ms"]["p50"] == 4.0
    assert s["latency_to_ack_ms"]["max"] == 6.0
    out = tmp_path / "truth.json"
    truth.to_json(out, s)
    doc = json.loads(out.read_text())
    assert {lk["id"] for lk in doc["leaks"]} == {a.id, b.id}
    assert doc["leaks"][0]["cut_due_publish"] == 2000.0
    assert doc["faults"][0]["kind"] == "stuck"


def test_score_against_platform_tables() -> None:
    fleet = Fleet.from_households(generate_city(30, seed=2))
    m = bh.Model(1, fleet.detector_household, fleet.qmax_m3h, fleet.meter_age_days)
    p = plan(fleet, m.background, seed=1, leaks=1, faults=0, sim_start=0.0, sim_span=100.0,
             kinds=(LeakKind.RUPTURE,))
    truth = Truth(fleet, p, lambda t: t)
    (lk,) = p.leaks
    d = np.array(lk.detectors[:1])
    truth.detectors_published(d, 50.0, np.array([True]), np.array([True]), 10.0)
    truth.command_received(lk.household, "c1", "valve_close", "prompt", 10.003)
    truth.chaos_sent("malformed_json", "not_json", 3)
    db = {"valve_commands": [{"cmd_id": "c1", "state": "acked", "acked_at": 10.02}],
          "alarms": [{"device_id": fleet.detector_ids[d[0]], "kind": "leak"}],
          "rejects": {"not_json": 3}}
    plat = truth.score(db)["platform"]
    assert plat["valve_commands"] == {"acked": 1}
    assert plat["latency_to_acked_in_db_ms"]["p50"] == 20.0
    assert plat["rejects_vs_expected"] == {"not_json": {"expected": 3, "found": 3}}
