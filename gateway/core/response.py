"""Response rules: what each alarm sets in motion, and the valve-command lifecycle.

Pure (shared/ARCHITECTURE.md section 4): the policy table maps an alarm kind to a valve
action, a work order (cause, priority, SLA) and an owner notice; `CommandBook` is the state
machine `issued -> sent -> acked(ok|failed) | timeout -> resend (same cmd_id) -> escalated`.
Time is always an argument.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.core.detection import AlarmKind


class Priority(StrEnum):
    URGENT = "urgent"
    HIGH = "high"
    NORMAL = "normal"


@dataclass(frozen=True, slots=True)
class Policy:
    severity: str  # info | warning | critical
    close_valve: bool
    cause: str | None  # work-order cause; one open order per household and cause
    priority: Priority
    notice: str | None  # owner notification text, None for no notice
    title: str


POLICIES: dict[AlarmKind, Policy] = {
    AlarmKind.LEAK: Policy("critical", True, "leak", Priority.URGENT,
                           "Gas leak detected at {address}. The gas supply was shut off "
                           "automatically; a repair crew is on its way. Ventilate, do not use "
                           "switches or flames, leave the flat if you smell gas.",
                           "Gas leak: valve closed, emergency repair"),
    AlarmKind.OVERFLOW: Policy("critical", True, "overflow", Priority.URGENT,
                               "Abnormal gas flow at {address} (possible broken pipe or hose). "
                               "The gas supply was shut off automatically; a crew is on its way.",
                               "Over-flow at the meter: valve closed"),
    AlarmKind.VALVE_FAULT: Policy("critical", False, "valve_fault", Priority.URGENT,
                                  "Your gas meter reports flow with its valve closed. "
                                  "A technician will call to inspect it.",
                                  "Flow with valve closed: valve fault"),
    AlarmKind.PREALARM: Policy("warning", False, "gas_warning", Priority.NORMAL,
                               "Gas detected at a low level at {address}. Please ventilate and "
                               "check the stove; an inspection has been scheduled.",
                               "Methane pre-alarm: inspection"),
    AlarmKind.RISING: Policy("warning", False, "gas_warning", Priority.HIGH,
                             "Gas level rising at {address}. Ventilate now; an inspection "
                             "has been scheduled.",
                             "Methane rising: early warning"),
    AlarmKind.DETECTOR_FAULT: Policy("warning", False, "detector_maintenance", Priority.NORMAL,
                                     "Your gas detector reports a fault: your home may be "
                                     "unprotected. A technician will contact you.",
                                     "Detector fault: maintenance"),
    AlarmKind.STUCK_SENSOR: Policy("warning", False, "detector_maintenance", Priority.NORMAL,
                                   None, "Detector reading stuck: maintenance"),
    AlarmKind.OFFLINE: Policy("warning", False, "detector_maintenance", Priority.NORMAL,
                              "Your gas detector is offline: your home is unprotected until "
                              "it reconnects. A technician will contact you.",
                              "Device offline: maintenance"),
    AlarmKind.CONTINUOUS_FLOW: Policy("warning", False, None, Priority.NORMAL,
                                      "Gas has been flowing without a pause for many hours at "
                                      "{address}. Please check that appliances are off.",
                                      "Continuous flow"),
    AlarmKind.MICRO_LEAK: Policy("warning", False, "flow_inspection", Priority.NORMAL,
                                 "A very small continuous gas flow was measured at {address}; "
                                 "an inspection has been scheduled.",
                                 "Micro-flow: possible micro-leak, inspection"),
    AlarmKind.BATTERY_LOW: Policy("info", False, "replacement", Priority.NORMAL, None,
                                  "Battery low: replacement"),
    AlarmKind.METER_SERVICE_LIFE: Policy("info", False, "replacement", Priority.NORMAL, None,
                                         "Meter past its service life: replacement"),
    AlarmKind.DETECTOR_SERVICE_LIFE: Policy("info", False, "replacement", Priority.NORMAL, None,
                                            "Detector past its service life: replacement"),
}

ESCALATION = Policy("critical", False, "valve_escalation", Priority.URGENT, None,
                    "Valve command not confirmed: send a crew to shut off gas manually")


def kind_name(kind: AlarmKind) -> str:
    return kind.name.lower()


def sla_deadlines(priority: Priority, opened: dt.datetime, emergency_arrival_s: float,
                  routine_repair_s: float) -> tuple[dt.datetime, dt.datetime]:
    """(arrive_by, resolve_by): emergency arrival and routine repair clocks by priority."""
    if priority is Priority.URGENT:
        arrive, resolve = emergency_arrival_s, routine_repair_s
    elif priority is Priority.HIGH:
        arrive, resolve = routine_repair_s, 24 * 3600.0
    else:
        arrive, resolve = 3 * 86400.0, 7 * 86400.0
    return opened + dt.timedelta(seconds=arrive), opened + dt.timedelta(seconds=resolve)


# ------------------------------------------------------------------ valve commands

class CommandState(StrEnum):
    ISSUED = "issued"
    SENT = "sent"
    ACKED = "acked"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ESCALATED = "escalated"


OPEN_STATES = frozenset({CommandState.ISSUED, CommandState.SENT})


@dataclass(slots=True)
class ValveCommand:
    cmd_id: str
    meter_id: str
    household_id: str
    action: str  # valve_close | valve_open | self_test
    reason: str
    requested_by: str
    issued_at: float
    trigger_device: str | None = None
    cause: str | None = None  # alarm kind name behind it
    state: CommandState = CommandState.ISSUED
    attempts: int = 0
    deadline: float = 0.0
    sent_at: float | None = None
    acked_at: float | None = None
    ack_ok: bool | None = None
    ack_valve: str | None = None
    ack_error: str | None = None


@dataclass(frozen=True, slots=True)
class CommandDue:
    command: ValveCommand
    what: str  # "resend" | "escalate"


class UnknownCommand(KeyError):
    pass


@dataclass
class CommandBook:
    """Open commands by id; one open close command per meter; timeouts and resends."""

    ack_timeout_s: float = 5.0
    max_resends: int = 3
    backoff_factor: float = 2.0
    keep_finished: int = 100_000
    open: dict[str, ValveCommand] = field(default_factory=dict)
    finished: OrderedDict[str, ValveCommand] = field(default_factory=OrderedDict)
    _open_by_meter: dict[tuple[str, str], str] = field(default_factory=dict)

    def open_for(self, meter_id: str, action: str) -> ValveCommand | None:
        cmd_id = self._open_by_meter.get((meter_id, action))
        return self.open.get(cmd_id) if cmd_id else None

    def add(self, cmd: ValveCommand) -> ValveCommand:
        self.open[cmd.cmd_id] = cmd
        self._open_by_meter[(cmd.meter_id, cmd.action)] = cmd.cmd_id
        return cmd

    def request(self, cmd: ValveCommand) -> ValveCommand | None:
        """Add a new command unless the same action is already open for that meter."""
        if self.open_for(cmd.meter_id, cmd.action) is not None:
            return None
        return self.add(cmd)

    def mark_sent(self, cmd_id: str, now: float) -> ValveCommand:
        cmd = self.open[cmd_id]
        cmd.attempts += 1
        cmd.sent_at = now
        cmd.state = CommandState.SENT
        cmd.deadline = now + self.ack_timeout_s * self.backoff_factor ** (cmd.attempts - 1)
        return cmd

    def on_ack(self, meter_id: str, cmd_id: str, ok: bool, valve: str | None,
               error: str | None, now: float) -> tuple[ValveCommand, bool]:
        """Record a device's ack; returns (command, first time). Unknown ids raise."""
        cmd = self.open.get(cmd_id)
        if cmd is None:
            done = self.finished.get(cmd_id)
            if done is not None and done.meter_id == meter_id:
                return done, False  # a duplicate ack of a resent command: harmless
            raise UnknownCommand(cmd_id)
        if cmd.meter_id != meter_id:
            raise UnknownCommand(cmd_id)
        cmd.acked_at = now
        cmd.ack_ok, cmd.ack_valve, cmd.ack_error = ok, valve, error
        cmd.state = CommandState.ACKED if ok else CommandState.FAILED
        self._finish(cmd)
        return cmd, True

    def due(self, now: float) -> list[CommandDue]:
        """Commands whose ack is overdue: resend with the same cmd_id, or escalate."""
        out: list[CommandDue] = []
        for cmd in list(self.open.values()):
            if cmd.state is not CommandState.SENT or now < cmd.deadline:
                continue
            if cmd.attempts <= self.max_resends:
                out.append(CommandDue(cmd, "resend"))
            else:
                cmd.state = CommandState.ESCALATED
                self._finish(cmd)
                out.append(CommandDue(cmd, "escalate"))
        return out

    def _finish(self, cmd: ValveCommand) -> None:
        self.open.pop(cmd.cmd_id, None)
        if self._open_by_meter.get((cmd.meter_id, cmd.action)) == cmd.cmd_id:
            del self._open_by_meter[(cmd.meter_id, cmd.action)]
        self.finished[cmd.cmd_id] = cmd
        while len(self.finished) > self.keep_finished:
            self.finished.popitem(last=False)
