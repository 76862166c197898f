"""The timer's work: every sweep interval the core's offline and age rules over the whole
fleet, then the command book's deadlines (resends, and escalation after the last one), then
detectors' local cuts the meter has not confirmed in time (closed by the platform).

A sweep goes a range of devices at a time and applies a range's effects in parts, pausing
(yielding) in between so the event loop can read and cut valves meanwhile: a mass event (a
cell tower down, thousands of devices offline; the first start over a fleet of old meters)
must not hold up a leak for its whole length (measured: 45 ms for one first sweep in one
go). A mass sweep's rows go to the writer a part at a time too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from gateway.core import detection
from gateway.core.commands import CommandBook
from gateway.core.detection import FleetState
from gateway.pipeline import actions as actions_mod
from gateway.pipeline.actions import Actions
from gateway.pipeline.events import EventActions
from gateway.pipeline.outbox import Outbox

logger = logging.getLogger(__name__)

TICK_SLOTS = 4_096  # devices swept (and their alarms applied) per part of a tick


class Ticks:
    """Sweeps in parts, then command timeouts."""

    def __init__(
        self,
        state: FleetState,
        book: CommandBook,
        actions: Actions,
        outbox: Outbox,
        events: EventActions,
    ) -> None:
        self.state = state
        self.events = events
        self.book = book
        self.actions = actions
        self.outbox = outbox

    def tick_in_parts(self, now: float) -> Iterator[bool]:
        """One tick, yielding between ranges of devices and inside a range's effects. Yields
        True while a range's effects are half applied (`Actions.applying`): a reading judged
        then may clear what the sweep raised, so `handle` finishes them first, and a caller
        that wants no such wait holds judging until the next False."""
        actions = self.actions
        for start in range(0, self.state.n_devices, TICK_SLOTS):
            e = detection.sweep(self.state, now, start, start + TICK_SLOTS)
            if len(e):
                parts = actions.begin_parts(e, now)
                for _ in parts:  # stops early if `finish_apply` ran meanwhile
                    self._flush_if_big()
                    yield True
                actions.end_parts()
                self._flush_if_big()
            yield False
        self.command_timeouts(now)
        self.events.due(now)  # detectors' cuts the meter did not confirm in time

    def command_timeouts(self, now: float) -> None:
        """Commands past their ack deadline: sent again, or escalated after the last try."""
        for due in self.book.due(now):
            if due.what == "resend":
                self.actions.resend(due.command, now)
            else:
                self.actions.give_up(due.command, now)

    def _flush_if_big(self) -> None:
        """A mass sweep's rows go to the writer a part at a time: one batch of thousands of
        alarms, work orders and notices took 31 ms to hand over (pickled for the writer
        process) in one go."""
        b = self.outbox.batch
        if len(b.alarms) + len(b.cleared) + len(b.work_orders) >= actions_mod.APPLY_STEP:
            self.outbox.flush()
