"""Reading one socket read's messages: each routed by its topic to its device and channel,
decoded and checked, and gathered for judging.

Telemetry becomes columns (`Columns`, one per device kind) that the core judges as arrays;
events and rejects become rows in the outbox; a meter's ack goes to the command book
(`Actions.acked`); a status message marks the device seen or offline at once. Sequence
numbers tell fresh readings from replays (refused) and broker redeliveries (stored again,
which is idempotent, but not judged again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway import protocol
from gateway.core import detection
from gateway.core.alarms import VALVE_CODES, DeviceKind
from gateway.core.detection import Effects, FleetState
from gateway.core.events import ALLOWED_KINDS, EVENT_CODES, EventCode
from gateway.core.registry import KIND_METER, Registry
from gateway.pipeline.actions import Actions
from gateway.pipeline.metrics import Metrics
from gateway.pipeline.outbox import Outbox, ts_of
from gateway.protocol import Channel, Rejected, RejectReason
from gateway.protocol.packets import Message
from gateway.storage.device_state import LatestValues
from gateway.storage.rows import Readings

logger = logging.getLogger(__name__)

U32 = 2**32  # device sequence numbers wrap here
FLAG_CLOCK_SKEW = 1  # a reading stored at platform time: its device clock was off
DET_DTYPES = {"ch4": np.float32, "fault": np.uint32}
_CHANNELS = {c.value: c for c in Channel}
MET_DTYPES = {
    "vol": np.float64,
    "flow": np.float32,
    "valve": np.uint8,
    "batt": np.float32,
    "rssi": np.int16,
}


class Columns:
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
        return Readings(
            np.array(self.slot, np.int32),
            np.array(self.seq, np.int64),
            np.array(self.time, np.float64),
            np.array(self.received, np.float64),
            np.array(self.flags, np.int16),
            {k: np.array(v, dtypes[k]) for k, v in self.values.items()},
        )


@dataclass
class Read:
    """What one socket read brought for judging: readings by kind, and the slots of devices
    heard from otherwise (acks, events: they are alive)."""

    detectors: Columns = field(default_factory=lambda: Columns(("ch4", "fault")))
    meters: Columns = field(
        default_factory=lambda: Columns(("vol", "flow", "valve", "batt", "rssi"))
    )
    seen: list[int] = field(default_factory=list)
    events: list[tuple[int, int, float]] = field(default_factory=list)  # (slot, EventCode, ts)


class Router:
    """Topic -> (parsed topic, slot) of a known device.

    No table per topic (half a million devices would cost a Python object each): the
    device id is split off the topic and looked up in the registry's index, a few
    hundred ns; anything not found that way is parsed in full for the precise reason."""

    def __init__(self, prefix: str, registry: Registry) -> None:
        self.prefix = prefix
        self.registry = registry
        self._head = prefix + "/"
        self._skip = len(self._head)
        self._slot_of = registry.index.get  # the index object lives as long as the registry

    def route(self, topic_name: str) -> tuple[protocol.Topic, int]:
        device_id, channel, slot = self.lookup(topic_name)
        return protocol.Topic(device_id, channel), slot

    def lookup(self, topic_name: str) -> tuple[str, Channel, int]:
        """`route` as (device id, channel, slot): the hot path's form, no Topic made."""
        if topic_name.startswith(self._head):
            device_id, _, channel = topic_name[self._skip :].rpartition("/")
            ch = _CHANNELS.get(channel)
            if ch is not None:
                slot = self._slot_of(device_id)
                if slot is not None:
                    return device_id, ch, slot
        topic, slot = self.parse(topic_name)
        return topic.device_id, topic.channel, slot

    def parse(self, topic_name: str) -> tuple[protocol.Topic, int]:
        """Parse a topic and find its device's slot; raises Rejected with the precise reason."""
        topic = protocol.parse_topic(topic_name, self.prefix)
        slot = self.registry.index.get(topic.device_id)
        if slot is None:
            raise Rejected(
                RejectReason.UNKNOWN_DEVICE,
                f"device {topic.device_id!r} is not provisioned",
                topic.device_id,
            )
        return topic, slot


class Ingest:
    """Routes and decodes the messages of a socket read (`read`)."""

    def __init__(
        self,
        skew_s: float,
        registry: Registry,
        state: FleetState,
        router: Router,
        last_seq: MutableSequence[int],
        latest: LatestValues,
        metrics: Metrics,
        outbox: Outbox,
        actions: Actions,
        apply: Callable[[Effects, float], None],
        valve_closed: Callable[[int], None] = lambda slot: None,
    ) -> None:
        self.skew_s = skew_s
        self.registry = registry
        self.state = state
        self.router = router
        self.last_seq = last_seq
        self.latest = latest
        self.metrics = metrics
        self.outbox = outbox
        self.actions = actions
        self.apply = apply
        self.valve_closed = valve_closed  # a meter's ack said its valve is closed
        # The cluster's log can reorder one device's messages (an edge relay resending
        # through a log election, a device moving to another edge): there a reading behind
        # its device's sequence is late, not a replay, and is stored without being judged.
        # A broker's single session keeps order, so the single gateway refuses it.
        self.late_stored = False

    def read(self, messages: list[Message], now: float) -> Read:
        """Every message routed and decoded; a bad one becomes a reject row, never an error."""
        out = Read()
        det, met, seen_other = out.detectors, out.meters, out.seen
        batch = self.outbox.batch
        skew = self.skew_s
        kinds = self.registry.kind
        last_seq = self.last_seq
        lookup = self.router.lookup
        for msg in messages:
            if msg.qos:
                batch.packet_ids.append(msg.packet_id)
            if msg.dup:
                batch.redelivered = True
            try:
                device_id, channel, slot = lookup(msg.topic)
                if channel is Channel.TELEMETRY:
                    is_meter = kinds[slot] == KIND_METER
                    reading: Any = protocol.decode(
                        protocol.MeterReading if is_meter else protocol.DetectorReading,
                        msg.payload,
                        device_id,
                    )
                    seq = reading.seq
                    last = last_seq[slot]
                    fresh = True
                    if last >= 0:
                        delta = (seq - last) % U32
                        if delta == 0 or delta > U32 // 2:
                            if not msg.dup:
                                if not self.late_stored:
                                    raise Rejected(
                                        RejectReason.SEQ_REPLAYED,
                                        f"seq {seq} after {last}",
                                        device_id,
                                    )
                                self.metrics.late.inc()
                                batch.redelivered = True  # stored idempotently
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
                    ack = protocol.decode(protocol.Ack, msg.payload, device_id)
                    self.actions.acked(device_id, ack, now)
                    if ack.ok and ack.valve == "closed":
                        self.valve_closed(slot)
                    seen_other.append(slot)
                elif channel is Channel.STATUS:
                    self._on_status(
                        device_id,
                        slot,
                        protocol.decode(protocol.Status, msg.payload, device_id),
                        msg.payload,
                        now,
                    )
                elif channel is Channel.EVENT:
                    ev = protocol.decode(protocol.DeviceEvent, msg.payload, device_id)
                    code = self._event_code(ev, kinds[slot], device_id, now)
                    batch.events.append(
                        (
                            ts_of(ev.ts),
                            device_id,
                            ev.seq,
                            ev.type,
                            msg.payload.decode(),
                            ts_of(now),
                        )
                    )
                    seen_other.append(slot)
                    out.events.append((slot, int(code), ev.ts))
                else:  # a device publishing on `cmd`: only the platform may
                    raise Rejected(
                        RejectReason.UNKNOWN_CHANNEL,
                        "devices do not publish commands",
                        device_id,
                    )
            except Rejected as rej:
                self._reject(msg, rej, now)
        return out

    def _event_code(
        self, ev: protocol.DeviceEvent, kind: int, device_id: str, now: float
    ) -> EventCode:
        """The event's code; raises Rejected for an event this kind of device cannot raise
        or one whose clock is off (an event acts at once: it is never re-dated)."""
        if ev.type == "self_test":
            code = EventCode.SELF_TEST_FAILED if ev.failed else EventCode.SELF_TEST_OK
        else:
            code = EVENT_CODES[ev.type]
        dk = DeviceKind(kind)
        if dk not in ALLOWED_KINDS[code]:
            raise Rejected(
                RejectReason.WRONG_DEVICE_KIND,
                f"a {dk.name.lower()} does not raise {ev.type}",
                device_id,
            )
        if abs(ev.ts - now) > self.skew_s:
            self.metrics.clock_skew.inc()
            raise Rejected(
                RejectReason.CLOCK_SKEW,
                f"event ts {ev.ts} is {ev.ts - now:+.0f} s from the platform clock",
                device_id,
            )
        return code

    def _reject(self, msg: Message, rej: Rejected, now: float) -> None:
        self.metrics.rejects.labels(rej.reason.value).inc()
        logger.info(
            "reject reason=%s device=%s topic=%s detail=%s",
            rej.reason,
            rej.device_id,
            msg.topic[:200],
            rej.detail[:200],
        )
        self.outbox.batch.rejects.append(
            (
                ts_of(now),
                rej.device_id,
                msg.topic[:256],
                rej.reason.value,
                rej.detail[:500],
                msg.payload[:256],
            )
        )

    def _on_status(
        self, device_id: str, slot: int, status: protocol.Status, raw: bytes, now: float
    ) -> None:
        self.outbox.batch.events.append(
            (ts_of(now), device_id, -1, "status", raw.decode(), ts_of(now))
        )
        self.latest.record_status(slot, status.online, status.fw)
        s = np.array([slot], np.int32)
        e = (
            detection.mark_seen(self.state, s, now)
            if status.online
            else detection.mark_offline(self.state, s, now)
        )
        if len(e):
            self.apply(e, now)
