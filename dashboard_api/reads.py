"""Reads that may lag: served by a streaming replica when one is configured and close enough
behind, else by the primary. Every such response says which one answered.

A route opts in by taking `LagConn` instead of `Conn` (history: readings and their buckets,
alarm and notification lists, the audit trail; never the live board, never a write). Its
response carries `X-Read-Source: replica | primary` and, from the replica,
`X-Replica-Lag-Seconds`. The lag is measured, once a second, by a heartbeat: this process
writes `replica_heartbeat` on the primary and reads the newest beat back from the replica;
`now() - beat_at` there is how far behind it is (to within one beat), and it grows when the
replica stops receiving, which a quiet primary would otherwise hide. Past
`db.read_max_lag_s`, or when the replica does not answer, reads go to the primary until the
replica is back within bounds: a lagging replica slows nobody and is never silently stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Response
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from dashboard_api.deps import State

logger = logging.getLogger(__name__)

SOURCE_HEADER = "X-Read-Source"
LAG_HEADER = "X-Replica-Lag-Seconds"

MAY_LAG: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Served by the read replica when it is within `db.read_max_lag_s` of"
        " the primary, else by the primary",
        "headers": {
            SOURCE_HEADER: {"description": "replica or primary", "schema": {"type": "string"}},
            LAG_HEADER: {
                "description": "How far behind the primary the replica was (seconds, measured"
                " within the last second); only on replica reads",
                "schema": {"type": "number"},
            },
        },
    }
}
"""`responses=MAY_LAG` on a route that takes `LagConn`: the headers in OpenAPI."""


@dataclass
class ReplicaHealth:
    usable: bool = False
    lag_s: float | None = None
    reason: str = "no replica configured"


class ReadReplica:
    """The replica's pool and its measured lag (a task beats and measures each `beat_s`)."""

    def __init__(
        self,
        primary: AsyncConnectionPool[Any],
        read_dsn: str,
        max_lag_s: float,
        *,
        beat_s: float = 1.0,
    ) -> None:
        self.primary = primary
        self.max_lag_s = max_lag_s
        self.beat_s = beat_s
        self.source = f"api:{socket.gethostname()}:{os.getpid()}"
        self.health = ReplicaHealth(reason="not measured yet")
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            read_dsn,
            min_size=1,
            max_size=10,
            open=False,
            timeout=2,
            kwargs={"autocommit": True, "row_factory": dict_row},
            check=AsyncConnectionPool.check_connection,
            name="api-replica",
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pool.open(wait=False)
        self._task = asyncio.create_task(self._run(), name="replica-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.pool.close()

    async def _run(self) -> None:
        while True:
            await self.measure()
            await asyncio.sleep(self.beat_s)

    async def measure(self) -> ReplicaHealth:
        """One beat on the primary and one reading of the replica."""
        try:
            async with self.primary.connection(timeout=2) as conn:
                await conn.execute(
                    "INSERT INTO replica_heartbeat (source, beat_at) VALUES (%s, now())"
                    " ON CONFLICT (source) DO UPDATE SET beat_at = excluded.beat_at",
                    (self.source,),
                )
        except (psycopg.Error, TimeoutError) as err:
            logger.warning("replica heartbeat not written: %s", str(err).splitlines()[0])
        try:
            async with self.pool.connection(timeout=2) as conn:
                row = await (
                    await conn.execute(
                        "SELECT pg_is_in_recovery() AS standby,"
                        " extract(epoch FROM now() - max(beat_at))::float8 AS lag"
                        " FROM replica_heartbeat"
                    )
                ).fetchone()
        except (psycopg.Error, TimeoutError) as err:
            self._set(False, None, f"replica unreachable: {str(err).splitlines()[0][:200]}")
            return self.health
        assert row is not None
        lag = max(0.0, row["lag"]) if row["lag"] is not None else None
        if not row["standby"]:
            self._set(
                False, lag, "db.read_dsn is not a standby (promoted?): reads go to the primary"
            )
        elif lag is None:
            self._set(False, None, "no heartbeat replicated yet")
        elif lag > self.max_lag_s:
            self._set(False, lag, f"replica {lag:.1f} s behind (bound {self.max_lag_s:g} s)")
        else:
            self._set(True, lag, "ok")
        return self.health

    def _set(self, usable: bool, lag: float | None, reason: str) -> None:
        if usable != self.health.usable:
            logger.warning("read replica %s: %s", "in use" if usable else "not used", reason)
        self.health = ReplicaHealth(usable, lag, reason)


async def get_lag_conn(state: State, response: Response) -> AsyncIterator[AsyncConnection[Any]]:
    replica: ReadReplica | None = state.replica
    conn = None
    if replica is not None and replica.health.usable:
        try:  # handed out checked: a dead replica connection is found here, not in the route
            conn = await replica.pool.getconn(timeout=1)
        except psycopg.OperationalError as err:  # PoolTimeout included
            replica._set(False, None, f"replica unreachable: {str(err).splitlines()[0][:200]}")
    if conn is not None and replica is not None:
        try:
            response.headers[SOURCE_HEADER] = "replica"
            response.headers[LAG_HEADER] = f"{replica.health.lag_s or 0.0:.3f}"
            yield conn
        finally:
            await replica.pool.putconn(conn)
        return
    async with state.pool.connection() as primary:
        response.headers[SOURCE_HEADER] = "primary"
        yield primary


LagConn = Annotated[AsyncConnection[Any], Depends(get_lag_conn, scope="function")]
