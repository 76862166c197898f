"""Scenarios: which households leak, which devices fail, and when; seeded and reproducible.

`plan(fleet, ...)` picks distinct households for every injected event (one event per
household, so a valve cut is unambiguously right or wrong) and fills the `Injection`
columns the behaviour model reads. Times are simulated seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.behaviour import FAULT_SENSOR, FaultKind, Injection, LeakKind
from simulator.fleet import Fleet

LEAK_MIX = (
    LeakKind.SEEP,
    LeakKind.RUPTURE,
    LeakKind.HOSE_OFF,
    LeakKind.RUPTURE,
    LeakKind.SEEP,
    LeakKind.RISER,
)
STUCK_MIN_LEL = 0.6
CONTINUOUS_FLOW_M3H = 0.3
MICRO_FLOW_M3H = 0.024
FAULT_MIX = (
    FaultKind.STUCK,
    FaultKind.FAULT_BITS,
    FaultKind.LASER,
    FaultKind.OFFLINE,
    FaultKind.BATTERY,
)


@dataclass
class LeakPlan:
    id: str
    kind: LeakKind
    household: int
    detectors: list[int]
    start_sim: float
    peak_lel: float
    incident: str | None = None  # riser: the flats of one building share an incident


@dataclass
class FaultPlan:
    id: str
    kind: FaultKind
    device: int  # detector index, or household index for a meter fault
    is_meter: bool
    start_sim: float


@dataclass
class EventPlan:
    """A device event that is not a reading's consequence: a `tamper` (the event at
    `start_sim`), or an `outage` (a detector loses power: silent from `start_sim`, back at
    `end_sim` with `power_on`)."""

    id: str
    kind: str  # tamper | outage
    device: int  # detector index, or household index for a meter
    is_meter: bool
    start_sim: float
    end_sim: float | None = None


@dataclass
class Plan:
    injection: Injection
    leaks: list[LeakPlan] = field(default_factory=list)
    faults: list[FaultPlan] = field(default_factory=list)
    events: list[EventPlan] = field(default_factory=list)

    @property
    def households(self) -> set[int]:
        return {lk.household for lk in self.leaks} | {
            f.device if f.is_meter else -1 for f in self.faults
        }


def plan(
    fleet: Fleet,
    model_background: np.ndarray,
    seed: int,
    leaks: int,
    faults: int,
    sim_start: float,
    sim_span: float,
    leak_window: tuple[float, float] = (0.05, 0.6),
    kinds: tuple[LeakKind, ...] = LEAK_MIX,
    exclude: set[int] | None = None,
    fault_kinds: tuple[FaultKind, ...] = FAULT_MIX,
    fault_window: tuple[float, float] = (0.05, 0.5),
    tampers: int = 0,
    outages: int = 0,
    outage_share: float = 0.2,
) -> Plan:
    """Inject `leaks` leak events and `faults` faults (of `fault_kinds`, in turn) into the
    window [start, start + span], and `tampers` tamper events and `outages` detector power
    cuts lasting `outage_share` of the span; households in `exclude` (the platform still
    deals with them) get nothing."""
    rng = np.random.default_rng([seed, 7])
    inj = Injection.empty(fleet.households, fleet.detectors)
    out = Plan(inj)
    order = rng.permutation(fleet.households)
    used: set[int] = set(exclude or ())
    has_det = np.bincount(fleet.detector_household, minlength=fleet.households) > 0

    def take(need_detector: bool = True) -> int | None:
        for h in order:
            if int(h) not in used and (has_det[h] or not need_detector):
                used.add(int(h))
                return int(h)
        return None

    lo, hi = sim_start + leak_window[0] * sim_span, sim_start + leak_window[1] * sim_span
    # Slow leaks must develop inside the run: "minutes" when the run allows it.
    seep_rise = float(np.clip(0.15 * sim_span, 20.0, 360.0))
    for n in range(leaks):
        kind = kinds[n % len(kinds)]
        start = float(rng.uniform(lo, hi))
        lid = f"leak-{n + 1:03d}"
        if kind is LeakKind.RISER:
            flats = _riser_flats(fleet, rng, used, has_det)
            if flats is None:
                kind = LeakKind.SEEP
            else:
                incident = f"riser-{fleet.buildings[fleet.building[flats[0]]]}"
                for j, h in enumerate(flats):
                    used.add(h)
                    dets = fleet.detectors_of(h)
                    peak = float(rng.uniform(14.0, 38.0))
                    s = start + float(rng.uniform(0, 0.05 * sim_span))
                    _set_leak(inj, dets, LeakKind.RISER, s, peak, seep_rise * 0.8, stops=False)
                    out.leaks.append(
                        LeakPlan(f"{lid}{'abcdefgh'[j]}", kind, h, dets.tolist(), s, peak, incident)
                    )
                continue
        got = take()
        if got is None:
            break
        h = got
        dets = fleet.detectors_of(h)
        if kind is LeakKind.SEEP:
            peak = float(rng.uniform(28.0, 60.0))
            _set_leak(inj, dets[:1], kind, start, peak, seep_rise, stops=True)
            # the second detector of a flat (another room) smells less of it
            _set_leak(inj, dets[1:], kind, start, peak * 0.4, seep_rise, stops=True)
        elif kind is LeakKind.RUPTURE:
            peak = float(rng.uniform(45.0, 85.0))
            _set_leak(inj, dets[:1], kind, start, peak, 3.0, stops=True)
            _set_leak(inj, dets[1:], LeakKind.SEEP, start, peak * 0.3, seep_rise, stops=True)
        else:  # HOSE_OFF: the meter sees it; the kitchen detector only a whiff
            peak = float(rng.uniform(1.6, 3.0))  # x qmax
            inj.hose_start[h] = start
            inj.hose_factor[h] = peak
            _set_leak(inj, dets, LeakKind.SEEP, start, 4.0, seep_rise, stops=True)
        out.leaks.append(LeakPlan(lid, kind, h, dets.tolist(), start, peak))

    flo = sim_start + fault_window[0] * sim_span
    fhi = sim_start + fault_window[1] * sim_span
    for n in range(faults):
        fkind = fault_kinds[n % len(fault_kinds)]
        fh = take()
        if fh is None:
            break
        start = float(rng.uniform(flo, fhi))
        fid = f"fault-{n + 1:03d}"
        if fkind is FaultKind.BATTERY:
            inj.battery_start[fh] = start
            inj.battery_rate[fh] = 0.5 / max(0.3 * sim_span / 3600.0, 1e-3)  # 0.5 V lost
            out.faults.append(FaultPlan(fid, fkind, fh, True, start))
            continue
        if fkind in (FaultKind.CONTINUOUS, FaultKind.MICRO_FLOW):
            inj.flow_start[fh] = start
            micro = fkind is FaultKind.MICRO_FLOW
            # an appliance left on low; or 1.5 x a meter's starting flow (0.016 m3/h), alone
            inj.flow_extra[fh] = MICRO_FLOW_M3H if micro else CONTINUOUS_FLOW_M3H
            inj.flow_alone[fh] = micro
            out.faults.append(FaultPlan(fid, fkind, fh, True, start))
            continue
        d = int(fleet.detectors_of(fh)[0])
        inj.fault_kind[d] = fkind
        inj.fault_start[d] = start
        if fkind is FaultKind.STUCK:
            # stuck at a plausible background; a flat zero would be a healthy clean room
            inj.fault_value[d] = round(max(float(model_background[d]), STUCK_MIN_LEL), 2)
        elif fkind is FaultKind.FAULT_BITS:
            inj.fault_value[d] = FAULT_SENSOR
        elif fkind is FaultKind.LASER:
            inj.fault_span_s[d] = max(0.1 * sim_span, 10.0)
        out.faults.append(FaultPlan(fid, fkind, d, False, start))
    for n in range(tampers + outages):
        eh = take()
        if eh is None:
            break
        start = float(rng.uniform(lo, hi))
        dets = fleet.detectors_of(eh)
        if n < tampers:  # every other tamper is at the meter
            on_meter = n % 2 == 1
            dev = eh if on_meter else int(dets[0])
            out.events.append(EventPlan(f"tamper-{n + 1:03d}", "tamper", dev, on_meter, start))
        else:
            end = start + outage_share * sim_span
            out.events.append(
                EventPlan(
                    f"outage-{n - tampers + 1:03d}", "outage", int(dets[0]), False, start, end
                )
            )
    return out


def _set_leak(
    inj: Injection,
    dets: np.ndarray,
    kind: LeakKind,
    start: float,
    peak: float,
    rise_s: float,
    stops: bool,
) -> None:
    if len(dets) == 0:
        return
    inj.leak_kind[dets] = kind
    inj.leak_start[dets] = start
    inj.leak_peak[dets] = peak
    inj.leak_rise_s[dets] = rise_s
    inj.leak_stops_on_close[dets] = stops


def _riser_flats(
    fleet: Fleet, rng: np.random.Generator, used: set[int], has_det: np.ndarray
) -> list[int] | None:
    """3–5 free flats with detectors in one building, or None if no building has three."""
    for b in rng.permutation(len(fleet.buildings)):
        flats = [
            int(h) for h in np.flatnonzero(fleet.building == b) if int(h) not in used and has_det[h]
        ]
        if len(flats) >= 3:
            k = int(rng.integers(3, min(5, len(flats)) + 1))
            return sorted(rng.choice(flats, size=k, replace=False).tolist())
    return None
