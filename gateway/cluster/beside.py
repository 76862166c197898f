"""A worker's work beside its partitions' logs: each device's latest values to
device_state, devices provisioned while it runs, and operators' valve commands.

Each is the single gateway's (gateway.service.periodic, gateway.service.listener) applied
to the partitions this worker owns only: device_state rows of its own devices, new devices
of its own buildings, and the operators' commands to its own meters (another worker's are
left for that worker, which picks them up from the same table).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from gateway.cluster.partition import (
    BUILDINGS_SQL,
    PARTITION_DEVICES_SQL,
    Partition,
    buildings_by_partition,
)
from gateway.core.registry import Registry
from gateway.storage import copy_format
from gateway.storage.device_state import Changes
from gateway.storage.operator_commands import attach, issued_commands
from gateway.storage.state_writer import StateWriter

logger = logging.getLogger(__name__)


def _worker_changes(part: Partition, ch: Changes) -> Changes:
    """A partition's changes named by worker-wide slots (the state writer's registry)."""
    t = part.to_worker
    return dataclasses.replace(
        ch,
        det_slots=t[ch.det_slots],
        met_slots=t[ch.met_slots],
        status={int(t[s]): v for s, v in ch.status.items()},
    )


async def write_device_state(
    owned: dict[int, Partition],
    ids: Registry,
    dsn: str,
    interval_s: float,
    stopping: asyncio.Event,
) -> None:
    """Every `interval_s`, the owned devices' latest values to device_state, from a bulk
    thread; what cannot be written (database away) is kept for the next round."""
    writer = StateWriter(dsn, ids)
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)
        for part in list(owned.values()):
            latest = part.gw.latest
            while not part.stopped and (changes := latest.take(limit=copy_format.CHUNK_ROWS)):
                if not await asyncio.to_thread(writer.write, _worker_changes(part, changes)):
                    latest.give_back(changes)
                    break


class Listener:
    """LISTEN gas_registry and gas_commands, for the owned partitions only."""

    def __init__(
        self,
        dsn: str,
        owned: dict[int, Partition],
        ids: Registry,
        partitions: int,
        stopping: asyncio.Event,
        clock: Callable[[], float],
    ) -> None:
        self.dsn = dsn
        self.owned = owned
        self.ids = ids
        self.partitions = partitions
        self.stopping = stopping
        self.clock = clock

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                async with (
                    await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as listen,
                    await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as query,
                ):
                    await listen.execute("LISTEN gas_registry")
                    await listen.execute("LISTEN gas_commands")
                    await self.pick_up_operator_commands(query)
                    async for note in listen.notifies():
                        if note.channel == "gas_registry":
                            await self.refresh_registry(query)
                        elif note.channel == "gas_commands":
                            await self.pick_up_operator_commands(query)
            except psycopg.OperationalError as err:
                logger.debug("listener lost the database (%s); retrying", str(err)[:200])
                await asyncio.sleep(1.0)

    async def refresh_registry(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Devices provisioned since in the owned partitions' buildings join them."""
        rows = await (await conn.execute(BUILDINGS_SQL)).fetchall()
        by_part = buildings_by_partition(rows, self.partitions)
        for p, part in list(self.owned.items()):
            part.buildings = by_part.get(p, [])
            if not part.buildings:
                continue
            devices = await (
                await conn.execute(
                    PARTITION_DEVICES_SQL,
                    (
                        [c for c, _ in part.buildings],
                        [b for _, b in part.buildings],
                        list(part.gw.device_ids),
                    ),
                )
            ).fetchall()
            if devices and not part.stopped:
                n = part.add_devices(devices, self.ids)
                logger.info("partition %d: %d new device(s)", p, n)

    async def pick_up_operator_commands(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Issued commands to owned meters not yet in their book: sent, or attached."""
        commands = await issued_commands(conn)
        now = self.clock()
        touched = set()
        for cmd in commands:
            meter_id = cmd.meter_id
            part = next((x for x in self.owned.values() if meter_id in x.gw.registry.index), None)
            if part is None or part.stopped or part.gw.knows_command(cmd.cmd_id):
                continue
            current = part.gw.operator_command(cmd, now)
            if current is not None:
                await attach(conn, cmd.cmd_id, current.cmd_id)
            touched.add(part.number)
        for p in touched:
            if p in self.owned:
                self.owned[p].gw.flush()
