"""The relay's map from device id to building partition, read from the registry tables.

Loaded whole at start (the relay connects to its broker only once it has it), then again on
`NOTIFY gas_registry` (provisioning sends it) and at least every `edge.registry_refresh_s`.
A failed reload keeps the map it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from gateway.core.partitions import partition_of

logger = logging.getLogger(__name__)

LOAD_SQL = (
    "SELECT d.id, h.community, h.building FROM devices d JOIN households h ON h.id = d.household_id"
)


async def load(dsn: str) -> dict[str, int]:
    """Every registered device's partition."""
    async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=10) as conn:
        rows = await (await conn.execute(LOAD_SQL)).fetchall()
    return {device: partition_of(community, building) for device, community, building in rows}


class PartitionMap:
    """The current map; `watch` keeps it fresh until `stopping`."""

    def __init__(self, dsn: str, refresh_s: float, on_load: Callable[[int], None]) -> None:
        self.dsn = dsn
        self.refresh_s = refresh_s
        self.on_load = on_load
        self.partitions: dict[str, int] = {}

    def get(self, device_id: str) -> int | None:
        return self.partitions.get(device_id)

    async def reload(self) -> None:
        fresh = await load(self.dsn)
        added = len(fresh.keys() - self.partitions.keys())
        self.partitions = fresh
        self.on_load(len(fresh))
        if added:
            logger.info("partition map loaded devices=%d new=%d", len(fresh), added)

    async def watch(self, stopping: asyncio.Event) -> None:
        """LISTEN gas_registry; reload on each notice and every refresh_s; retry outages."""
        failing = False
        while not stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=10
                ) as conn:
                    await conn.execute("LISTEN gas_registry")
                    failing = False
                    while not stopping.is_set():
                        await self.reload()
                        async for _ in conn.notifies(timeout=self.refresh_s, stop_after=1):
                            pass
            except psycopg.Error as err:
                (logger.debug if failing else logger.warning)(
                    "partition map: database unavailable (%s); keeping %d devices, retrying",
                    str(err).strip().splitlines()[0][:200] if str(err).strip() else "error",
                    len(self.partitions),
                )
                failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 2.0)
