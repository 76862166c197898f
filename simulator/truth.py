"""Ground truth of a run and its score against what the platform did.

The truth is kept in memory while the fleet runs: every injected leak and fault with its
start, the wall-clock publish time of its first dangerous reading and of the reading that
made a cut due by the default rules (`behaviour.RuleMirror`), every command a meter
received and what it did. `score` compares it with the platform's own tables
(valve_commands, alarms) and returns the figures a run is judged by; `to_json` writes it.

Latency is measured from the publish of the reading that made the cut due (the platform
cannot act earlier) to the meter receiving `valve_close`, and on to the valve closing and
the ack going out; all stamps are this machine's wall clock.

A leak is cut by the detector (a Type A detector's own alarm closed the meter, which said
so) or by the platform (the meter got `valve_close` first); a Type A household whose meter
failed to close is the platform's to cut after its confirmation window. Each leak's work
order and owner notice are read from the platform's tables (`simulator.notices`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulator.fleet import Fleet
from simulator.scenario import Plan

METER_LIFE_DAYS = 10 * 365
DETECTOR_LIFE_DAYS = 5 * 365


@dataclass
class LeakRecord:
    id: str
    kind: str
    household_id: str
    meter_id: str
    detector_ids: list[str]
    building: str
    incident: str | None
    start_sim: float
    start_wall: float
    peak: float
    first_dangerous_publish: float | None = None
    cut_due_publish: float | None = None
    cut_due_device: str | None = None
    close_cmd_id: str | None = None
    close_received_at: float | None = None
    valve_closed_at: float | None = None
    ack_published_at: float | None = None
    close_deliveries: int = 0
    type_a: bool = False  # a detector of the household closes the meter itself
    local_alarm_publish: float | None = None  # first local_alarm of its detectors
    local_alarm_device: str | None = None
    local_close_at: float | None = None  # the meter closed on the detector's word
    local_close_failed: bool = False  # ... or was told and did not (a Type A alarm went out)


@dataclass
class EventRecord:
    """A tamper event, or a detector's power cut and its power_on."""

    id: str
    kind: str  # tamper | outage
    device_id: str
    household_id: str
    start_sim: float
    start_wall: float
    published_at: float | None = None  # tamper event; outage: the power_on event
    silent_from: float | None = None  # outage: last reading before the cut


@dataclass
class FaultRecord:
    id: str
    kind: str
    device_id: str
    start_sim: float
    start_wall: float
    first_publish: float | None = None  # first reading showing the fault (or the last one sent)


@dataclass
class CommandRecord:
    cmd_id: str
    meter_id: str
    household_id: str
    action: str
    responder: str
    received_at: list[float] = field(default_factory=list)
    dropped: int = 0
    acks_published: list[float] = field(default_factory=list)
    valve_moved_at: float | None = None
    stale: bool = False  # issued before this run began (a retry of an earlier run's command)


class Truth:
    def __init__(self, fleet: Fleet, plan: Plan, sim_to_wall: Any) -> None:
        self.fleet = fleet
        self.leaks: list[LeakRecord] = []
        self.faults: list[FaultRecord] = []
        self.events: list[EventRecord] = []
        self.commands: dict[str, CommandRecord] = {}
        self.chaos: Counter[str] = Counter()
        self.expected_rejects: Counter[str] = Counter()
        self.unexpected_cut_due: list[dict[str, Any]] = []
        self.unexpected_local_alarms: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self._leak_of_detector: dict[int, LeakRecord] = {}
        self._leak_of_household: dict[int, LeakRecord] = {}
        self._fault_of_detector: dict[int, FaultRecord] = {}
        self._fault_of_meter: dict[int, FaultRecord] = {}
        for lp in plan.leaks:
            h = lp.household
            rec = LeakRecord(
                lp.id,
                lp.kind.name.lower(),
                fleet.household_ids[h],
                fleet.meter_ids[h],
                [fleet.detector_ids[d] for d in lp.detectors],
                fleet.buildings[fleet.building[h]],
                lp.incident,
                lp.start_sim,
                sim_to_wall(lp.start_sim),
                lp.peak_lel,
            )
            self.leaks.append(rec)
            self._leak_of_household[h] = rec
            for d in lp.detectors:
                self._leak_of_detector[d] = rec
        for fp in plan.faults:
            dev = fleet.meter_ids[fp.device] if fp.is_meter else fleet.detector_ids[fp.device]
            frec = FaultRecord(
                fp.id, fp.kind.name.lower(), dev, fp.start_sim, sim_to_wall(fp.start_sim)
            )
            self.faults.append(frec)
            (self._fault_of_meter if fp.is_meter else self._fault_of_detector)[fp.device] = frec
        self._event_by_id: dict[str, EventRecord] = {}
        self._outage_of_detector: dict[int, EventRecord] = {}
        for ep in plan.events:
            if ep.is_meter:
                dev, h = fleet.meter_ids[ep.device], ep.device
            else:
                dev, h = fleet.detector_ids[ep.device], int(fleet.detector_household[ep.device])
            erec = EventRecord(
                ep.id, ep.kind, dev, fleet.household_ids[h], ep.start_sim, sim_to_wall(ep.start_sim)
            )
            self.events.append(erec)
            self._event_by_id[ep.id] = erec
            if ep.kind == "outage":
                self._outage_of_detector[ep.device] = erec
        self.leak_detectors = np.fromiter(self._leak_of_detector, np.int64)
        self.fault_detectors = np.fromiter(self._fault_of_detector, np.int64)

    # ------------------------------------------------------------ observations
    def mark_type_a(self, type_a: np.ndarray) -> None:
        """Which leaking households have a Type A detector."""
        for d, rec in self._leak_of_detector.items():
            if type_a[d]:
                rec.type_a = True

    def local_alarm(self, d: int, at: float, meter_fails: bool = False) -> None:
        """A Type A detector's own alarm went out; `meter_fails`: its meter will not close."""
        rec = self._leak_of_detector.get(d)
        if rec is None:
            self.unexpected_local_alarms.append({"device_id": self.fleet.detector_ids[d], "at": at})
            return
        if rec.local_alarm_publish is None:
            rec.local_alarm_publish = at
            rec.local_alarm_device = self.fleet.detector_ids[d]
            rec.local_close_failed = meter_fails

    def tamper(self, event_id: str, at: float) -> None:
        self._event_by_id[event_id].published_at = at

    def outage(self, d: int, at: float, last_publish: float) -> None:
        rec = self._outage_of_detector.get(d)
        if rec is not None:
            rec.silent_from = last_publish if np.isfinite(last_publish) else at

    def power_on(self, d: int, at: float) -> None:
        rec = self._outage_of_detector.get(d)
        if rec is not None:
            rec.published_at = at

    def detectors_published(
        self, idx: np.ndarray, t_sim: float, dangerous: np.ndarray, cut_due: np.ndarray, at: float
    ) -> None:
        """Stamp the first dangerous / cut-due publish of leaking detectors."""
        hits = np.flatnonzero(dangerous | cut_due)
        for j in hits:
            d = int(idx[j])
            rec = self._leak_of_detector.get(d)
            if rec is None:
                if cut_due[j]:
                    self.unexpected_cut_due.append(
                        {"device_id": self.fleet.detector_ids[d], "at": at}
                    )
                continue
            if rec.first_dangerous_publish is None:
                rec.first_dangerous_publish = at
            if cut_due[j] and rec.cut_due_publish is None:
                rec.cut_due_publish = at
                rec.cut_due_device = self.fleet.detector_ids[d]
        if self._fault_of_detector:
            for j in np.flatnonzero(np.isin(idx, self.fault_detectors)):
                frec = self._fault_of_detector[int(idx[j])]
                if frec.first_publish is None and t_sim >= frec.start_sim:
                    frec.first_publish = at

    def detector_went_silent(self, d: int, last_publish: float | None) -> None:
        frec = self._fault_of_detector.get(d)
        if frec is not None and frec.first_publish is None:
            frec.first_publish = last_publish

    def meters_published(
        self, idx: np.ndarray, t_sim: float, overflow: np.ndarray, at: float
    ) -> None:
        for j in np.flatnonzero(overflow):
            h = int(idx[j])
            rec = self._leak_of_household.get(h)
            if rec is None:
                self.unexpected_cut_due.append({"device_id": self.fleet.meter_ids[h], "at": at})
                continue
            if rec.first_dangerous_publish is None:
                rec.first_dangerous_publish = at
            if rec.cut_due_publish is None:
                rec.cut_due_publish = at
                rec.cut_due_device = self.fleet.meter_ids[h]
        if self._fault_of_meter:
            for hm in idx.tolist():
                frec = self._fault_of_meter.get(hm)
                if frec is not None and frec.first_publish is None and t_sim >= frec.start_sim:
                    frec.first_publish = at

    def command_received(
        self, h: int, cmd_id: str, action: str, responder: str, at: float, stale: bool = False
    ) -> None:
        rec = self.commands.get(cmd_id)
        if rec is None:
            rec = self.commands[cmd_id] = CommandRecord(
                cmd_id,
                self.fleet.meter_ids[h],
                self.fleet.household_ids[h],
                action,
                responder,
                stale=stale,
            )
        rec.received_at.append(at)
        leak = self._leak_of_household.get(h)
        if leak is not None and action == "valve_close" and not stale:
            leak.close_deliveries += 1
            if leak.close_received_at is None:
                leak.close_received_at = at
                leak.close_cmd_id = cmd_id

    def command_dropped(self, cmd_id: str) -> None:
        if cmd_id in self.commands:
            self.commands[cmd_id].dropped += 1

    def ack_published(self, h: int, cmd_id: str, at: float) -> None:
        rec = self.commands.get(cmd_id)
        if rec is not None:
            rec.acks_published.append(at)
        leak = self._leak_of_household.get(h)
        if leak is not None and leak.close_cmd_id == cmd_id and leak.ack_published_at is None:
            leak.ack_published_at = at

    def valve_moved(
        self, h: int, valve: str, cmd_id: str | None, at: float, local: bool = False
    ) -> None:
        if cmd_id and cmd_id in self.commands:
            self.commands[cmd_id].valve_moved_at = at
        leak = self._leak_of_household.get(h)
        if leak is not None and valve == "closed" and leak.valve_closed_at is None:
            leak.valve_closed_at = at
            if local:
                leak.local_close_at = at

    def chaos_sent(self, kind: str, expected_reject: str | None, n: int = 1) -> None:
        self.chaos[kind] += n
        if expected_reject:
            self.expected_rejects[str(expected_reject)] += n

    # ------------------------------------------------------------ results
    def pending_cuts(self) -> int:
        """Leaks whose cut is due but not yet done: a run waits for them (bounded)."""
        return sum(1 for lk in self.leaks if cut_due(lk) and cut_by(lk) is None)

    def service_life(self) -> dict[str, list[str]]:
        f = self.fleet
        return {
            "meters": [f.meter_ids[i] for i in np.flatnonzero(f.meter_age_days > METER_LIFE_DAYS)],
            "detectors": [
                f.detector_ids[i] for i in np.flatnonzero(f.detector_age_days > DETECTOR_LIFE_DAYS)
            ],
        }

    def score(self, db: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's verdict; `db` is what `read_platform` found in the platform's tables."""
        started = self.meta.get("started_at")
        if db is not None and started is not None:
            # The platform's retries can outlive a run: a command issued before this run
            # started is obeyed by the meter but is not this run's cut, right or wrong.
            for cmd_id, issued in db.get("issued_at", {}).items():
                if cmd_id in self.commands and issued is not None and issued < started - 1.0:
                    self.commands[cmd_id].stale = True
        leak_houses = {lk.household_id for lk in self.leaks}
        riser_buildings = {lk.building for lk in self.leaks if lk.incident}
        due = [lk for lk in self.leaks if cut_due(lk)]
        cut = [lk for lk in due if cut_by(lk) is not None]
        missed = [lk.id for lk in due if cut_by(lk) is None]
        not_required = [
            lk.id for lk in self.leaks if not cut_due(lk) and lk.close_received_at is not None
        ]
        # the platform's own path: the reading that made the cut due -> valve_close (a Type A
        # household's cut may rightly come earlier, on the detector's word, or later, after
        # the confirmation window (audited cut.unconfirmed): neither is counted here)
        unconfirmed = set(db.get("unconfirmed_cmds", ())) if db is not None else set()
        by_rule = [
            lk
            for lk in self.leaks
            if lk.close_received_at is not None
            and lk.cut_due_publish is not None
            and lk.close_cmd_id not in unconfirmed
            and (lk.local_alarm_publish is None or lk.close_received_at >= lk.cut_due_publish)
        ]
        confirm = [
            lk.close_received_at - lk.local_alarm_publish
            for lk in self.leaks
            if lk.local_close_failed
            and lk.close_received_at is not None
            and lk.local_alarm_publish is not None
        ]
        false_cuts, incident_cuts = [], []
        for c in self.commands.values():
            if c.action != "valve_close" or c.household_id in leak_houses or c.stale:
                continue
            h = self.fleet.household_index[c.household_id]
            if self.fleet.buildings[self.fleet.building[h]] in riser_buildings:
                incident_cuts.append(c.household_id)
            else:
                false_cuts.append(
                    {
                        "cmd_id": c.cmd_id,
                        "household_id": c.household_id,
                        "meter_id": c.meter_id,
                        "at": c.received_at[0],
                    }
                )
        lat_cmd = [lk.close_received_at - lk.cut_due_publish for lk in by_rule]  # type: ignore[operator]
        lat_closed = [
            lk.valve_closed_at - lk.cut_due_publish  # type: ignore[operator]
            for lk in by_rule
            if lk.valve_closed_at is not None
        ]
        lat_ack = [
            lk.ack_published_at - lk.cut_due_publish  # type: ignore[operator]
            for lk in by_rule
            if lk.ack_published_at is not None
        ]
        local_lat = [
            lk.local_close_at - lk.local_alarm_publish  # type: ignore[operator]
            for lk in cut
            if cut_by(lk) == "detector" and lk.local_alarm_publish is not None
        ]
        out: dict[str, Any] = {
            "leaks": len(self.leaks),
            "cut_due": len(due),
            "cut": len(cut),
            "cut_by_detector": sum(1 for lk in cut if cut_by(lk) == "detector"),
            "cut_by_platform": sum(1 for lk in cut if cut_by(lk) == "platform"),
            "local_close_failed": [lk.id for lk in self.leaks if lk.local_close_failed],
            "missed": missed,
            "cut_not_required": not_required,
            "warning_only": [lk.id for lk in self.leaks if lk.cut_due_publish is None],
            "false_cuts": false_cuts,
            "incident_cuts": sorted(set(incident_cuts)),
            "early_cuts": sum(1 for x in lat_cmd if x < 0),
            "latency_to_command_ms": percentiles(lat_cmd),
            "latency_to_valve_closed_ms": percentiles(lat_closed),
            "latency_to_ack_ms": percentiles(lat_ack),
            "local_alarm_to_valve_closed_ms": percentiles(local_lat),
            "local_alarm_to_platform_close_ms": percentiles(confirm),
            "unexpected_local_alarms": self.unexpected_local_alarms[:20],
            "unexpected_cut_due": self.unexpected_cut_due[:20],
            "commands": Counter(c.action for c in self.commands.values()),
            "stale_commands": sum(1 for c in self.commands.values() if c.stale),
            "commands_dropped_by_lossy_meters": sum(c.dropped for c in self.commands.values()),
            "chaos_sent": dict(self.chaos),
            "expected_rejects": dict(self.expected_rejects),
        }
        if db is not None:
            out["platform"] = self._score_db(db)
        return out

    def _score_db(self, db: dict[str, Any]) -> dict[str, Any]:
        by_cmd = {r["cmd_id"]: r for r in db.get("valve_commands", [])}
        acked_lat = []
        states: Counter[str] = Counter(r["state"] for r in by_cmd.values())
        for lk in self.leaks:
            r = by_cmd.get(lk.close_cmd_id or "")
            if r and r.get("acked_at") is not None and lk.cut_due_publish is not None:
                acked_lat.append(r["acked_at"] - lk.cut_due_publish)
        alarms = db.get("alarms", [])
        alarm_devices: dict[str, list[str]] = {}
        for a in alarms:
            alarm_devices.setdefault(a["device_id"], []).append(a["kind"])
        faults_seen = {f.id: alarm_devices.get(f.device_id, []) for f in self.faults}
        rejects = db.get("rejects", {})
        return {
            "leak_paths": self._leak_paths(db),
            "leak_outcomes": [self._leak_outcome(lk, db) for lk in self.leaks],
            "events": [self._event_outcome(e, db) for e in self.events],
            "valve_commands": dict(states),
            "latency_to_acked_in_db_ms": percentiles(acked_lat),
            "alarms_by_kind": dict(Counter(a["kind"] for a in alarms)),
            "faults_with_alarm": sum(1 for v in faults_seen.values() if v),
            "faults": faults_seen,
            "rejects_by_reason": rejects,
            "rejects_vs_expected": {
                r: {"expected": n, "found": rejects.get(r, 0)}
                for r, n in self.expected_rejects.items()
            },
        }

    def _leak_outcome(self, lk: LeakRecord, db: dict[str, Any]) -> dict[str, Any]:
        """One leak: who cut it, its work order (and how long after the leak began it was
        opened), whether it was dispatched, and the owner's notice."""
        shared = self.meta.get("platform_clock") == "shared"
        began = lk.start_sim if shared else lk.start_wall  # on the platform's clock
        orders = db.get("orders", {}).get(lk.household_id, [])
        order = next((o for o in orders if o["cause"] in ("leak", "overflow")), None)
        order = order or (orders[0] if orders else None)
        notices = db.get("notices", {}).get(lk.household_id, [])
        notice = next((n for n in notices if order and n["kind"] == order["cause"]), None)
        notice = notice or (notices[0] if notices else None)
        return {
            "id": lk.id,
            "kind": lk.kind,
            "household_id": lk.household_id,
            "type_a": lk.type_a,
            "cut_by": cut_by(lk),
            "local_close_failed": lk.local_close_failed,
            "order": None
            if order is None
            else {
                "cause": order["cause"],
                "priority": order["priority"],
                "status": order["status"],
                "dispatched": order["dispatched_at"] is not None,
                "leak_to_order_s": round(order["opened_at"] - began, 2),
            },
            "notice": None
            if notice is None
            else {
                "kind": notice["kind"],
                "channel": notice["channel"],
                "outcome": notice["outcome"],
                "leak_to_first_call_s": None
                if notice.get("first_attempt_at") is None
                else round(notice["first_attempt_at"] - began, 2),
            },
        }

    def _leak_paths(self, db: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Per cut path (detector, platform, not cut): leaks, orders, dispatched (by a person:
        the platform dispatches nobody itself), leak -> order time, leak -> the owner's first
        call or text, and the call chains' outcomes."""
        out: dict[str, dict[str, Any]] = {}
        for o in (self._leak_outcome(lk, db) for lk in self.leaks):
            p = out.setdefault(
                o["cut_by"] or "not_cut",
                {
                    "leaks": 0,
                    "orders": 0,
                    "dispatched": 0,
                    "to_order_s": [],
                    "to_call_s": [],
                    "notices": Counter(),
                },
            )
            p["leaks"] += 1
            if o["order"]:
                p["orders"] += 1
                p["dispatched"] += int(o["order"]["dispatched"])
                p["to_order_s"].append(o["order"]["leak_to_order_s"])
            p["notices"][o["notice"]["outcome"] if o["notice"] else "none"] += 1
            if o["notice"] and o["notice"].get("leak_to_first_call_s") is not None:
                p["to_call_s"].append(o["notice"]["leak_to_first_call_s"])
        for p in out.values():
            for key, name in (("to_order_s", "leak_to_order_s"), ("to_call_s", "first_call_s")):
                t = sorted(p.pop(key))
                p[name] = {"p50": t[len(t) // 2], "max": t[-1], "n": len(t)} if t else {"n": 0}
            p["notices"] = dict(p["notices"])
        return out

    def _event_outcome(self, e: EventRecord, db: dict[str, Any]) -> dict[str, Any]:
        """A tamper: its order (high priority); an outage: power_on recorded by the platform."""
        out: dict[str, Any] = {"id": e.id, "kind": e.kind, "device_id": e.device_id}
        if e.kind == "tamper":
            orders = db.get("orders", {}).get(e.household_id, [])
            o = next((o for o in orders if o["cause"] == "tamper"), None)
            out["sent"] = e.published_at is not None
            out["order"] = None if o is None else f"{o['cause']} ({o['priority']}, {o['status']})"
        else:
            out["power_on_sent"] = e.published_at is not None
            out["power_on_recorded"] = e.device_id in db.get("power_on", set())
        return out

    def to_json(self, path: Path, scores: dict[str, Any] | None = None) -> None:
        doc = {
            "meta": self.meta,
            "leaks": [asdict(lk) for lk in self.leaks],
            "faults": [asdict(f) for f in self.faults],
            "events": [asdict(e) for e in self.events],
            "commands": [asdict(c) for c in self.commands.values()],
            "chaos": dict(self.chaos),
            "expected_rejects": dict(self.expected_rejects),
            "service_life": self.service_life(),
            "scores": scores,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, default=_json_default))


def cut_due(lk: LeakRecord) -> bool:
    """The gas had to be cut: by the default rules on what was published, or because a
    Type A detector alarmed (its own alarm cuts the gas)."""
    return lk.cut_due_publish is not None or lk.local_alarm_publish is not None


def cut_by(lk: LeakRecord) -> str | None:
    """Who cut the gas first: "detector" (the meter closed on its detector's alarm),
    "platform" (the meter got valve_close), or None."""
    if lk.local_close_at is not None and (
        lk.close_received_at is None or lk.local_close_at <= lk.close_received_at
    ):
        return "detector"
    return "platform" if lk.close_received_at is not None else None


def percentiles(values_s: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max in milliseconds of latencies given in seconds."""
    if not values_s:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.maximum(np.asarray(values_s, np.float64), 0.0) * 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "n": len(a),
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
        "max": round(float(a.max()), 2),
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (dt.datetime, dt.date)):
        return o.isoformat()
    if isinstance(o, (set, Counter)):
        return dict(o) if isinstance(o, Counter) else sorted(o)
    raise TypeError(type(o))
