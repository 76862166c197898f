"""What the pipeline hands to storage for one batch of messages: readings as NumPy columns
and the rows of alarms, work orders, notifications, commands and audit. Pure data (no SQL),
so the pipeline can build it without importing a database driver."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Readings:
    """Column arrays of one kind of reading (detector or meter)."""

    slot: np.ndarray
    seq: np.ndarray
    time: np.ndarray  # float64 epoch s, the device clock or receive time when skewed
    received: np.ndarray
    flags: np.ndarray
    values: dict[str, np.ndarray]
    ids: list[str] | None = None  # device ids, set while spooled (slots are per process)

    def __len__(self) -> int:
        return len(self.slot)


@dataclass
class AlarmRow:
    device_id: str
    household_id: str
    kind: str
    severity: str
    value: float
    raised_at: float
    flow_at_meter: bool | None
    evidence: list[dict[str, Any]]
    building: str
    community: str
    incident: bool = False


@dataclass
class WorkOrderRow:
    household_id: str
    cause: str
    priority: str
    title: str
    opened_at: float
    arrive_by: dt.datetime
    resolve_by: dt.datetime
    alarm_key: tuple[str, str] | None  # (device_id, kind) of the alarm behind it
    note: str


@dataclass
class NotificationRow:
    household_id: str
    kind: str
    channel: str
    recipient: str
    body: str
    dedupe_key: str
    alarm_key: tuple[str, str] | None


@dataclass
class Batch:
    generation: int = 0
    packet_ids: list[int] = field(default_factory=list)
    redelivered: bool = False
    detector: Readings | None = None
    meter: Readings | None = None
    events: list[tuple] = field(default_factory=list)
    rejects: list[tuple] = field(default_factory=list)
    alarms: list[AlarmRow] = field(default_factory=list)
    cleared: list[tuple[str, str, float]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)  # snapshots to upsert
    work_orders: list[WorkOrderRow] = field(default_factory=list)
    notifications: list[NotificationRow] = field(default_factory=list)
    audit: list[tuple[str, str, str, str, dict[str, Any]]] = field(default_factory=list)
    live: list[dict[str, Any]] = field(default_factory=list)  # NOTIFY gas_events payloads
    created: float = field(default_factory=time.monotonic)
    seq: int = 0  # its number on the way to a writer process and back (writer_process.py)

    @property
    def rows(self) -> int:
        return (
            len(self.detector or ()) + len(self.meter or ()) + len(self.events) + len(self.rejects)
        )


def concat_readings(parts: list[Readings | None]) -> Readings | None:
    rs = [r for r in parts if r is not None and len(r)]
    if not rs:
        return None
    if len(rs) == 1:
        return rs[0]
    return Readings(
        np.concatenate([r.slot for r in rs]),
        np.concatenate([r.seq for r in rs]),
        np.concatenate([r.time for r in rs]),
        np.concatenate([r.received for r in rs]),
        np.concatenate([r.flags for r in rs]),
        {k: np.concatenate([r.values[k] for r in rs]) for k in rs[0].values},
    )


def merge_batches(batches: list[Batch]) -> Batch:
    """One batch holding several, in order (acks stay with the originals)."""
    out = Batch(
        generation=batches[-1].generation,
        created=batches[0].created,
        redelivered=any(b.redelivered for b in batches),
        detector=concat_readings([b.detector for b in batches]),
        meter=concat_readings([b.meter for b in batches]),
    )
    for name in (
        "events",
        "rejects",
        "alarms",
        "cleared",
        "commands",
        "work_orders",
        "notifications",
        "audit",
        "live",
    ):
        getattr(out, name).extend(x for b in batches for x in getattr(b, name))
    return out
