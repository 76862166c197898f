"""What the pipeline does about device events (gateway/core/events.py decides them).

A detector's `local_alarm` is a LEAK alarm through the same `Actions` as a reading's (its
evidence says the detector's own alarm raised it), and its cut is awaited: `due` (the
timer's part) sends the platform's own close for a meter that did not confirm it in time,
and records why; `rule_fired` (the readings' part) sends it as soon as the platform's own
leak rule confirms the leak, so the platform never waits behind the detector's alarm. A
meter's `valve_closed_local` is recorded on the household's open gas alarm, or opens a
`valve_inspection` order; `tamper`, `fault` and a failed `self_test` open orders through
the response rules (one open order per household and cause).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from gateway.core import events, response
from gateway.core.alarms import AlarmKind, DeviceKind
from gateway.core.commands import CommandBook
from gateway.core.detection import FleetState
from gateway.core.events import CutWatch, EventAction, EventCode, EventEffects
from gateway.core.registry import Registry
from gateway.pipeline.actions import Actions
from gateway.pipeline.outbox import Outbox, ts_of
from gateway.settings import Settings
from gateway.storage.rows import NotificationRow, WorkOrderRow

logger = logging.getLogger(__name__)

LOCAL_ALARM_SOURCE = "detector's own alarm (local_alarm event)"

# (cause, priority, title, owner notice or None) of the orders events open
_ORDERS: dict[tuple[EventCode, DeviceKind], tuple[str, response.Priority, str, str | None]] = {}
for _kind in DeviceKind:
    _ORDERS[(EventCode.TAMPER, _kind)] = (
        "tamper",
        response.Priority.HIGH,
        f"Tamper reported by the {_kind.name.lower()}: inspect it",
        "Your gas safety device at {address} reports that it was tampered with. "
        "A technician will contact you to inspect it.",
    )
_det = response.POLICIES[AlarmKind.DETECTOR_FAULT]
for _code, _what in ((EventCode.FAULT, "fault"), (EventCode.SELF_TEST_FAILED, "failed self-test")):
    _ORDERS[(_code, DeviceKind.DETECTOR)] = (
        _det.cause or "detector_maintenance",
        _det.priority,
        f"Detector {_what}: maintenance",
        _det.notice,
    )
    _ORDERS[(_code, DeviceKind.METER)] = (
        "meter_maintenance",
        response.Priority.NORMAL,
        f"Meter {_what}: maintenance",
        None,
    )
_ORDERS[(EventCode.VALVE_CLOSED_LOCAL, DeviceKind.METER)] = (
    "valve_inspection",
    response.Priority.HIGH,
    "The valve closed by itself: why?",
    None,
)


class EventActions:
    """Event effects turned into alarms, orders, notices, audit rows and (late) closes."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        state: FleetState,
        book: CommandBook,
        outbox: Outbox,
        actions: Actions,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.state = state
        self.book = book
        self.outbox = outbox
        self.actions = actions
        self.watch = CutWatch()

    def apply(self, e: EventEffects, now: float) -> None:
        if len(e.alarms):
            self.actions.apply(e.alarms, now, source=LOCAL_ALARM_SOURCE)
        ids = self.registry.ids
        for meter, detector, due in e.awaiting:
            self._audit(
                "cut.awaited",
                meter,
                {"detector": ids[detector], "due": round(due, 3)},
            )
        for a in e.actions:
            self._act(a, now)

    def valve_closed(self, meter: int) -> None:
        """A meter's ack said its valve is closed: an awaited cut is confirmed."""
        events.valve_reported_closed(self.state, self.watch, meter)

    def due(self, now: float) -> None:
        """Awaited cuts past their deadline: confirmed by telemetry, already being closed by
        the platform, or closed now (and why recorded)."""
        if not self.watch.pending:
            return
        confirm_s = self.settings.response.local_cut_confirm_s
        why = f"meter did not confirm the detector's cut within {confirm_s:g} s"
        for meter, detector, closed in events.due_cuts(self.state, self.watch, now):
            self._close_cut(meter, detector, closed, now, "cut.unconfirmed", why)

    def rule_fired(
        self, slots: list[int], ch4: list[float], judged: list[bool], now: float
    ) -> None:
        """Readings just judged: an awaited cut whose household now meets the platform's own
        leak rule is closed at once (the meter has not reported it closed), not at the
        deadline; the timer then has nothing left to send for it."""
        if not self.watch.pending:
            return
        why = "the platform's leak rule confirmed the leak; the meter had not reported the cut"
        keep = np.array(judged, bool)  # redelivered readings were judged before
        s, v = np.array(slots, np.int32)[keep], np.array(ch4, np.float32)[keep]
        for meter, detector, closed in events.rule_confirmed_cuts(self.state, self.watch, s, v):
            self._close_cut(meter, detector, closed, now, "cut.rule_confirmed", why)

    def _close_cut(
        self, meter: int, detector: int, closed: bool, now: float, action: str, why: str
    ) -> None:
        """An awaited cut taken off the watch: confirmed by telemetry, attached to the
        platform's close in flight (or just issued), or closed now, with why audited."""
        ids = self.registry.ids
        meter_id, detector_id = ids[meter], ids[detector]
        if closed:
            self._audit("cut.confirmed", meter, {"detector": detector_id, "by": "telemetry"})
            return
        since = now - 2 * self.settings.response.local_cut_confirm_s
        current = self._platform_close(meter_id, since)
        if current is not None:
            self._audit("cut.attached", meter, {"detector": detector_id, "cmd_id": current})
            return
        cmd = self.actions.close_valve(meter_id, detector_id, AlarmKind.LEAK, now)
        logger.warning(
            "%s meter=%s detector=%s cmd_id=%s",
            action,
            meter_id,
            detector_id,
            cmd.cmd_id if cmd else None,
        )
        self._audit(
            action,
            meter,
            {"detector": detector_id, "why": why, "cmd_id": cmd.cmd_id if cmd else None},
        )

    # ------------------------------------------------------------------ helpers
    def _platform_close(self, meter_id: str, since: float) -> str | None:
        """A close of the platform's to this meter, in flight or issued since `since`."""
        cmd = self.book.open_for(meter_id, "valve_close")
        if cmd is not None:
            return cmd.cmd_id
        for n, c in enumerate(reversed(self.book.finished.values())):
            if n >= 1000:
                break
            if c.meter_id == meter_id and c.action == "valve_close" and c.issued_at >= since:
                return c.cmd_id
        return None

    def _act(self, a: EventAction, now: float) -> None:
        ids = self.registry.ids
        device_id = ids[a.slot]
        if a.code is EventCode.VALVE_CLOSED_LOCAL:
            details: dict[str, Any] = {"ts": a.ts}
            if a.confirmed_trigger >= 0:
                details["confirms_cut_of"] = ids[a.confirmed_trigger]
            if a.alarm_slot >= 0:  # recorded on the household's open gas alarm
                details["alarm_device"] = ids[a.alarm_slot]
                self._audit("alarm.valve_closed_local", a.slot, details)
                return
            self._audit("valve.closed_local", a.slot, details)
        kind = DeviceKind(int(self.state.kind[a.slot]))
        self._order(a, device_id, kind, now)

    def _order(self, a: EventAction, device_id: str, kind: DeviceKind, now: float) -> None:
        cause, priority, title, notice = _ORDERS[(a.code, kind)]
        household_id = self.registry.household_of[a.slot]
        hh = self.registry.households[household_id]
        r = self.settings.response
        arrive, resolve = response.sla_deadlines(
            priority, ts_of(now), r.emergency_arrival_s, r.routine_repair_s
        )
        event = a.code.name.lower()
        batch = self.outbox.batch
        batch.work_orders.append(
            WorkOrderRow(
                household_id,
                cause,
                priority.value,
                title,
                now,
                arrive,
                resolve,
                None,
                f"{event} event from {device_id}",
            )
        )
        if notice is not None:
            batch.notifications.append(
                NotificationRow(
                    household_id,
                    cause,
                    r.notify_channel,
                    hh.owner_phone,
                    notice.format(address=hh.address),
                    f"{household_id}:{event}:{device_id}:{int(a.ts)}",
                    None,
                )
            )

    def _audit(self, action: str, slot: int, details: dict[str, Any]) -> None:
        household_id = self.registry.household_of[slot]
        self.outbox.batch.audit.append(
            (
                "gateway",
                action,
                "household",
                household_id,
                {"device": self.registry.ids[slot], **details},
            )
        )
