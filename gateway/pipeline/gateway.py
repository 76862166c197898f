"""The gateway's pipeline: what happens to each socket read, with no sockets and no SQL.

`Gateway.handle(messages, now)` is the whole hot path for one socket read: route and decode
every message (`ingest`), judge all readings of the read at once in the core, publish
valve-close commands at once, before any database work (`actions`), and queue the rows for
the writer (`outbox`), which acknowledges the messages to the broker after COMMIT. Instant
leaks can be cut as a read arrives, ahead of its turn (`fast_lane`); the timer's sweeps and
command deadlines are in `ticks`. The clock and the command-id source are passed in, so
tests feed `handle` directly and deterministically; gateway.service drives it for real.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from gateway.core import detection
from gateway.core.alarms import AlarmKind
from gateway.core.commands import CommandBook, ValveCommand
from gateway.core.detection import Effects, FleetState
from gateway.core.events import apply_events
from gateway.core.registry import Registry
from gateway.pipeline.actions import Actions
from gateway.pipeline.events import EventActions
from gateway.pipeline.fast_lane import FastLane, at_least
from gateway.pipeline.ingest import DET_DTYPES, MET_DTYPES, Ingest, Read, Router
from gateway.pipeline.metrics import Metrics
from gateway.pipeline.outbox import Outbox
from gateway.pipeline.ticks import Ticks
from gateway.protocol.packets import Message
from gateway.settings import Settings
from gateway.storage.device_state import LatestValues
from gateway.storage.rows import Batch, concat_readings

__all__ = ["Gateway", "at_least"]

logger = logging.getLogger(__name__)


class Gateway:
    """The pipeline's state (registry, fleet state, command book, the open batch) and its
    steps, wired together. `publish` and `submit` are pointed at the broker and the writer
    by whoever runs it."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float],
        new_id: Callable[[], str],
        metrics: Metrics | None = None,
        capacity: int = 1024,
    ) -> None:
        """`capacity`: device slots allocated before the first load (the state grows)."""
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.registry = Registry()
        for model in settings.detection.models:
            self.registry.model_index(model)
        models = {
            self.registry.models[m]: settings.detection.for_model(m)
            for m in settings.detection.models
        }
        self.state = FleetState(
            capacity=capacity,
            engine=settings.detection.engine,
            thresholds=settings.detection.thresholds,
            models=models,
        )
        r = settings.response
        self.book = CommandBook(
            ack_timeout_s=r.ack_timeout_s,
            max_resends=r.max_resends,
            backoff_factor=r.backoff_factor,
        )
        # per slot, -1 until the device's first reading (an array: a Python int per device
        # would cost 36 bytes, and the hot path reads and writes it as ints)
        self.last_seq = array("q")
        self.latest = LatestValues(capacity)
        self.outbox = Outbox()
        # fast lane: detector slot -> (seq, cmd_id) of an instant leak cut ahead of its turn
        self._fast_cut: dict[int, tuple[int, str]] = {}
        self.actions = Actions(
            settings,
            self.registry,
            self.state,
            self.book,
            self.metrics,
            self.outbox,
            self._fast_cut,
            clock,
            new_id,
        )
        self.events = EventActions(
            settings, self.registry, self.state, self.book, self.outbox, self.actions
        )
        router = Router(settings.mqtt.topic_prefix, self.registry)
        self.ingest = Ingest(
            settings.detection.clock_skew_s,
            self.registry,
            self.state,
            router,
            self.last_seq,
            self.latest,
            self.metrics,
            self.outbox,
            self.actions,
            self.actions.apply,
            self.events.valve_closed,
        )
        self.fast_lane = FastLane(
            settings.detection,
            self.registry,
            self.state,
            router,
            self.last_seq,
            self.metrics,
            self._fast_cut,
            self.actions.close_valve,
        )
        self.ticks = Ticks(self.state, self.book, self.actions, self.outbox, self.events)

    # ------------------------------------------------------------------ outputs
    @property
    def publish(self) -> Callable[[str, bytes], None]:
        """Where commands go: (topic, payload), QoS 1."""
        return self.actions.publish

    @publish.setter
    def publish(self, fn: Callable[[str, bytes], None]) -> None:
        self.actions.publish = fn

    @property
    def submit(self) -> Callable[[Batch], None]:
        """Where closed batches go: the writer."""
        return self.outbox.submit

    @submit.setter
    def submit(self, fn: Callable[[Batch], None]) -> None:
        self.outbox.submit = fn

    @property
    def batch(self) -> Batch:
        """The batch being filled."""
        return self.outbox.batch

    @property
    def generation(self) -> int:
        return self.outbox.generation

    def begin_generation(self) -> int:
        """A new broker connection: what is read from now on is acknowledged on it only.
        Returns its generation."""
        self.outbox.generation += 1
        return self.outbox.generation

    @property
    def unwritten(self) -> bool:
        """The open batch holds readings or messages to acknowledge (a flush is due soon)."""
        b = self.outbox.batch
        return bool(b.rows or b.packet_ids)

    def flush(self) -> None:
        """Close the current batch and hand it to the writer."""
        self.outbox.flush()

    # ------------------------------------------------------------------ registry
    def reserve(self, n: int) -> None:
        """Room for `n` devices in all, before loading them in parts (the state's arrays
        are then sized once, not grown by half again and again)."""
        self.registry.reserve(n)
        self.state.ensure_capacity(n)
        self.latest.ensure(n)

    def load_devices(self, rows: Sequence[tuple]) -> int:
        """Devices new to the registry (rows of storage.registry_sql.LOAD_SQL, all or a part
        of them: meters come first); returns how many."""
        cols = self.registry.add_rows(rows)
        n = len(cols["kinds"])
        if n:
            self.state.add_devices(last_seen=np.full(n, self.clock()), **cols)
            self.last_seq.extend(array("q", [-1]) * n)
            self.latest.ensure(len(self.registry))
        self.metrics.devices.set(len(self.registry))
        return n

    def restore(self, open_alarms: list[tuple[str, str]], open_commands: list[ValveCommand]) -> int:
        """Alarms and commands that were open before a restart stay open, not raised again.
        Commands to meters no longer provisioned are dropped; returns the commands kept."""
        slots, kinds = [], []
        for device_id, kind in open_alarms:
            slot = self.registry.index.get(device_id)
            if slot is not None and kind.upper() in AlarmKind.__members__:
                slots.append(slot)
                kinds.append(int(AlarmKind[kind.upper()]))
        if slots:
            self.state.set_active(np.array(slots, np.int32), np.array(kinds, np.uint8))
        kept = 0
        for cmd in open_commands:
            if cmd.meter_id in self.registry.index:
                self.book.add(cmd)
                kept += 1
        return kept

    @property
    def device_ids(self) -> Sequence[str]:
        """Every device the registry holds, by slot (a StrColumn: index, len, iterate)."""
        return self.registry.ids

    # ------------------------------------------------------------------ commands
    def knows_command(self, cmd_id: str) -> bool:
        """The command is in the book, open or finished (an operator's, picked up already)."""
        return cmd_id in self.book.open or cmd_id in self.book.finished

    @property
    def open_commands(self) -> int:
        return len(self.book.open)

    def operator_command(self, cmd: ValveCommand, now: float) -> ValveCommand | None:
        """An operator's command: sent now, or attached to the same action in flight for
        that meter (that one is returned), so one meter never has two closes in flight."""
        return self.actions.operator_command(cmd, now)

    def close_valve(
        self, meter_id: str, trigger: str, cause: AlarmKind, now: float
    ) -> ValveCommand | None:
        """Issue and send a close, unless one is already on its way (returns None then)."""
        return self.actions.close_valve(meter_id, trigger, cause, now)

    # ------------------------------------------------------------------ fast lane
    def triage(self, messages: list[Message], now: float | None = None) -> int:
        """Cut the gas at once for instant leaks, before the readings queued ahead of them
        (see gateway.pipeline.fast_lane). Called as messages are read, while earlier ones
        may still wait for `handle`. Returns the number of valves cut here."""
        return self.fast_lane.triage(messages, self.clock() if now is None else now)

    def instant_marks(self, data: bytes) -> list[int]:
        """Where a socket read holds a ch4 value at or above the lowest instant-leak level
        (for `PublishFraming`). Usually empty."""
        return self.fast_lane.instant_marks(data)

    # ------------------------------------------------------------------ hot path
    def handle(self, messages: list[Message], now: float | None = None) -> None:
        """One socket read: decode, detect, command, and queue for the writer."""
        now = self.clock() if now is None else now
        self.actions.finish_apply()
        batch = self.outbox.batch
        read = self.ingest.read(messages, now)
        det, met = read.detectors, read.meters
        self.metrics.readings.inc(len(det.slot) + len(met.slot))
        if det.time or met.time:
            self.metrics.ingest_lag.observe(
                max(0.0, now - min(min(det.time, default=now), min(met.time, default=now)))
            )
        for e in self._judge(read, batch, now):
            if len(e):
                self.actions.apply(e, now)
        if read.events:  # after the readings of the read: a leak they raised is not doubled
            slots, codes, ts = zip(*read.events, strict=True)
            self.events.apply(
                apply_events(
                    self.state,
                    self.events.watch,
                    np.array(slots, np.int32),
                    np.array(codes, np.uint8),
                    np.array(ts, np.float64),
                    now,
                    self.settings.response.local_cut_confirm_s,
                ),
                now,
            )
        if det.slot and self.events.watch.pending:  # the platform's own rule, not the timer
            self.events.rule_fired(det.slot, det.values["ch4"], det.evaluate, now)
        if self._fast_cut:
            self.fast_lane.settle()
        if batch.rows >= self.settings.db.batch_rows:
            self.outbox.flush()

    def _judge(self, read: Read, batch: Batch, now: float) -> list[Effects]:
        """The core's verdict on a read's fresh readings, which join the batch's readings."""
        effects: list[Effects] = []
        if read.seen:
            effects.append(detection.mark_seen(self.state, np.array(read.seen, np.int32), now))
        d = read.detectors.readings(DET_DTYPES)
        if d is not None:
            idx = np.flatnonzero(read.detectors.evaluate)
            effects.append(
                detection.evaluate_detectors(
                    self.state,
                    d.slot[idx],
                    d.values["ch4"][idx],
                    d.values["fault"][idx],
                    d.time[idx],
                    now,
                )
            )
            self.latest.record_detectors(
                d.slot[idx], d.time[idx], d.seq[idx], d.values["ch4"][idx], d.values["fault"][idx]
            )
            batch.detector = concat_readings([batch.detector, d])
        m = read.meters.readings(MET_DTYPES)
        if m is not None:
            idx = np.flatnonzero(read.meters.evaluate)
            effects.append(
                detection.evaluate_meters(
                    self.state,
                    m.slot[idx],
                    m.values["flow"][idx],
                    m.values["vol"][idx],
                    m.values["valve"][idx],
                    m.values["batt"][idx],
                    m.time[idx],
                    now,
                )
            )
            self.latest.record_meters(
                m.slot[idx], m.time[idx], m.seq[idx], {k: v[idx] for k, v in m.values.items()}
            )
            batch.meter = concat_readings([batch.meter, m])
        return effects

    # ------------------------------------------------------------------ effects
    def apply(self, e: Effects, now: float) -> None:
        """Turn the core's effects into commands (now) and rows (for the writer)."""
        self.actions.apply(e, now)

    @property
    def applying(self) -> bool:
        """A sweep's effects are half applied: judging a reading now must finish them first."""
        return self.actions.applying

    def finish_apply(self) -> None:
        """Apply the rest of a half-applied sweep (see Actions.finish_apply)."""
        self.actions.finish_apply()

    # ------------------------------------------------------------------ periodic
    def tick(self, now: float | None = None) -> None:
        """Every sweep interval: offline and age rules, command timeouts (all at once)."""
        for _ in self.tick_in_parts(now):
            pass

    def tick_in_parts(self, now: float | None = None) -> Iterator[bool]:
        """`tick`, pausing (yield) between ranges of devices and inside a range's effects,
        so the event loop can read and cut valves in between (see gateway.pipeline.ticks).
        Yields True while a range's effects are half applied (`applying`)."""
        return self.ticks.tick_in_parts(self.clock() if now is None else now)
