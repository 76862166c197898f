"""Response rules: what each alarm sets in motion (the response lifecycle: docs/architecture.md).

Pure: the policy table maps an alarm kind to a valve action, a work order (cause,
priority, SLA) and an owner notice; `escalation_for(action)` is the order for a valve
command that was never confirmed: a close asks a crew to shut off the gas by hand, a reopen
or a self-test asks for an on-site check (the gas is already off, or the valve's state is
unknown: shutting it off would be the wrong order). The commands themselves are tracked in
gateway/core/commands.py. Time is always an argument.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from gateway.core.alarms import AlarmKind
from gateway.core.commands import UnknownCommand  # the pipeline's ack handler catches it here

__all__ = [
    "ESCALATION",
    "POLICIES",
    "VALVE_CHECK",
    "Policy",
    "Priority",
    "UnknownCommand",
    "escalation_for",
    "kind_name",
    "sla_deadlines",
]


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
    AlarmKind.LEAK: Policy(
        "critical",
        True,
        "leak",
        Priority.URGENT,
        "Gas leak detected at {address}. The gas supply was shut off "
        "automatically; a repair crew is on its way. Ventilate, do not use "
        "switches or flames, leave the flat if you smell gas.",
        "Gas leak: valve closed, emergency repair",
    ),
    AlarmKind.OVERFLOW: Policy(
        "critical",
        True,
        "overflow",
        Priority.URGENT,
        "Abnormal gas flow at {address} (possible broken pipe or hose). "
        "The gas supply was shut off automatically; a crew is on its way.",
        "Over-flow at the meter: valve closed",
    ),
    AlarmKind.VALVE_FAULT: Policy(
        "critical",
        False,
        "valve_fault",
        Priority.URGENT,
        "Your gas meter reports flow with its valve closed. A technician will call to inspect it.",
        "Flow with valve closed: valve fault",
    ),
    AlarmKind.PREALARM: Policy(
        "warning",
        False,
        "gas_warning",
        Priority.NORMAL,
        "Gas detected at a low level at {address}. Please ventilate and "
        "check the stove; an inspection has been scheduled.",
        "Methane pre-alarm: inspection",
    ),
    AlarmKind.RISING: Policy(
        "warning",
        False,
        "gas_warning",
        Priority.HIGH,
        "Gas level rising at {address}. Ventilate now; an inspection has been scheduled.",
        "Methane rising: early warning",
    ),
    AlarmKind.DETECTOR_FAULT: Policy(
        "warning",
        False,
        "detector_maintenance",
        Priority.NORMAL,
        "Your gas detector reports a fault: your home may be "
        "unprotected. A technician will contact you.",
        "Detector fault: maintenance",
    ),
    AlarmKind.STUCK_SENSOR: Policy(
        "warning",
        False,
        "detector_maintenance",
        Priority.NORMAL,
        None,
        "Detector reading stuck: maintenance",
    ),
    AlarmKind.OFFLINE: Policy(
        "warning",
        False,
        "detector_maintenance",
        Priority.NORMAL,
        "Your gas detector is offline: your home is unprotected until "
        "it reconnects. A technician will contact you.",
        "Device offline: maintenance",
    ),
    AlarmKind.CONTINUOUS_FLOW: Policy(
        "warning",
        False,
        None,
        Priority.NORMAL,
        "Gas has been flowing without a pause for many hours at "
        "{address}. Please check that appliances are off.",
        "Continuous flow",
    ),
    AlarmKind.MICRO_LEAK: Policy(
        "warning",
        False,
        "flow_inspection",
        Priority.NORMAL,
        "A very small continuous gas flow was measured at {address}; "
        "an inspection has been scheduled.",
        "Micro-flow: possible micro-leak, inspection",
    ),
    AlarmKind.BATTERY_LOW: Policy(
        "info", False, "replacement", Priority.NORMAL, None, "Battery low: replacement"
    ),
    AlarmKind.METER_SERVICE_LIFE: Policy(
        "info",
        False,
        "replacement",
        Priority.NORMAL,
        None,
        "Meter past its service life: replacement",
    ),
    AlarmKind.DETECTOR_SERVICE_LIFE: Policy(
        "info",
        False,
        "replacement",
        Priority.NORMAL,
        None,
        "Detector past its service life: replacement",
    ),
}

ESCALATION = Policy(
    "critical",
    False,
    "valve_escalation",
    Priority.URGENT,
    None,
    "Valve command not confirmed: send a crew to shut off gas manually",
)

VALVE_CHECK = Policy(
    "warning",
    False,
    "valve_check",
    Priority.HIGH,
    None,
    "Valve command not confirmed: on-site check of the meter (no shut-off needed)",
)


def escalation_for(action: str) -> Policy:
    """The order for an unconfirmed valve command: only an unconfirmed close leaves gas that
    should be off flowing, so only it sends a crew to shut it off; a reopen or a self-test
    that was not confirmed needs someone to look at the meter."""
    return ESCALATION if action == "valve_close" else VALVE_CHECK


def kind_name(kind: AlarmKind) -> str:
    return kind.name.lower()


def sla_deadlines(
    priority: Priority, opened: dt.datetime, emergency_arrival_s: float, routine_repair_s: float
) -> tuple[dt.datetime, dt.datetime]:
    """(arrive_by, resolve_by): emergency arrival and routine repair clocks by priority."""
    if priority is Priority.URGENT:
        arrive, resolve = emergency_arrival_s, routine_repair_s
    elif priority is Priority.HIGH:
        arrive, resolve = routine_repair_s, 24 * 3600.0
    else:
        arrive, resolve = 3 * 86400.0, 7 * 86400.0
    return opened + dt.timedelta(seconds=arrive), opened + dt.timedelta(seconds=resolve)
