"""Loading the device registry: active devices with their households, in parts.

LOAD_SQL's rows, in this column order, are what gateway.core.registry.Registry.add_rows
takes; its parameter is the ids already loaded, joined with commas (device ids hold no
comma: [A-Za-z0-9_-]). `load_registry` reads them through a named (server-side) cursor in
parts of LOAD_PART rows: the whole city's rows at once (535 k tuples of 12 fields) would
cost more memory than the registry they fill, and the allocator keeps much of it after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import psycopg

__all__ = ["COUNT_SQL", "LOAD_PART", "LOAD_SQL", "load_registry"]

_ACTIVE_NEW = "d.status = 'active' AND NOT (d.id = ANY(string_to_array(%s, ',')))"
LOAD_SQL = f"""
SELECT d.id, d.kind, d.model, d.household_id, d.installed_on,
       h.address, h.community, h.building, h.owner_name, h.owner_phone, h.owner_email,
       h.qmax_m3h
FROM devices d JOIN households h ON h.id = d.household_id
WHERE {_ACTIVE_NEW}
ORDER BY d.kind DESC, d.id
"""
COUNT_SQL = f"SELECT count(*) FROM devices d WHERE {_ACTIVE_NEW}"
LOAD_PART = 20_000


class Loads(Protocol):
    """What `load_registry` fills (gateway.pipeline.gateway.Gateway)."""

    @property
    def device_ids(self) -> Sequence[str]: ...

    def reserve(self, n: int) -> None: ...

    def load_devices(self, rows: Sequence[tuple[Any, ...]]) -> int: ...


async def load_registry(conn: psycopg.AsyncConnection[Any], gw: Loads) -> int:
    """Devices not yet in `gw`'s registry, read in parts (meters first); returns how many.
    Runs in a transaction of its own on `conn` (a named cursor needs one)."""
    known = ",".join(gw.device_ids)
    loaded = 0
    async with conn.transaction():
        # all rows are read: plan for that, not for the first few (a cursor's default)
        await conn.execute("SET LOCAL cursor_tuple_fraction = 1.0")
        row = await (await conn.execute(COUNT_SQL, (known,))).fetchone()
        gw.reserve(len(gw.device_ids) + (row[0] if row else 0))
        async with conn.cursor(name="registry_load") as cur:
            await cur.execute(LOAD_SQL, (known,))
            while rows := await cur.fetchmany(LOAD_PART):
                loaded += gw.load_devices(rows)
    return loaded
