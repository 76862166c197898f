"""One owned partition: its own pipeline (gateway.pipeline.Gateway) holding only the devices
of the partition's buildings, rebuilt from the database when the partition is taken.

Rebuild, before any message of the partition is judged: the registry of the partition's
buildings' devices, their alarms still open (they stay open, not raised again) and the
valve commands still open (resent with the same cmd_id on their deadline, never issued
anew), exactly as the single gateway restores them at its start. The log then delivers the
partition's messages from the first one not acknowledged, i.e. not committed.

Slots are the partition's own; the worker's writer names devices by a worker-wide slot, so
each batch's readings are renumbered (`to_worker`) on their way to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from gateway.core.commands import still_open
from gateway.core.partitions import partition_of
from gateway.core.registry import Registry
from gateway.pipeline.gateway import Gateway
from gateway.pipeline.metrics import Metrics
from gateway.settings import Settings
from gateway.storage.rows import Batch

BUILDINGS_SQL = "SELECT DISTINCT community, building FROM households"

# gateway.storage.registry_sql.LOAD_SQL's columns, for the listed buildings only
PARTITION_DEVICES_SQL = """
SELECT d.id, d.kind, d.model, d.household_id, d.installed_on,
       h.address, h.community, h.building, h.owner_name, h.owner_phone, h.owner_email,
       h.qmax_m3h
FROM devices d JOIN households h ON h.id = d.household_id
JOIN unnest(%s::text[], %s::text[]) AS b(community, building)
  ON h.community = b.community AND h.building = b.building
WHERE d.status = 'active' AND NOT (d.id = ANY(%s))
ORDER BY d.kind DESC, d.id
"""
OPEN_ALARMS_SQL = (
    "SELECT device_id, kind FROM alarms WHERE cleared_at IS NULL AND device_id = ANY(%s)"
)
OPEN_COMMANDS_SQL = (
    "SELECT cmd_id, meter_id, household_id, action, reason, requested_by,"
    " extract(epoch FROM issued_at), attempts FROM valve_commands"
    " WHERE state IN ('issued', 'sent') AND meter_id = ANY(%s)"
)


def buildings_by_partition(
    rows: list[tuple[Any, ...]], partitions: int
) -> dict[int, list[tuple[str, str]]]:
    """(community, building) rows grouped by their partition."""
    out: dict[int, list[tuple[str, str]]] = {}
    for community, building in rows:
        out.setdefault(partition_of(community, building, partitions), []).append(
            (community, building)
        )
    return out


@dataclass
class Loaded:
    """What the database says about one partition at takeover."""

    devices: list[tuple[Any, ...]]
    alarms: list[tuple[str, str]]
    commands: list[tuple[Any, ...]]


async def load_partition(
    conn: psycopg.AsyncConnection[Any], buildings: list[tuple[str, str]], known: list[str]
) -> Loaded:
    """The partition's devices (those not in `known`), open alarms and open commands."""
    communities = [c for c, _ in buildings]
    names = [b for _, b in buildings]
    devices = await (
        await conn.execute(PARTITION_DEVICES_SQL, (communities, names, known))
    ).fetchall()
    ids = known + [str(r[0]) for r in devices]
    alarms = await (await conn.execute(OPEN_ALARMS_SQL, (ids,))).fetchall()
    meters = [str(r[0]) for r in devices if r[1] == "meter"]
    cmds = await (await conn.execute(OPEN_COMMANDS_SQL, (meters,))).fetchall() if meters else []
    return Loaded(devices, [(str(a), str(k)) for a, k in alarms], cmds)


@dataclass
class Partition:
    """An owned partition's pipeline and its place in the log."""

    number: int
    gw: Gateway
    buildings: list[tuple[str, str]]
    seen_to: int = 0  # stream sequence up to which an earlier owner may have judged
    to_worker: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    unacked: dict[int, Any] = field(default_factory=dict)  # stream seq -> log message
    feed: Any = None  # gateway.cluster.feed.Feed, once the backlog is judged
    received = 0
    stopped = False

    @classmethod
    def new(
        cls,
        number: int,
        settings: Settings,
        buildings: list[tuple[str, str]],
        clock: Callable[[], float],
        new_id: Callable[[], str],
        metrics: Metrics,
    ) -> Partition:
        # a small start: the load sizes the state to the partition's devices
        gw = Gateway(settings, clock=clock, new_id=new_id, metrics=metrics, capacity=64)
        gw.ingest.late_stored = True  # the log can reorder a device's messages
        return cls(number, gw, buildings)

    def rebuild(self, loaded: Loaded, ids: Registry, now: float) -> int:
        """Load the devices and restore what was open; returns the commands kept."""
        self.add_devices(loaded.devices, ids)
        return self.gw.restore(loaded.alarms, still_open(loaded.commands, now))

    def add_devices(self, rows: list[tuple[Any, ...]], ids: Registry) -> int:
        """Devices new to the partition; each also gets (or keeps) its worker-wide slot."""
        first = len(self.gw.registry)
        n = self.gw.load_devices(rows)
        new_ids = self.gw.registry.ids[first:]
        fresh = [i for i in new_ids if i not in ids.index]
        if fresh:
            ids.add_ids(fresh)
        slots = np.array([ids.index[i] for i in new_ids], np.int32)
        self.to_worker = np.concatenate([self.to_worker, slots])
        return n

    @property
    def state_bytes(self) -> int:
        """The partition's detection state, latest values and registry columns, by bytes."""
        return self.gw.state.nbytes() + sum(
            v.nbytes
            for o in (self.gw.latest, self.gw.registry)
            for v in vars(o).values()
            if isinstance(v, np.ndarray)
        )

    def renumber(self, batch: Batch) -> Batch:
        """The batch's readings with worker-wide slots (for the writer)."""
        for r in (batch.detector, batch.meter):
            if r is not None and len(r):
                r.slot = self.to_worker[r.slot]
        return batch
