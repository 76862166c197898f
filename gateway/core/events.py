"""Device events (`gas/v1/{id}/event`) as steps over the fleet state, like readings.

`apply_events(state, watch, slots, codes, ts, now, confirm_s)` is the step: a detector's
`local_alarm` raises its LEAK alarm (the detector cut the gas itself) and starts waiting for
its household's meter to confirm the valve closed; a meter's `valve_closed_local` confirms
that wait, or asks for an inspection when no gas alarm is open; `tamper`, `fault` and a
failed `self_test` ask for an order. What the pipeline does with them is in
gateway/pipeline/events.py. `due_cuts(state, watch, now)` is the timer's half: cuts the
meter did not confirm in time, for the platform to close itself; `rule_confirmed_cuts(state,
watch, slots, ch4)` is the readings' half: cuts whose household's readings now meet the
platform's own leak rule, closed at once rather than at the deadline. Pure: the clock is an
argument, the fleet state and the `CutWatch` are updated in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from gateway.core.alarms import GAS_KINDS, KIND_BITS, AlarmKind, DeviceKind, ValveCode
from gateway.core.effects import Collector, Effects, emit
from gateway.core.fleet import FleetState

__all__ = [
    "ALLOWED_KINDS",
    "EVENT_CODES",
    "REPEAT_WINDOW_S",
    "CutWatch",
    "EventAction",
    "EventCode",
    "EventEffects",
    "apply_events",
    "due_cuts",
    "rule_confirmed_cuts",
    "valve_reported_closed",
]


class EventCode(IntEnum):
    LOCAL_ALARM = 0
    VALVE_CLOSED_LOCAL = 1
    SELF_TEST_OK = 2
    SELF_TEST_FAILED = 3
    TAMPER = 4
    POWER_ON = 5
    FAULT = 6


EVENT_CODES: Mapping[str, EventCode] = {
    "local_alarm": EventCode.LOCAL_ALARM,
    "valve_closed_local": EventCode.VALVE_CLOSED_LOCAL,
    "tamper": EventCode.TAMPER,
    "power_on": EventCode.POWER_ON,
    "fault": EventCode.FAULT,
}
"""Protocol event types to codes (`self_test` is OK or FAILED by its result)."""

_BOTH = frozenset({DeviceKind.DETECTOR, DeviceKind.METER})
ALLOWED_KINDS: Mapping[EventCode, frozenset[DeviceKind]] = {
    EventCode.LOCAL_ALARM: frozenset({DeviceKind.DETECTOR}),
    EventCode.VALVE_CLOSED_LOCAL: frozenset({DeviceKind.METER}),
    **{
        c: _BOTH
        for c in EventCode
        if c not in (EventCode.LOCAL_ALARM, EventCode.VALVE_CLOSED_LOCAL)
    },
}
"""Which kind of device may raise which event; any other is rejected (wrong_device_kind)."""

REPEAT_WINDOW_S = 3600.0
"""A repeated tamper, fault, failed self-test or unexplained valve cut of one device within
this window orders nothing more (the first order is still open; a flood is one order)."""

_ORDERING = frozenset({EventCode.TAMPER, EventCode.FAULT, EventCode.SELF_TEST_FAILED})
_LEAK = KIND_BITS[AlarmKind.LEAK]
_GAS = np.uint32(sum(int(KIND_BITS[k]) for k in GAS_KINDS))
_DETECTOR = np.uint8(DeviceKind.DETECTOR)


@dataclass(frozen=True, slots=True)
class EventAction:
    """An event that asks the response layer for something beyond alarms.

    `code` TAMPER, FAULT, SELF_TEST_FAILED: an order for `slot`'s household.
    VALVE_CLOSED_LOCAL: `alarm_slot` is the household's detector with an open gas alarm
    (the cut is recorded on it), or -1 (an inspection order); `confirmed_trigger` is the
    detector whose cut this confirms, or -1.
    """

    slot: int
    code: EventCode
    ts: float
    alarm_slot: int = -1
    confirmed_trigger: int = -1


@dataclass(frozen=True, slots=True)
class EventEffects:
    alarms: Effects  # LEAK raised by local_alarm (never a valve close: the cut is awaited)
    actions: list[EventAction]
    awaiting: list[tuple[int, int, float]]  # (meter slot, detector slot, due): cuts awaited


class CutWatch:
    """Cuts awaited: meter slot -> (due, detector slot whose local_alarm cut the gas)."""

    __slots__ = ("last_order", "pending")

    def __init__(self) -> None:
        self.pending: dict[int, tuple[float, int]] = {}
        self.last_order: dict[tuple[int, EventCode], float] = {}  # for REPEAT_WINDOW_S

    def confirm(self, meter: int) -> int:
        """The meter reported its valve closed: the detector slot it confirms, or -1."""
        got = self.pending.pop(meter, None)
        return -1 if got is None else got[1]

    def first_in_window(self, slot: int, code: EventCode, now: float) -> bool:
        last = self.last_order.get((slot, code))
        if last is not None and now - last < REPEAT_WINDOW_S:
            return False
        self.last_order[(slot, code)] = now
        return True


def apply_events(
    state: FleetState,
    watch: CutWatch,
    slots: npt.ArrayLike,
    codes: npt.ArrayLike,
    ts: npt.ArrayLike,
    now: float,
    confirm_s: float,
) -> EventEffects:
    """Events in arrival order (kinds already checked: see ALLOWED_KINDS)."""
    s = state.check_slots(slots)
    c = np.asarray(codes, np.uint8)
    t = np.asarray(ts, np.float64)
    now = float(now)
    out = Collector()
    actions: list[EventAction] = []
    awaiting: list[tuple[int, int, float]] = []
    for i in range(s.size):
        slot, code, at = int(s[i]), EventCode(int(c[i])), float(t[i])
        if code is EventCode.LOCAL_ALARM:
            act = state.active[slot]
            if not act & _LEAK:
                new = np.uint32(act | _LEAK)
                state.active[slot] = new
                one = np.array([slot], np.intp)
                emit(
                    out,
                    one,
                    np.array([i]),
                    np.array([at]),
                    np.array([act], np.uint32),
                    np.array([new], np.uint32),
                    lambda j, k: np.zeros(j.size, np.float32),
                )
            meter = int(state.meter_slot[slot])
            if (
                meter >= 0
                and meter not in watch.pending
                and state.valve_state[meter] != ValveCode.CLOSED
            ):
                due = now + confirm_s
                watch.pending[meter] = (due, slot)
                awaiting.append((meter, slot, due))
        elif code is EventCode.VALVE_CLOSED_LOCAL:
            trigger = valve_reported_closed(state, watch, slot)
            alarm_slot = _open_gas_alarm(state, slot)
            if alarm_slot >= 0 or watch.first_in_window(slot, code, now):
                actions.append(EventAction(slot, code, at, alarm_slot, trigger))
        elif code in _ORDERING and watch.first_in_window(slot, code, now):
            actions.append(EventAction(slot, code, at))
        # POWER_ON and a passed SELF_TEST: recorded, and the device marked seen (by the caller)
    return EventEffects(out.finish(state), actions, awaiting)


def valve_reported_closed(state: FleetState, watch: CutWatch, meter: int) -> int:
    """A meter said its valve is closed (an event, or an ack of a close): the state knows,
    and an awaited cut is confirmed. Returns the detector slot confirmed, or -1."""
    state.valve_state[meter] = ValveCode.CLOSED
    return watch.confirm(meter)


def due_cuts(state: FleetState, watch: CutWatch, now: float) -> list[tuple[int, int, bool]]:
    """Awaited cuts past their deadline, removed from the watch: (meter slot, detector
    slot, closed), where `closed` says the meter's telemetry reported the valve closed
    meanwhile (confirmed) and False that the platform must close it."""
    due = [m for m, (d, _) in watch.pending.items() if d <= now]
    out = []
    for m in due:
        _, trigger = watch.pending.pop(m)
        out.append((m, trigger, bool(state.valve_state[m] == ValveCode.CLOSED)))
    return out


def rule_confirmed_cuts(
    state: FleetState, watch: CutWatch, slots: npt.ArrayLike, ch4: npt.ArrayLike
) -> list[tuple[int, int, bool]]:
    """Awaited cuts whose household's readings, just judged (`slots`, `ch4`), meet the
    platform's own leak rule (leak_count consecutive readings at or above leak_lel, or one
    at or above leak_instant_lel), removed from the watch: (meter slot, detector slot,
    closed), as `due_cuts`. A local_alarm already holds the LEAK bit, so the readings'
    rule raises nothing new; without this the platform would wait for the deadline."""
    if not watch.pending:
        return []
    s = np.asarray(slots, np.intp)
    v = np.asarray(ch4, np.float32)
    if s.size == 0:
        return []
    pending = np.fromiter(watch.pending, np.int32, len(watch.pending))
    hit = np.isin(state.meter_slot[s], pending)
    if not hit.any():
        return []
    s, v = s[hit], v[hit]
    cols = state.table.columns
    model = state.model[s]
    code = (state.records["runs"][s] & np.uint64(0xFFFF)).astype(np.intp)
    leak_run = np.unravel_index(code, state.table.gas.dims)[1]
    fires = (v >= cols["leak_instant_lel"][model]) | (leak_run >= cols["leak_count"][model])
    out = []
    for detector in s[fires]:
        meter = int(state.meter_slot[detector])
        if watch.pending.pop(meter, None) is not None:
            closed = bool(state.valve_state[meter] == ValveCode.CLOSED)
            out.append((meter, int(detector), closed))
    return out


def _open_gas_alarm(state: FleetState, meter: int) -> int:
    """A detector of the meter's household with an open gas alarm, or -1."""
    n = state.n_devices
    hh = state.household[meter]
    if hh < 0:
        return -1
    found = (
        (state.household[:n] == hh)
        & (state.kind[:n] == _DETECTOR)
        & ((state.active[:n] & _GAS) != 0)
    ).nonzero()[0]
    return int(found[0]) if found.size else -1
