"""The gateway's pipeline: what happens to each socket read, with no sockets and no SQL.

`Gateway.handle(messages, now)` is the whole hot path for one socket read: decode and route
every message, evaluate all readings of the read at once, publish valve-close commands at
once (before any database work), then hand everything to the writer thread, which
acknowledges the messages to the broker after COMMIT. Tests feed `handle` directly; the
`run` coroutine wires it to the real broker and database.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from gateway import protocol
from gateway.core import detection, response
from gateway.core.detection import AlarmKind, Effects, FleetState
from gateway.core.registry import KIND_METER, Registry, rows_to_registry_input
from gateway.core.response import CommandBook, CommandState, ValveCommand
from gateway.pipeline.metrics import Metrics
from gateway.protocol import Channel, Rejected, RejectReason
from gateway.protocol.packets import Message
from gateway.settings import Settings
from gateway.storage.device_state import LatestValues
from gateway.storage.rows import (
    AlarmRow,
    Batch,
    NotificationRow,
    Readings,
    WorkOrderRow,
    concat_readings,
)

logger = logging.getLogger(__name__)

U32 = 2**32
VALVE_CODES = {"open": 0, "closed": 1, "fault": 2}
GAS_ALARMS = frozenset({AlarmKind.PREALARM, AlarmKind.LEAK, AlarmKind.RISING})
FLAG_CLOCK_SKEW = 1
# The fast lane's prefilter: a detector reading's ch4 value, as devices write it.
_CH4 = re.compile(rb'"ch4"\s*:\s*([0-9]+(?:\.[0-9]*)?)')


def at_least(floor: float) -> re.Pattern[bytes]:
    """`_CH4`, matching only where the integer part of the value is at least `floor`'s, so
    that a C regex over a whole socket read of ordinary readings finds nothing at all.
    (A value written otherwise, `4e1` say, is not seen early; it is judged in its turn.)"""
    n = str(max(0, int(floor)))
    if n == "0":
        return _CH4
    alts = [f"[1-9][0-9]{{{len(n)},}}", n]  # more digits, or n itself
    for i, d in enumerate(n):
        if d != "9":
            alts.append(f"{n[:i]}[{int(d) + 1}-9][0-9]{{{len(n) - i - 1}}}")
    return re.compile(rb'"ch4"\s*:\s*(?=' + "|".join(alts).encode()
                      + rb')([0-9]+(?:\.[0-9]*)?)')
_LEAK_BIT = 1 << AlarmKind.LEAK


class _Columns:
    """Readings of one kind, gathered per message into lists, turned into arrays once."""

    __slots__ = ("evaluate", "flags", "received", "seq", "slot", "time", "values")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.slot: list[int] = []
        self.seq: list[int] = []
        self.time: list[float] = []
        self.received: list[float] = []
        self.flags: list[int] = []
        self.values: dict[str, list[Any]] = {n: [] for n in names}
        self.evaluate: list[bool] = []  # False for redelivered readings (already judged)

    def readings(self, dtypes: dict[str, Any]) -> Readings | None:
        if not self.slot:
            return None
        return Readings(np.array(self.slot, np.int32), np.array(self.seq, np.int64),
                        np.array(self.time, np.float64), np.array(self.received, np.float64),
                        np.array(self.flags, np.int16),
                        {k: np.array(v, dtypes[k]) for k, v in self.values.items()})


_COMMAND_FIELDS = tuple(ValveCommand.__dataclass_fields__)
DET_DTYPES = {"ch4": np.float32, "fault": np.uint32}
MET_DTYPES = {"vol": np.float64, "flow": np.float32, "valve": np.uint8, "batt": np.float32,
              "rssi": np.int16}


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.prefix = settings.mqtt.topic_prefix
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.registry = Registry()
        for model in settings.detection.models:
            self.registry.model_index(model)
        models = {self.registry.models[m]: settings.detection.for_model(m)
                  for m in settings.detection.models}
        self.state = FleetState(capacity=1024, thresholds=settings.detection.thresholds,
                                models=models)
        r = settings.response
        self.book = CommandBook(ack_timeout_s=r.ack_timeout_s, max_resends=r.max_resends,
                                backoff_factor=r.backoff_factor)
        self.last_seq: list[int] = []
        self.batch = Batch()
        self.submit: Callable[[Batch], None] = lambda b: None  # set by run()
        self.publish: Callable[[str, bytes], None] = lambda t, p: None  # set by run()
        self.generation = 0
        self._recent_gas: deque[tuple[float, str, str]] = deque()  # (ts, building, household)
        self.latest = LatestValues()
        # topic -> (parsed topic, slot) of known devices: parsing is the costliest step
        self._routes: dict[str, tuple[protocol.Topic, int]] = {}
        # fast lane: detector slot -> (seq, cmd_id) of an instant leak cut ahead of its turn
        self._fast_cut: dict[int, tuple[int, str]] = {}
        self._applying: Iterator[None] | None = None  # a sweep's effects, half applied
        det = settings.detection
        self._instant_min = min(t.leak_instant_lel for t in
                                [det.thresholds, *(det.for_model(m) for m in det.models)])
        self._instant_re = at_least(self._instant_min)

    # ------------------------------------------------------------------ registry
    def load_devices(self, rows: list[tuple]) -> int:
        devices, households = rows_to_registry_input(rows)
        cols = self.registry.add(devices, households)
        n = len(cols["kinds"])
        if n:
            self.state.add_devices(last_seen=np.full(n, self.clock()), **cols)
            self.last_seq.extend([-1] * n)
            self.latest.ensure(len(self.registry))
        self.metrics.devices.set(len(self.registry))
        return n

    def restore(self, open_alarms: list[tuple[str, str]], open_commands: list[ValveCommand]) -> None:
        """Alarms and commands that were open before a restart stay open, not raised again."""
        slots, kinds = [], []
        for device_id, kind in open_alarms:
            slot = self.registry.index.get(device_id)
            if slot is not None and kind.upper() in AlarmKind.__members__:
                slots.append(slot)
                kinds.append(int(AlarmKind[kind.upper()]))
        if slots:
            self.state.set_active(np.array(slots, np.int32), np.array(kinds, np.uint8))
        for cmd in open_commands:
            self.book.add(cmd)

    # ------------------------------------------------------------------ fast lane
    def triage(self, messages: list[Message], now: float | None = None) -> int:
        """Cut the gas at once for instant leaks, before the readings queued ahead of them.

        Called as messages are read, while earlier ones may still wait for `handle`: a
        detector reading at or above its model's leak_instant_lel is a leak on its own (no
        history needed), so its valve close need not wait its turn. Only fresh, valid
        readings of a provisioned detector with a household meter and no open LEAK count.
        `handle` later judges the same reading in order and raises the alarm, work order
        and notice as usual; the close it asks for is the one already sent. Returns the
        number of valves cut here.
        """
        now = self.clock() if now is None else now
        cut = 0
        floor = self._instant_min
        search = _CH4.search
        for msg in messages:
            m = search(msg.payload)
            if m is not None and float(m.group(1)) >= floor:
                cut += self._fast_cut_for(msg, now)
        return cut

    def instant_marks(self, data: bytes) -> list[int]:
        """Where a socket read holds a ch4 value at or above the lowest instant-leak level
        (a C regex over the read; for `PublishFraming`, which offers only the framed
        PUBLISHes whose payload holds one, and `triage` then decodes each as its own
        topic's reading). Usually empty."""
        floor = self._instant_min
        return [m.start() for m in self._instant_re.finditer(data)
                if float(m.group(1)) >= floor]

    def _fast_cut_for(self, msg: Message, now: float) -> int:
        try:
            topic, slot = self._routes.get(msg.topic) or self._route(msg.topic)
            if topic.channel is not Channel.TELEMETRY or self.registry.kind[slot] == KIND_METER:
                return 0
            reading = protocol.decode(protocol.DetectorReading, msg.payload, topic.device_id)
        except Rejected:
            return 0  # `handle` rejects it with its reason
        last = self.last_seq[slot]
        if last >= 0 and not 0 < (reading.seq - last) % U32 < U32 // 2:
            return 0  # not fresh: a replay or redelivery
        state = self.state
        meter = int(state.meter_slot[slot])
        if (meter < 0 or slot in self._fast_cut or int(state.active[slot]) & _LEAK_BIT
                or reading.ch4 < state.thresholds(int(state.model[slot])).leak_instant_lel):
            return 0
        cmd = self.close_valve(self.registry.ids[meter], topic.device_id, AlarmKind.LEAK, now)
        if cmd is None:
            return 0  # a close is already on its way
        self._fast_cut[slot] = (reading.seq, cmd.cmd_id)
        self.metrics.fast_lane.inc()
        return 1

    def _route(self, topic_name: str) -> tuple[protocol.Topic, int]:
        """Parse a topic and find its device's slot (cached: parsing is the costly step);
        raises Rejected with the precise reason."""
        topic = protocol.parse_topic(topic_name, self.prefix)
        slot = self.registry.index.get(topic.device_id)
        if slot is None:
            raise Rejected(RejectReason.UNKNOWN_DEVICE,
                           f"device {topic.device_id!r} is not provisioned", topic.device_id)
        route = self._routes[topic_name] = (topic, slot)
        return route

    def _settle_fast_cuts(self) -> None:
        """Forget fast cuts whose reading `handle` has now judged in order."""
        last_seq = self.last_seq
        for slot, (seq, _) in list(self._fast_cut.items()):
            if (last_seq[slot] - seq) % U32 < U32 // 2:
                del self._fast_cut[slot]

    # ------------------------------------------------------------------ hot path
    def handle(self, messages: list[Message], now: float | None = None) -> None:
        """One socket read: decode, detect, command, and queue for the writer."""
        now = self.clock() if now is None else now
        self.finish_apply()
        det = _Columns(("ch4", "fault"))
        met = _Columns(("vol", "flow", "valve", "batt", "rssi"))
        batch = self.batch
        skew = self.settings.detection.clock_skew_s
        kinds = self.registry.kind
        last_seq = self.last_seq
        routes = self._routes
        seen_other: list[int] = []
        for msg in messages:
            if msg.qos:
                batch.packet_ids.append(msg.packet_id)
            if msg.dup:
                batch.redelivered = True
            try:
                topic, slot = routes.get(msg.topic) or self._route(msg.topic)
                channel = topic.channel
                if channel is Channel.TELEMETRY:
                    is_meter = kinds[slot] == KIND_METER
                    reading: Any = protocol.decode(
                        protocol.MeterReading if is_meter else protocol.DetectorReading,
                        msg.payload, topic.device_id)
                    seq = reading.seq
                    last = last_seq[slot]
                    fresh = True
                    if last >= 0:
                        delta = (seq - last) % U32
                        if delta == 0 or delta > U32 // 2:
                            if not msg.dup:
                                raise Rejected(RejectReason.SEQ_REPLAYED,
                                               f"seq {seq} after {last}", topic.device_id)
                            fresh = False  # a redelivery: store (idempotent), judge no more
                        elif delta > 1:
                            self.metrics.seq_gaps.inc(delta - 1)
                    if fresh:
                        last_seq[slot] = seq
                    ts = reading.ts
                    flags = 0
                    if abs(ts - now) > skew:
                        self.metrics.clock_skew.inc()
                        ts, flags = now, FLAG_CLOCK_SKEW
                    cols = met if is_meter else det
                    cols.slot.append(slot)
                    cols.seq.append(seq)
                    cols.time.append(ts)
                    cols.received.append(now)
                    cols.flags.append(flags)
                    cols.evaluate.append(fresh)
                    v = cols.values
                    if is_meter:
                        v["vol"].append(reading.vol)
                        v["flow"].append(reading.flow)
                        v["valve"].append(VALVE_CODES[reading.valve])
                        v["batt"].append(reading.batt)
                        v["rssi"].append(reading.rssi)
                    else:
                        v["ch4"].append(reading.ch4)
                        v["fault"].append(reading.fault)
                elif channel is Channel.ACK:
                    self._on_ack(topic.device_id, slot,
                                 protocol.decode(protocol.Ack, msg.payload, topic.device_id), now)
                    seen_other.append(slot)
                elif channel is Channel.STATUS:
                    self._on_status(topic.device_id, slot,
                                    protocol.decode(protocol.Status, msg.payload, topic.device_id),
                                    msg.payload, now)
                elif channel is Channel.EVENT:
                    ev = protocol.decode(protocol.DeviceEvent, msg.payload, topic.device_id)
                    batch.events.append((ts_of(ev.ts if abs(ev.ts - now) <= skew else now),
                                         topic.device_id, ev.seq, ev.type,
                                         msg.payload.decode(), ts_of(now)))
                    seen_other.append(slot)
                else:  # a device publishing on `cmd`: only the platform may
                    raise Rejected(RejectReason.UNKNOWN_CHANNEL,
                                   "devices do not publish commands", topic.device_id)
            except Rejected as rej:
                self._reject(msg, rej, now)
        self.metrics.readings.inc(len(det.slot) + len(met.slot))
        if det.time or met.time:
            self.metrics.ingest_lag.observe(max(0.0, now - min(min(det.time, default=now),
                                                               min(met.time, default=now))))
        effects: list[Effects] = []
        if seen_other:
            effects.append(detection.mark_seen(self.state, np.array(seen_other, np.int32), now))
        d = det.readings(DET_DTYPES)
        if d is not None:
            idx = np.flatnonzero(det.evaluate)
            effects.append(detection.evaluate_detectors(
                self.state, d.slot[idx], d.values["ch4"][idx], d.values["fault"][idx],
                d.time[idx], now))
            self.latest.record_detectors(d.slot[idx], d.time[idx], d.seq[idx],
                                         d.values["ch4"][idx], d.values["fault"][idx])
            batch.detector = concat_readings([batch.detector, d])
        m = met.readings(MET_DTYPES)
        if m is not None:
            idx = np.flatnonzero(met.evaluate)
            effects.append(detection.evaluate_meters(
                self.state, m.slot[idx], m.values["flow"][idx], m.values["vol"][idx],
                m.values["valve"][idx], m.values["batt"][idx], m.time[idx], now))
            self.latest.record_meters(m.slot[idx], m.time[idx], m.seq[idx],
                                      {k: v[idx] for k, v in m.values.items()})
            batch.meter = concat_readings([batch.meter, m])
        for e in effects:
            if len(e):
                self.apply(e, now)
        if self._fast_cut:
            self._settle_fast_cuts()
        if batch.rows >= self.settings.db.batch_rows:
            self.flush()

    def _reject(self, msg: Message, rej: Rejected, now: float) -> None:
        self.metrics.rejects.labels(rej.reason.value).inc()
        logger.info("reject reason=%s device=%s topic=%s detail=%s", rej.reason, rej.device_id,
                    msg.topic[:200], rej.detail[:200])
        self.batch.rejects.append((ts_of(now), rej.device_id, msg.topic[:256], rej.reason.value,
                                   rej.detail[:500], msg.payload[:256]))

    def _on_status(self, device_id: str, slot: int, status: protocol.Status, raw: bytes,
                   now: float) -> None:
        self.batch.events.append((ts_of(now), device_id, -1, "status", raw.decode(), ts_of(now)))
        self.latest.record_status(slot, status.online, status.fw)
        s = np.array([slot], np.int32)
        e = (detection.mark_seen(self.state, s, now) if status.online
             else detection.mark_offline(self.state, s, now))
        if len(e):
            self.apply(e, now)

    def _on_ack(self, meter_id: str, slot: int, ack: protocol.Ack, now: float) -> None:
        try:
            cmd, first = self.book.on_ack(meter_id, ack.cmd_id, ack.ok, ack.valve, ack.error, now)
        except response.UnknownCommand:
            raise Rejected(RejectReason.UNKNOWN_COMMAND,
                           f"no command {ack.cmd_id!r} for this device", meter_id) from None
        if not first:
            return
        self.metrics.commands.labels(cmd.state.value).inc()
        if cmd.sent_at is not None:
            self.metrics.ack_latency.observe(max(0.0, now - cmd.sent_at))
        self._record_command(cmd, "command.acked" if ack.ok else "command.failed",
                             {"ok": ack.ok, "valve": ack.valve, "error": ack.error})
        if not ack.ok:
            self._escalate(cmd, now, f"device refused: {ack.error}")

    # ------------------------------------------------------------------ effects
    def apply(self, e: Effects, now: float) -> None:
        """Turn the core's effects into commands (now) and rows (for the writer)."""
        self.finish_apply()  # what a sweep left half applied comes first
        for _ in self.apply_in_parts(e, now):
            pass

    @property
    def applying(self) -> bool:
        """A sweep's effects are half applied: judging a reading now must finish them first."""
        return self._applying is not None

    def finish_apply(self) -> None:
        """Apply the rest of a half-applied sweep, so that what a reading then clears was
        raised (rows in order: an offline alarm is raised before the device's return clears
        it)."""
        if self._applying is not None:
            parts, self._applying = self._applying, None
            for _ in parts:
                pass

    def apply_in_parts(self, e: Effects, now: float) -> Iterator[None]:
        """`apply`, pausing (yield) after every APPLY_STEP alarms raised or cleared; every
        valve close goes out in the first part. A mass sweep (thousands of meters past
        their service life on the first start, a district offline) raises an alarm, a work
        order and a notice for each: measured 36 ms in one go for one 16 k-device range."""
        ids = self.registry.ids
        budget = APPLY_STEP
        # 1. valve closes first: nothing else may delay them
        for i in range(len(e.close_valve_meter_slot)):
            meter_id = ids[int(e.close_valve_meter_slot[i])]
            trigger_slot = int(e.close_trigger_slot[i])
            cause = AlarmKind(int(e.close_cause[i]))
            fast = self._fast_cut.pop(trigger_slot, None) if cause is AlarmKind.LEAK else None
            if fast is not None:  # the fast lane cut it already: link that command instead
                cmd = self.book.open.get(fast[1]) or self.book.finished.get(fast[1])
                if cmd is not None:
                    self._snapshot_command(cmd)
                continue
            self.close_valve(meter_id, ids[trigger_slot], cause, now)
        # 2. alarms raised
        for i in range(len(e.raised_slot)):
            if budget == 0:
                yield
                budget = APPLY_STEP
            budget -= 1
            self._raise(int(e.raised_slot[i]), AlarmKind(int(e.raised_kind[i])),
                        float(e.raised_value[i]), float(e.raised_ts[i]),
                        bool(e.raised_flow_at_meter[i]), now)
        for i in range(len(e.cleared_slot)):
            if budget == 0:
                yield
                budget = APPLY_STEP
            budget -= 1
            device_id = ids[int(e.cleared_slot[i])]
            kind = response.kind_name(AlarmKind(int(e.cleared_kind[i])))
            self.batch.cleared.append((device_id, kind, float(e.cleared_ts[i])))
            self.batch.live.append({"type": "alarm.cleared", "device_id": device_id,
                                    "kind": kind})
            self.metrics.alarms_cleared.labels(kind).inc()

    def close_valve(self, meter_id: str, trigger: str, cause: AlarmKind,
                    now: float) -> ValveCommand | None:
        """Issue and send a close, unless one is already on its way (returns None then)."""
        household = self.registry.household_of[self.registry.index[meter_id]]
        cmd = self.book.request(ValveCommand(
            cmd_id=f"gw-{uuid.uuid4().hex[:20]}", meter_id=meter_id, household_id=household,
            action="valve_close", reason=response.kind_name(cause), requested_by="gateway",
            issued_at=now, trigger_device=trigger, cause=response.kind_name(cause)))
        if cmd is None:
            return None  # a close is already on its way to this meter
        self._send(cmd, now)
        self.metrics.alarm_latency.observe(max(0.0, self.clock() - now))
        self.metrics.commands.labels("issued").inc()
        self._record_command(cmd, "command.issued", {"trigger": trigger,
                                                     "cause": response.kind_name(cause)})
        return cmd

    def operator_command(self, cmd: ValveCommand, now: float) -> ValveCommand | None:
        """A command an operator issued through the API: sent now, unless the same action
        is already in flight for that meter; then it attaches to that one (returned), so
        one meter never has two closes in flight."""
        current = self.book.open_for(cmd.meter_id, cmd.action)
        if current is not None:
            self.batch.audit.append((cmd.requested_by, "command.attached", "valve_command",
                                     cmd.cmd_id, {"meter": cmd.meter_id,
                                                  "household": cmd.household_id,
                                                  "attached_to": current.cmd_id}))
            return current
        self.book.add(cmd)
        self._send(cmd, now)
        self._record_command(cmd, "command.sent", {"requested_by": cmd.requested_by})
        return None

    def _send(self, cmd: ValveCommand, now: float) -> None:
        payload = protocol.encode(protocol.Command(cmd.cmd_id, cmd.action, cmd.reason,  # type: ignore[arg-type]
                                                   round(now, 3)))
        self.publish(protocol.topic(cmd.meter_id, Channel.CMD, self.prefix), payload)
        self.book.mark_sent(cmd.cmd_id, self.clock())

    def _snapshot_command(self, cmd: ValveCommand) -> None:
        snap = {f: getattr(cmd, f) for f in _COMMAND_FIELDS}
        snap["state"] = cmd.state.value
        self.batch.commands.append(snap)

    def _record_command(self, cmd: ValveCommand, action: str, details: dict[str, Any]) -> None:
        self._snapshot_command(cmd)
        self.batch.audit.append((cmd.requested_by if action == "command.issued" else "gateway",
                                 action, "valve_command", cmd.cmd_id,
                                 {"meter": cmd.meter_id, "household": cmd.household_id,
                                  "attempts": cmd.attempts, **details}))
        self.batch.live.append({"type": "command.state", "cmd_id": cmd.cmd_id,
                                "meter_id": cmd.meter_id, "household_id": cmd.household_id,
                                "action": cmd.action, "state": cmd.state.value,
                                "attempts": cmd.attempts})

    def _raise(self, slot: int, kind: AlarmKind, value: float, ts: float, flow_at_meter: bool,
               now: float) -> None:
        device_id = self.registry.ids[slot]
        household_id = self.registry.household_of[slot]
        hh = self.registry.households[household_id]
        policy = response.POLICIES[kind]
        name = response.kind_name(kind)
        incident = False
        if kind in GAS_ALARMS:
            incident = self._building_incident(hh.building, household_id, now)
        self.metrics.alarms.labels(name).inc()
        evidence = [{"device": device_id, "value": round(value, 3), "ts": ts}]
        self.batch.alarms.append(AlarmRow(device_id, household_id, name, policy.severity, value,
                                          ts, flow_at_meter if kind in GAS_ALARMS else None,
                                          evidence, hh.building, hh.community, incident))
        self.batch.live.append({"type": "alarm.raised", "device_id": device_id,
                                "household_id": household_id, "kind": name,
                                "severity": policy.severity, "value": round(value, 3),
                                "incident": incident})
        key = (device_id, name)
        r = self.settings.response
        if policy.cause is not None:
            opened = ts_of(now)
            arrive, resolve = response.sla_deadlines(policy.priority, opened,
                                                     r.emergency_arrival_s, r.routine_repair_s)
            self.batch.work_orders.append(WorkOrderRow(
                household_id, policy.cause, policy.priority.value, policy.title, now, arrive,
                resolve, key, f"{name} on {device_id}: {value:.2f}"))
        if policy.notice is not None:
            self.batch.notifications.append(NotificationRow(
                household_id, name, r.notify_channel, hh.owner_phone,
                policy.notice.format(address=hh.address),
                f"{household_id}:{name}:{device_id}:{int(ts)}", key))

    def _building_incident(self, building: str, household: str, now: float) -> bool:
        window = self.settings.detection.incident_window_s
        recent = self._recent_gas
        while recent and recent[0][0] < now - window:
            recent.popleft()
        recent.append((now, building, household))
        same = [(t, h) for t, b, h in recent if b == building]
        if len(same) < 2:
            return False
        codes = {h: i for i, h in enumerate({h for _, h in same})}
        keys = detection.group_incidents(np.zeros(len(same), np.int64),
                                         np.array([codes[h] for _, h in same]),
                                         np.array([t for t, _ in same]), window)
        return bool(keys[-1] >= 0)

    def _escalate(self, cmd: ValveCommand, now: float, why: str) -> None:
        self.metrics.commands.labels("escalated").inc()
        logger.warning("escalate cmd_id=%s meter=%s household=%s why=%s", cmd.cmd_id,
                       cmd.meter_id, cmd.household_id, why)
        r = self.settings.response
        p = response.ESCALATION
        arrive, resolve = response.sla_deadlines(p.priority, ts_of(now), r.emergency_arrival_s,
                                                 r.routine_repair_s)
        self.batch.work_orders.append(WorkOrderRow(
            cmd.household_id, p.cause or "valve_escalation", p.priority.value, p.title, now,
            arrive, resolve, None, f"{cmd.action} {cmd.cmd_id} to {cmd.meter_id}: {why}"))
        self.batch.live.append({"type": "command.escalated", "cmd_id": cmd.cmd_id,
                                "meter_id": cmd.meter_id, "household_id": cmd.household_id,
                                "why": why})

    # ------------------------------------------------------------------ periodic
    def tick(self, now: float | None = None) -> None:
        """Every sweep interval: offline and age rules, command timeouts (all at once)."""
        for _ in self.tick_in_parts(now):
            pass

    def tick_in_parts(self, now: float | None = None) -> Iterator[bool]:
        """`tick`, pausing (yield) between ranges of devices and inside a range's effects,
        so the event loop can read and cut valves in between: a mass event (a cell tower
        down, thousands of devices offline; the first start over a fleet of old meters) must
        not hold up a leak for its whole length (measured: 45 ms for one first sweep in one
        go). Yields True while a range's effects are half applied (`applying`): a reading
        judged then may clear what the sweep raised, so `handle` finishes them first, and a
        caller that wants no such wait holds judging until the next False."""
        now = self.clock() if now is None else now
        for start in range(0, self.state.n_devices, TICK_SLOTS):
            e = detection.sweep(self.state, now, start, start + TICK_SLOTS)
            if len(e):
                self.finish_apply()
                self._applying = parts = self.apply_in_parts(e, now)
                for _ in parts:  # stops early if `finish_apply` ran meanwhile
                    self._flush_if_big()
                    yield True
                self._applying = None
                self._flush_if_big()
            yield False
        for due in self.book.due(now):
            cmd = due.command
            if due.what == "resend":
                self.metrics.commands.labels("resent").inc()
                self._send(cmd, now)
                self._record_command(cmd, "command.resent", {})
            else:
                cmd.state = CommandState.ESCALATED
                self._record_command(cmd, "command.escalated", {})
                self._escalate(cmd, now, f"no ack after {cmd.attempts} attempts")

    def _flush_if_big(self) -> None:
        """A mass sweep's rows go to the writer a part at a time: one batch of thousands of
        alarms, work orders and notices took 31 ms to hand over (pickled for the writer
        process) in one go."""
        b = self.batch
        if len(b.alarms) + len(b.cleared) + len(b.work_orders) >= APPLY_STEP:
            self.flush()

    def flush(self) -> None:
        """Close the current batch and hand it to the writer."""
        b = self.batch
        if not (b.rows or b.packet_ids or b.alarms or b.cleared or b.commands or b.work_orders
                or b.notifications or b.audit or b.live):
            return
        b.generation = self.generation
        self.batch = Batch()
        self.submit(b)


def ts_of(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


TICK_SLOTS = 4_096  # devices swept (and their alarms applied) per part of a tick
APPLY_STEP = 128  # alarms raised or cleared per part of applying a sweep (~30 us each)


# ====================================================================== wiring
