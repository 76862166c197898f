"""The vocabulary of the detection core: device kinds, valve codes, alarm kinds and their bits.

Every other core module speaks in these codes. A device's open alarms are one uint32
bitmask (bit `1 << AlarmKind`), so the bits are also given as NumPy scalars: the hot path
mixes them with arrays, and an IntEnum operand costs a slow conversion there.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum

import numpy as np
import numpy.typing as npt

__all__ = [
    "GAS_FAULT_BITS",
    "GAS_KINDS",
    "IS_GAS",
    "KIND_BITS",
    "KIND_SHIFTS",
    "N_KINDS",
    "VALVE_CODES",
    "AlarmKind",
    "DeviceKind",
    "ValveCode",
    "clear_where",
    "raise_where",
]


class DeviceKind(IntEnum):
    DETECTOR = 0
    METER = 1


class ValveCode(IntEnum):
    """Valve position as reported by a meter (`valve` field), and the state's code for it."""

    OPEN = 0
    CLOSED = 1
    FAULT = 2
    UNKNOWN = 255  # no meter reading yet

    @classmethod
    def from_protocol(cls, valve: str) -> ValveCode:
        return cls[valve.upper()]


VALVE_CODES: Mapping[str, int] = {
    c.name.lower(): int(c) for c in (ValveCode.OPEN, ValveCode.CLOSED, ValveCode.FAULT)
}
"""The protocol's `valve` words to their codes: a plain dict, for decoding a batch fast."""


class AlarmKind(IntEnum):
    """One bit each in `FleetState.active` (bit = 1 << kind)."""

    PREALARM = 0
    LEAK = 1
    RISING = 2
    DETECTOR_FAULT = 3
    STUCK_SENSOR = 4
    OFFLINE = 5
    OVERFLOW = 6
    CONTINUOUS_FLOW = 7
    MICRO_LEAK = 8
    VALVE_FAULT = 9
    BATTERY_LOW = 10
    METER_SERVICE_LIFE = 11
    DETECTOR_SERVICE_LIFE = 12

    @property
    def bit(self) -> int:
        return 1 << int(self)


GAS_KINDS: frozenset[AlarmKind] = frozenset({AlarmKind.PREALARM, AlarmKind.LEAK, AlarmKind.RISING})
"""The gas alarms: the ones a household's meter flow makes more certain."""

N_KINDS = len(AlarmKind)
KIND_BITS: Mapping[AlarmKind, np.uint32] = {k: np.uint32(1 << int(k)) for k in AlarmKind}
GAS_FAULT_BITS = 0b1111  # PREALARM, LEAK, RISING, DETECTOR_FAULT: bits 0-3 of `active`
assert (
    sum(
        KIND_BITS[k]
        for k in (AlarmKind.PREALARM, AlarmKind.LEAK, AlarmKind.RISING, AlarmKind.DETECTOR_FAULT)
    )
    == GAS_FAULT_BITS
)
KIND_SHIFTS = np.arange(N_KINDS, dtype=np.uint32)  # bitmask >> KIND_SHIFTS & 1: bit per kind
IS_GAS = np.zeros(N_KINDS, dtype=np.bool_)  # indexed by AlarmKind
IS_GAS[sorted(GAS_KINDS)] = True


def raise_where(
    new: npt.NDArray[np.uint32],
    cond: npt.NDArray[np.bool_],
    bit: np.uint32,
) -> None:
    """Raise `bit` where cond holds (rare: test first, it is cheaper than the update)."""
    if cond.any():
        new |= cond * bit


def clear_where(
    new: npt.NDArray[np.uint32],
    cond: npt.NDArray[np.bool_],
    bit: np.uint32,
) -> None:
    """Clear `bit` where cond holds."""
    if cond.any():
        new &= ~(cond * bit)
