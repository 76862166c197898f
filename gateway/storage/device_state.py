"""Each device's latest reading, by slot, in NumPy arrays: the rows of `device_state`.

The fleet view needs every device's last values, but writing them per reading would cost
more than the readings themselves: the hot path records a batch's values with a few
vectorised stores, and every few seconds `take` hands the devices that changed to
`state_writer`, which writes them with one binary COPY and one set-based upsert. Status messages
(online, firmware) are rare and kept in a small dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_DET = np.dtype(
    [("time", np.float64), ("seq", np.int64), ("ch4", np.float32), ("fault", np.uint32)]
)
_MET = np.dtype(
    [
        ("time", np.float64),
        ("seq", np.int64),
        ("vol", np.float64),
        ("flow", np.float32),
        ("batt", np.float32),
        ("rssi", np.int16),
        ("valve", np.uint8),
    ]
)


@dataclass
class Changes:
    """Devices whose latest values changed since the last `take`, copied out of the arrays."""

    det_slots: np.ndarray
    det: np.ndarray
    met_slots: np.ndarray
    met: np.ndarray
    status: dict[int, tuple[bool, str | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.det_slots) + len(self.met_slots) + len(self.status)


class LatestValues:
    """Latest detector and meter values by slot, and which slots changed."""

    def __init__(self, capacity: int = 1024) -> None:
        self.det = np.zeros(capacity, _DET)
        self.met = np.zeros(capacity, _MET)
        self.det_dirty = np.zeros(capacity, np.bool_)
        self.met_dirty = np.zeros(capacity, np.bool_)
        self.status: dict[int, tuple[bool, str | None]] = {}

    def ensure(self, n: int) -> None:
        if n <= len(self.det):
            return
        cap = max(n, 2 * len(self.det))
        for name in ("det", "met", "det_dirty", "met_dirty"):
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def record_detectors(
        self,
        slots: np.ndarray,
        time: np.ndarray,
        seq: np.ndarray,
        ch4: np.ndarray,
        fault: np.ndarray,
    ) -> None:
        """Store a batch (arrival order: a device's later reading overwrites its earlier)."""
        rows = np.empty(len(slots), _DET)
        rows["time"], rows["seq"], rows["ch4"], rows["fault"] = time, seq, ch4, fault
        self.det[slots] = rows
        self.det_dirty[slots] = True

    def record_meters(
        self, slots: np.ndarray, time: np.ndarray, seq: np.ndarray, values: dict[str, np.ndarray]
    ) -> None:
        rows = np.empty(len(slots), _MET)
        rows["time"], rows["seq"] = time, seq
        for name in ("vol", "flow", "batt", "rssi", "valve"):
            rows[name] = values[name]
        self.met[slots] = rows
        self.met_dirty[slots] = True

    def record_status(self, slot: int, online: bool, firmware: str | None) -> None:
        self.status[slot] = (online, firmware)

    def take(self, limit: int | None = None) -> Changes:
        """Up to `limit` changed devices of each kind (and all statuses), marked clean."""
        d = np.flatnonzero(self.det_dirty)[:limit]
        m = np.flatnonzero(self.met_dirty)[:limit]
        self.det_dirty[d] = False
        self.met_dirty[m] = False
        status, self.status = self.status, {}
        return Changes(d, self.det[d], m, self.met[m], status)

    def give_back(self, ch: Changes) -> None:
        """Changes that could not be written are written next time (values newer by then
        are what gets written: the arrays always hold the latest)."""
        self.det_dirty[ch.det_slots] = True
        self.met_dirty[ch.met_slots] = True
        for slot, st in ch.status.items():
            self.status.setdefault(slot, st)
