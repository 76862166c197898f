"""A scenario run: the fleet speaks protocol v1 over the real broker while the truth is kept.

`FleetRun` is the I/O adapter around the pure parts: every tick it asks the behaviour model
for the readings of the devices that are due, publishes them, lets the rule mirror and the
truth stamp what went out, routes commands to the valve state machines and carries out
their effects (valve moves, acks) when they are due. Simulated time runs `speed` times
faster than the wall clock; publishing is real.

Devices stamp `ts` with the wall clock (their own clocks are real), unless the run shares
an accelerated clock with a gateway under test (`RunOptions.clock`, the gateway's
`clock` settings): then model time, device clocks and the platform clock are one, and
hours of device life pass in seconds. Type A detectors (`type_a_share`) close their
household's meter themselves when they smell gas, as real ones do; the platform is told
by their `local_alarm` and the meter's `valve_closed_local`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from gateway import protocol
from simulator import behaviour as bh
from simulator import chaos as ch
from simulator import valve as vv
from simulator.fleet import Fleet
from simulator.scenario import FAULT_MIX, LEAK_MIX
from simulator.scenario import plan as plan_scenario
from simulator.transport import DETECTOR, METER, Transport
from simulator.truth import Truth
from simulator.wire import Message

logger = logging.getLogger(__name__)

SEQ_EPOCH = 1_750_000_000  # seq origin: 10 per second since then, so runs never reuse a seq


@dataclass
class RunOptions:
    duration_s: float = 120.0
    speed: float = 10.0
    interval_s: float = 5.0  # wall seconds between a device's routine readings
    alarm_interval_s: float = 1.0  # while a detector smells gas it reports this often
    leaks: int = 10
    faults: int = 5
    seed: int = 1
    chaos: float = 0.0  # share of readings followed by a misbehaving message
    responders: vv.ResponderShares = field(default_factory=vv.ResponderShares)
    resident_press_share: float = 0.5  # reopen requests the resident confirms on site
    resident_press_after_s: float = 15.0
    grace_s: float = 30.0  # after the run, wait this long at most for due cuts and acks
    start_hour: float | None = None  # simulated local time of day at the start
    tick_s: float = 0.02
    leak_window: tuple[float, float] = (0.05, 0.6)
    leak_kinds: tuple[bh.LeakKind, ...] = LEAK_MIX
    status_on_start: bool = True
    fault_kinds: tuple[bh.FaultKind, ...] = FAULT_MIX
    fault_window: tuple[float, float] = (0.05, 0.5)
    # Type A detectors: their own alarm closes the meter (valve_closed_local), the platform
    # confirms; the others leave the cut to the platform
    type_a_share: float = 0.0
    local_alarm_lel: float = bh.CUT_LEL  # a Type A detector's own alarm level
    local_close_delay_s: float = 0.2  # wall: detector alarm -> meter valve closed
    local_close_fail: float = 0.0  # share of households whose meter ignores the detector
    tampers: int = 0  # tamper events
    outages: int = 0  # detectors losing power, then back with power_on
    outage_share: float = 0.2  # of the simulated span
    # (wall_origin, sim_origin, speed) shared with a gateway on an accelerated clock
    # (gateway settings `clock`): devices then stamp model time
    clock: tuple[float, float, float] | None = None


class Clock:
    """Simulated time = sim0 + (wall - wall0) x speed (standing at sim0 before wall0: the
    same function as the gateway's accelerated clock, so both can share one)."""

    def __init__(self, wall0: float, sim0: float, speed: float) -> None:
        self.wall0, self.sim0, self.speed = wall0, sim0, speed

    def sim(self, wall: float) -> float:
        return self.sim0 + max(0.0, wall - self.wall0) * self.speed

    def wall(self, sim: float) -> float:
        return self.wall0 + (sim - self.sim0) / self.speed


def seq_origin(now: float) -> int:
    return int((now - SEQ_EPOCH) * 10) % protocol.U32


class FleetRun:
    def __init__(
        self,
        fleet: Fleet,
        transport: Transport,
        opts: RunOptions,
        on_event: Callable[[str, str], None] | None = None,
        seq_start: dict[str, int] | None = None,
        per_device: bool = False,
        busy_households: set[int] | None = None,
        closed_meters: set[int] | None = None,
    ) -> None:
        self.fleet, self.transport, self.opts = fleet, transport, opts
        self.per_device = per_device
        self.on_event = on_event or (lambda kind, text: None)
        now = time.time()
        self.shared_clock = opts.clock is not None
        if opts.clock is not None:
            self.clock = Clock(*opts.clock)
        else:
            sim0 = now
            if opts.start_hour is not None:
                day = now - now % 86400
                sim0 = day + opts.start_hour * 3600
            self.clock = Clock(now, sim0, opts.speed)
        sim_now = self.clock.sim(now)
        speed = self.clock.speed
        self.model = bh.Model(
            opts.seed, fleet.detector_household, fleet.qmax_m3h, fleet.meter_age_days
        )
        span = opts.duration_s * speed
        self.plan = plan_scenario(
            fleet,
            self.model.background,
            opts.seed,
            opts.leaks,
            opts.faults,
            sim_now,
            span,
            opts.leak_window,
            opts.leak_kinds,
            busy_households,
            opts.fault_kinds,
            opts.fault_window,
            opts.tampers,
            opts.outages,
            opts.outage_share,
        )
        self.model.inj = self.plan.injection
        self.truth = Truth(fleet, self.plan, self.clock.wall)
        self.mirror = bh.RuleMirror(fleet.households, fleet.detectors, fleet.qmax_m3h)
        self.responders = opts.responders.assign(opts.seed, fleet.households)
        self.valves: dict[int, vv.ValveState] = {}
        for h in closed_meters or ():  # left closed by an earlier run: still closed
            self.model.valve[h] = bh.VALVE_CLOSED
            self.valves[h] = vv.ValveState(valve="closed")
        self.rng = np.random.default_rng([opts.seed, 99])
        h, d = fleet.households, fleet.detectors
        # Spread first readings over one interval so the load is even.
        self.meter_due = now + opts.interval_s * bh.uniform(opts.seed, 50, np.arange(h))
        self.det_due = now + opts.interval_s * bh.uniform(opts.seed, 51, np.arange(d))
        origin = seq_origin(now)
        seq_start = seq_start or {}
        self.seq = np.array(
            [max(origin, seq_start.get(i, 0)) for i in fleet.all_device_ids()], np.int64
        )
        self.first_seq = self.seq.copy()
        self.readings_sent = np.zeros(h + d, np.int64)
        self.det_online = np.ones(d, bool)
        self.det_alarmed = np.zeros(d, bool)
        self.det_last_publish = np.full(d, np.nan)
        self.type_a = bh.uniform(opts.seed, 70, np.arange(d)) < opts.type_a_share
        self.local_fail = self._failing_meters(opts.local_close_fail)
        self.truth.mark_type_a(self.type_a)
        self.out_start = np.full(d, np.inf)  # detectors' power cuts (sim time)
        self.out_end = np.full(d, np.inf)
        self.powered_off = np.zeros(d, bool)
        for ev in self.plan.events:
            if ev.kind == "outage" and ev.end_sim is not None:
                self.out_start[ev.device], self.out_end[ev.device] = ev.start_sim, ev.end_sim
        self._tampers = sorted(
            (
                (ev.start_sim, ev.id, ev.device, ev.is_meter)
                for ev in self.plan.events
                if ev.kind == "tamper"
            ),
            reverse=True,
        )
        self._effects: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._ghosts = itertools.count()
        self.published = 0
        self.started_at = now
        self.ended_at: float | None = None
        self.truth.meta.update(
            {
                "seed": opts.seed,
                "speed": speed,
                "platform_clock": "shared" if self.shared_clock else "wall",
                "type_a_detectors": int(self.type_a.sum()),
                "local_close_fail_households": int(self.local_fail.sum()),
                "duration_s": opts.duration_s,
                "households": h,
                "devices": h + d,
                "mode": "per-device" if per_device else "bridge",
                "chaos": opts.chaos,
                "started_at": now,
                "sim_start": sim_now,
                "responders": {
                    r.value: sum(1 for x in self.responders if x.kind is r) for r in vv.Responder
                },
            }
        )
        for lk in self.truth.leaks:
            self.on_event(
                "plan", f"{lk.id} {lk.kind} in {lk.household_id} at +{lk.start_wall - now:.0f}s"
            )

    def _failing_meters(self, share: float) -> np.ndarray:
        """Meters that ignore their Type A detector: `share` of the leaking households with
        one (rounded up, those whose detector will smell the leak first), so that a run
        shows the platform closing them itself; the same ones for a seed."""
        fail = np.zeros(self.fleet.households, bool)
        houses = [lp for lp in self.plan.leaks if self.type_a[lp.detectors].any()]
        k = int(np.ceil(share * len(houses) - 1e-9))
        at_detector = (bh.LeakKind.SEEP, bh.LeakKind.RUPTURE)  # riser, hose off: maybe not
        houses.sort(
            key=lambda lp: (
                lp.kind not in at_detector,
                float(bh.uniform(self.opts.seed, 71, lp.household)),
            )
        )
        for lp in houses[:k]:
            fail[lp.household] = True
        return fail

    # ------------------------------------------------------------ commands
    def _on_command(self, h: int, msg: Message, received_at: float) -> None:
        try:
            cmd = protocol.decode(protocol.Command, msg.payload)
        except protocol.Rejected as err:
            logger.warning("bad command meter=%s %s", self.fleet.meter_ids[h], err)
            return
        profile = self.responders[h]
        # A resend of a command issued before this run (the platform's retries outlive a
        # simulator run) is obeyed, but is not this run's cut.
        stale = cmd.ts < self.started_at - 2.0
        self.truth.command_received(
            h, cmd.cmd_id, cmd.action, profile.kind.value, received_at, stale
        )
        leak = self.truth._leak_of_household.get(h)
        lat = ""
        if leak is not None and leak.cut_due_publish is not None and cmd.action == "valve_close":
            lat = f" {1000 * (received_at - leak.cut_due_publish):.1f} ms after the cut was due"
        self.on_event(
            "command",
            f"{self.fleet.meter_ids[h]} got {cmd.action} {cmd.cmd_id} ({profile.kind.value}){lat}",
        )
        state = self.valves.setdefault(h, vv.ValveState())
        for eff in vv.on_command(state, profile, cmd, received_at, self.opts.seed):
            self._apply(h, eff, cmd.cmd_id)
        if (
            cmd.action == "valve_open"
            and state.awaiting_press
            and bh.uniform(self.opts.seed, 60, h) < self.opts.resident_press_share
        ):
            self._schedule(received_at + self.opts.resident_press_after_s, lambda: self._press(h))

    def _apply(self, h: int, eff: vv.Effect, cmd_id: str) -> None:
        if isinstance(eff, vv.Dropped):
            self.truth.command_dropped(cmd_id)
        elif isinstance(eff, vv.MoveValve):
            self._schedule(eff.at, lambda: self._move(h, eff.valve, cmd_id))
        elif isinstance(eff, vv.SendAck):
            self._schedule(eff.at, lambda: self._ack(h, eff.ack))

    def _move(self, h: int, valve: str, cmd_id: str | None) -> None:
        now = time.time()
        code = bh.VALVE_NAMES.index(valve)
        self.model.set_valve(h, code, self.clock.sim(now))
        self.truth.valve_moved(h, valve, cmd_id, now)
        self.on_event("valve", f"{self.fleet.meter_ids[h]} valve {valve}")
        self.meter_due[h] = now  # report the new valve state at once

    def _ack(self, h: int, ack: protocol.Ack) -> None:
        now = time.time()
        ack = msgspec.structs.replace(ack, ts=round(self.stamp(now), 3))
        topic = protocol.topic(self.fleet.meter_ids[h], "ack", self.fleet.prefix).encode()
        at = self.transport.publish(METER, h, topic, protocol.encode(ack))
        self.truth.ack_published(h, ack.cmd_id, at)

    def stamp(self, wall: float) -> float:
        """A device's clock at `wall`: model time when shared with the gateway, else real."""
        return self.clock.sim(wall) if self.shared_clock else wall

    def _close_locally(self, h: int, d: int) -> None:
        """A Type A detector's alarm reached its meter: the valve closes, the meter says so."""
        state = self.valves.setdefault(h, vv.ValveState())
        if state.valve == "closed":  # the platform was quicker
            return
        state.valve = "closed"
        state.awaiting_press = False
        now = time.time()
        self.model.set_valve(h, bh.VALVE_CLOSED, self.clock.sim(now))
        self.truth.valve_moved(h, "closed", None, now, local=True)
        self._event(METER, h, self.stamp(now), b',"type":"valve_closed_local"')
        self.on_event(
            "valve",
            f"{self.fleet.meter_ids[h]} valve closed by detector {self.fleet.detector_ids[d]}",
        )
        self.meter_due[h] = now  # and the next reading says "closed"

    def _press(self, h: int) -> None:
        for eff in vv.on_button_press(self.valves[h], time.time()):
            self._apply(h, eff, None)  # type: ignore[arg-type]

    def _schedule(self, at: float, fn: Callable[[], None]) -> None:
        if at <= time.time():  # a prompt meter answers now, not at the next tick
            fn()
        else:
            heapq.heappush(self._effects, (at, next(self._order), fn))

    # ------------------------------------------------------------ readings
    def _publish_detectors(self, now: float, t: float) -> int:
        due = np.flatnonzero((self.det_due <= now) & self.det_online)
        if not due.size:
            return 0
        online = self.model.detector_online(due, t)
        for d in due[~online]:
            self.det_online[d] = False
            self.truth.detector_went_silent(int(d), float(self.det_last_publish[d]))
            self.transport.drop(DETECTOR, int(d))
            self.on_event("fault", f"{self.fleet.detector_ids[d]} went offline")
        due = due[online]
        due = self._power(due, now, t)
        if not due.size:
            return 0
        ch4, fault = self.model.detector_lel(due, t)
        dangerous, cut_due = self.mirror.detectors(due, ch4, fault)
        h0 = self.fleet.households
        g = due + h0
        seqs = self.seq[g]
        ts = round(self.stamp(now), 3)
        topics = self.fleet.detector_topics
        payloads = [
            b'{"seq":%d,"ts":%.3f,"ch4":%.2f,"fault":%d}' % (s, ts, c, f)
            for s, c, f in zip(seqs.tolist(), ch4.tolist(), fault.tolist(), strict=False)
        ]
        tr = self.transport
        # Stamped before the writes: a latency measured from here is never flattered.
        at = time.time()
        for d, p in zip(due.tolist(), payloads, strict=False):
            tr.publish(DETECTOR, d, topics[d], p)
        self.seq[g] = (seqs + 1) % protocol.U32
        self.readings_sent[g] += 1
        self.det_last_publish[due] = at
        self.truth.detectors_published(due, t, dangerous, cut_due, at)
        alarmed = ch4 >= bh.PREALARM_LEL
        interval = np.where(alarmed, self.opts.alarm_interval_s, self.opts.interval_s)
        self.det_due[due] = now + interval
        # a Type A detector's own alarm: once, re-armed when the gas is below pre-alarm
        local = self.type_a[due] & (fault == 0) & (ch4 >= self.opts.local_alarm_lel)
        newly = due[local & ~self.det_alarmed[due]]
        self.det_alarmed[due] = local | (self.det_alarmed[due] & alarmed)
        for d in newly.tolist():
            self._local_alarm(d, at)
        if self.opts.chaos:
            self._chaos(DETECTOR, due, payloads, ts)
        return len(due)

    def _local_alarm(self, d: int, at: float) -> None:
        self._event(DETECTOR, d, round(self.stamp(at), 3), b',"type":"local_alarm"')
        h = int(self.fleet.detector_household[d])
        self.truth.local_alarm(d, at, bool(self.local_fail[h]))
        if self.local_fail[h]:
            self.on_event(
                "alarm",
                f"{self.fleet.detector_ids[d]} alarms; meter {self.fleet.meter_ids[h]}"
                " does not close",
            )
            return
        self.on_event("alarm", f"{self.fleet.detector_ids[d]} alarms and closes its meter")
        self._schedule(at + self.opts.local_close_delay_s, lambda: self._close_locally(h, d))

    def _power(self, due: np.ndarray, now: float, t: float) -> np.ndarray:
        """Detectors without power stay silent; one whose power came back says power_on."""
        off = (self.out_start[due] <= t) & (t < self.out_end[due])
        if off.any():
            for d in due[off & ~self.powered_off[due]].tolist():
                self.powered_off[d] = True
                self.truth.outage(d, now, float(self.det_last_publish[d]))
                self.on_event("fault", f"{self.fleet.detector_ids[d]} lost power")
            self.det_due[due[off]] = now + self.opts.interval_s
        back = due[~off & self.powered_off[due]]
        for d in back.tolist():
            self.powered_off[d] = False
            self.out_start[d] = np.inf
            self._event(DETECTOR, d, round(self.stamp(now), 3), b',"type":"power_on"')
            self.truth.power_on(d, time.time())
            self.on_event("fault", f"{self.fleet.detector_ids[d]} power back: power_on")
        return due[~off]

    def _tamper(self, t: float) -> None:
        while self._tampers and self._tampers[-1][0] <= t:
            _, eid, i, is_meter = self._tampers.pop()
            kind = METER if is_meter else DETECTOR
            now = time.time()
            self._event(kind, i, round(self.stamp(now), 3), b',"type":"tamper"')
            self.truth.tamper(eid, now)
            dev = (self.fleet.meter_ids if is_meter else self.fleet.detector_ids)[i]
            self.on_event("fault", f"{dev} reports tamper")

    def _publish_meters(self, now: float, t: float) -> int:
        due = np.flatnonzero(self.meter_due <= now)
        if not due.size:
            return 0
        vol, flow, valve, batt, rssi = self.model.meter_reading(due, t)
        overflow = self.mirror.meters(due, flow)
        seqs = self.seq[due]
        ts = round(self.stamp(now), 3)
        names = [n.encode() for n in bh.VALVE_NAMES]
        payloads = [
            b'{"seq":%d,"ts":%.3f,"vol":%.3f,"flow":%.3f,"valve":"%s","batt":%.2f,'
            b'"rssi":%d}' % (s, ts, v, fl, names[vs], b, r)
            for s, v, fl, vs, b, r in zip(
                seqs.tolist(),
                vol.tolist(),
                flow.tolist(),
                valve.tolist(),
                batt.tolist(),
                rssi.tolist(),
                strict=False,
            )
        ]
        topics = self.fleet.meter_topics
        tr = self.transport
        at = time.time()
        for h, p in zip(due.tolist(), payloads, strict=False):
            tr.publish(METER, h, topics[h], p)
        self.seq[due] = (seqs + 1) % protocol.U32
        self.readings_sent[due] += 1
        self.truth.meters_published(due, t, overflow, at)
        interval = np.where(overflow, self.opts.alarm_interval_s, self.opts.interval_s)
        self.meter_due[due] = now + interval
        if self.opts.chaos:
            self._chaos(METER, due, payloads, ts)
        return len(due)

    def _event(self, kind: int, i: int, t: float, body: bytes) -> None:
        g = i + (self.fleet.households if kind == DETECTOR else 0)
        dev = (self.fleet.detector_ids if kind == DETECTOR else self.fleet.meter_ids)[i]
        payload = b'{"seq":%d,"ts":%.3f%s}' % (self.seq[g], t, body)
        self.seq[g] = (self.seq[g] + 1) % protocol.U32
        self.transport.publish(
            kind, i, protocol.topic(dev, "event", self.fleet.prefix).encode(), payload
        )

    def _chaos(self, kind: int, due: np.ndarray, payloads: list[bytes], t: float) -> None:
        n = int(self.rng.binomial(len(due), self.opts.chaos))
        for _ in range(n):
            j = int(self.rng.integers(len(due)))
            i = int(due[j])
            is_meter = kind == METER
            g = i + (0 if is_meter else self.fleet.households)
            topics = self.fleet.meter_topics if is_meter else self.fleet.detector_topics
            c = ch.choose(self.rng, self.per_device, is_meter)
            tr = self.transport
            if c is ch.Chaos.UNKNOWN_DEVICE:
                ghost = f"ghost-{next(self._ghosts)}"
                tr.ghost_link().publish(
                    protocol.topic(ghost, "telemetry", self.fleet.prefix).encode(),
                    ch.bad_payload(c, False, 1, t, self.rng),
                )
            elif c in ch.PAYLOAD_KINDS:
                tr.publish(
                    kind, i, topics[i], ch.bad_payload(c, is_meter, int(self.seq[g]), t, self.rng)
                )
            elif c is ch.Chaos.SEQ_GAP:
                self.seq[g] = (self.seq[g] + int(self.rng.integers(2, 50))) % protocol.U32
            elif c is ch.Chaos.SEQ_REPEAT:
                tr.publish(kind, i, topics[i], payloads[j])
            elif c in (ch.Chaos.CLOCK_SKEW, ch.Chaos.FLOOD):
                burst = ch.FLOOD_BURST if c is ch.Chaos.FLOOD else 1
                skew = (
                    ch.SKEW_S * (1 if self.rng.random() < 0.5 else -1)
                    if c is ch.Chaos.CLOCK_SKEW
                    else 0.0
                )
                base = payloads[j]
                ts_at = base.index(b',"ts":')
                rest = base[base.index(b",", ts_at + 1) :]
                for k in range(burst):
                    p = b'{"seq":%d,"ts":%.3f%s' % (self.seq[g], t + skew + k * 0.001, rest)
                    tr.publish(kind, i, topics[i], p)
                    self.seq[g] = (self.seq[g] + 1) % protocol.U32
                    self.readings_sent[g] += 1
            elif c is ch.Chaos.FOREIGN_TOPIC:
                other = (i + 1) % (self.fleet.households if is_meter else self.fleet.detectors)
                p = b'{"seq":%d,"ts":%.3f,"ch4":1.0,"fault":0}' % (4_000_000_000, t)
                tr.link_for(kind, i).publish(topics[other], p)
            self.truth.chaos_sent(c.value, ch.EXPECTED_REJECT[c])

    # ------------------------------------------------------------ the loop
    async def start(self) -> None:
        await self.transport.start(self._on_command)
        if self.opts.status_on_start and not self.per_device:
            f = self.fleet
            for kind, ids, models in (
                (METER, f.meter_ids, f.meter_models),
                (DETECTOR, f.detector_ids, f.detector_models),
            ):
                for i, (dev, model) in enumerate(zip(ids, models, strict=False)):
                    self.transport.publish(
                        kind,
                        i,
                        protocol.topic(dev, "status", f.prefix).encode(),
                        b'{"online":true,"fw":"1.4.2","model":"%s"}' % model.encode(),
                        retain=True,
                    )

    async def run(self, stop: asyncio.Event | None = None) -> Truth:
        """Publish until the duration ends (or `stop`), then wait for due cuts and acks."""
        stop = stop or asyncio.Event()
        opts = self.opts
        end = self.started_at + opts.duration_s
        leak_starts = sorted(
            (lk.start_wall, lk.id, lk.kind, lk.household_id) for lk in self.truth.leaks
        )
        announced = 0
        grace_end: float | None = None
        while True:
            now = time.time()
            if stop.is_set():
                break
            if now >= end:
                if grace_end is None:
                    grace_end = now + opts.grace_s
                if (not self.truth.pending_cuts() and not self._effects) or now >= grace_end:
                    break
            t = self.clock.sim(now)
            while announced < len(leak_starts) and leak_starts[announced][0] <= now:
                _, lid, kind, hid = leak_starts[announced]
                self.on_event("leak", f"{lid}: {kind} leak starts in {hid}")
                announced += 1
            self._tamper(t)
            self.published += self._publish_detectors(now, t)
            self.published += self._publish_meters(now, t)
            while self._effects and self._effects[0][0] <= now:
                _, _, fn = heapq.heappop(self._effects)
                fn()
            for lk in self.transport.links[:8]:
                if lk.free <= 0:
                    await lk.wait_space()
            await asyncio.sleep(opts.tick_s)
        self.ended_at = time.time()
        await self.transport.wait_acked(10.0)
        self.truth.meta.update(
            {
                "ended_at": self.ended_at,
                "published": self.published,
                "mqtt_sent": self.transport.sent,
                "mqtt_acked": self.transport.acked,
            }
        )
        return self.truth

    def sent_ranges(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(device ids, first seq, last seq, readings sent) of devices that sent readings."""
        ids = self.fleet.all_device_ids()
        sent = np.flatnonzero(self.readings_sent)
        last = (self.seq - 1) % protocol.U32
        return ([ids[i] for i in sent], self.first_seq[sent], last[sent], self.readings_sent[sent])

    def summary(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "mqtt_sent": self.transport.sent,
            "mqtt_acked": self.transport.acked,
            "inflight": self.transport.inflight,
        }
