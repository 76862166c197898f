"""Effects: what a detection step did (alarms raised and cleared, valves to close), as arrays.

Every step returns an `Effects`. The NumPy engine processes a batch in rounds; a
`Collector` gathers each round's changes and orders them as if the readings had been
applied one at a time, which is the order the compiled engine produces directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.alarms import IS_GAS, KIND_SHIFTS
from gateway.core.fleet import FleetState
from gateway.core.types import F32, F64, I32, U8, U32, Bool, Ix

__all__ = ["Collector", "Effects", "emit"]


def _empty(dtype: type[np.generic]) -> npt.NDArray[Any]:
    out = np.empty(0, dtype=dtype)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, slots=True)
class Effects:
    """What one step did. Raised and cleared alarms, and valve closes to request.

    Order: as if the readings were applied one at a time in batch order; within one
    reading, by AlarmKind. `raised_value` is the reading behind the alarm (ch4 %LEL for
    detector alarms, flow m3/h for meter alarms, volts for BATTERY_LOW, seconds of
    silence for OFFLINE, age in years for service life). `raised_flow_at_meter` is set
    for gas alarms (PREALARM, LEAK, RISING) whose household meter last reported flow
    above its starting flow: the more certain alarms. Valve closes come only from LEAK
    (the household's meter) and OVERFLOW (the meter itself), never from OFFLINE or a
    fault; two detectors of one household leaking in one batch give two requests for
    the same meter (the response layer keeps one command per meter).
    """

    raised_slot: I32
    raised_kind: U8
    raised_value: F32
    raised_ts: F64
    raised_flow_at_meter: Bool
    cleared_slot: I32
    cleared_kind: U8
    cleared_ts: F64
    close_valve_meter_slot: I32
    close_cause: U8
    close_trigger_slot: I32

    @classmethod
    def empty(cls) -> Effects:
        return _EMPTY_EFFECTS

    @classmethod
    def concat(cls, parts: Sequence[Effects]) -> Effects:
        """Join effects of consecutive steps, in the order given."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _EFFECT_FIELDS))

    def __len__(self) -> int:
        return self.raised_slot.size + self.cleared_slot.size + self.close_valve_meter_slot.size


_EFFECT_FIELDS = tuple(f.name for f in dataclasses.fields(Effects))
_EMPTY_EFFECTS = Effects(
    _empty(np.int32),
    _empty(np.uint8),
    _empty(np.float32),
    _empty(np.float64),
    _empty(np.bool_),
    _empty(np.int32),
    _empty(np.uint8),
    _empty(np.float64),
    _empty(np.int32),
    _empty(np.uint8),
    _empty(np.int32),
)


class Collector:
    """Gathers effects of the rounds of one step; orders them as sequential processing."""

    __slots__ = ("changes", "closes", "first_round", "sort")

    def __init__(self) -> None:
        self.first_round = True
        # (row, slot, kind, raised, value, ts) and (row, meter, cause, trigger)
        self.changes: list[tuple[Ix, I32, U8, Bool, F32, F64]] = []
        self.closes: list[tuple[Ix, I32, U8, I32]] = []
        self.sort = False

    def finish(self, state: FleetState) -> Effects:
        if not self.changes and not self.closes:
            return Effects.empty()
        if self.changes:
            row, slot, kind, up, value, ts = (
                np.concatenate(c) for c in zip(*self.changes, strict=True)
            )
            if self.sort:
                order = np.argsort(row, kind="stable")
                slot, kind, up = slot[order], kind[order], up[order]
                value, ts = value[order], ts[order]
            down = ~up
            r_slot, r_kind = slot[up], kind[up]
            flow_at_meter = _flow_at_meter(state, r_slot, r_kind)
            raised = (r_slot, r_kind, value[up], ts[up], flow_at_meter)
            cleared = (slot[down], kind[down], ts[down])
        else:
            raised = (
                _empty(np.int32),
                _empty(np.uint8),
                _empty(np.float32),
                _empty(np.float64),
                _empty(np.bool_),
            )
            cleared = (_empty(np.int32), _empty(np.uint8), _empty(np.float64))
        if self.closes:
            crow, meter, cause, trig = (np.concatenate(c) for c in zip(*self.closes, strict=True))
            if self.sort:
                order = np.argsort(crow, kind="stable")
                meter, cause, trig = meter[order], cause[order], trig[order]
            closes = (meter, cause, trig)
        else:
            closes = (_empty(np.int32), _empty(np.uint8), _empty(np.int32))
        return Effects(*raised, *cleared, *closes)


def _flow_at_meter(state: FleetState, slot: I32, kind: U8) -> Bool:
    out = np.zeros(slot.size, dtype=np.bool_)
    gas = IS_GAS[kind].nonzero()[0]
    if gas.size:
        meter = state.meter_slot[slot[gas]]
        has = meter >= 0
        m = meter[has]
        start = state.table.columns["start_flow_m3h"][state.model[m]]
        out[gas[has]] = state.last_flow_m3h[m] > start
    return out


def emit(
    out: Collector,
    s: Ix,
    rows: Ix | None,
    ts: F64,
    old: U32,
    new: U32,
    value_of: Callable[[Ix, U8], F32],
) -> Ix:
    """Record the alarm bits that changed between `old` and `new`; return the changed rows.

    `rows` maps round positions to batch positions (None: they are the same).
    """
    diff = old ^ new
    ch = diff.nonzero()[0]
    if ch.size == 0:
        return ch
    bits = (diff[ch, None] >> KIND_SHIFTS) & np.uint32(1)
    i, k = np.nonzero(bits)  # row-major: by reading, then by kind
    local = ch[i]
    kind = k.astype(np.uint8)
    up = ((new[local] >> kind.astype(np.uint32)) & np.uint32(1)).astype(np.bool_)
    row = local if rows is None else rows[local]
    out.changes.append((row, s[local].astype(np.int32), kind, up, value_of(local, kind), ts[local]))
    return ch
