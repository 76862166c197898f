"""Partition leases: PostgreSQL session advisory locks on one dedicated connection.

A worker holds a member lock (key `MEMBER_CLASS, <its backend pid>`) for as long as its
lease connection lives, and one lock per partition it owns (`PARTITION_CLASS, p`). The
locks belong to the connection's session: when the worker dies, its connection closes and
the database frees them at once, so survivors see the partitions unowned at their next poll.
When the worker loses the connection it has lost its leases too, and must stop judging
every partition at once (`Leases.check` raises).

Who is alive and who owns what are read from `pg_locks` (with `pg_stat_activity`'s
application_name, the worker's name): no table to keep, nothing left behind by a crash.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg

MEMBER_CLASS = 0x6761_7301
"""First key of a worker's member lock (the second is its backend pid)."""
PARTITION_CLASS = 0x6761_7302
"""First key of a partition's lock (the second is the partition)."""

_DB = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"
_ALIVE_SQL = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    f" AND classid = %s::oid AND objsubid = 2 AND {_DB}"
)
_OWNERS_SQL = (
    "SELECT l.objid::int, coalesce(a.application_name, '') FROM pg_locks l"
    " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid"
    f" AND l.objsubid = 2 AND l.{_DB}"
)


def _key(first: int) -> int:
    """pg_locks shows the first int4 key as an unsigned oid; the lock functions take int4."""
    return first - 2**32 if first >= 2**31 else first


class LeaseLost(Exception):
    """The lease connection is gone: every partition's lease with it."""


def share(partitions: int, alive: int, cap: int = 0) -> int:
    """The most partitions one worker should own: an even share, at most `cap` (0: none)."""
    n = math.ceil(partitions / max(1, alive))
    return min(n, cap) if cap else n


class Leases:
    """One worker's lease connection and the partitions it holds."""

    def __init__(self, dsn: str, name: str) -> None:
        self.dsn = dsn
        self.name = name
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.held: set[int] = set()

    async def connect(self) -> None:
        """Open the lease connection and take the member lock. Keepalives make a silently
        dead peer (a machine gone) show within a few seconds on this side."""
        self.held.clear()
        self.conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=3,
            application_name=self.name,
            keepalives=1,
            keepalives_idle=2,
            keepalives_interval=1,
            keepalives_count=2,
            tcp_user_timeout=3000,
            options="-c statement_timeout=2000 -c idle_session_timeout=0",
        )
        await self.conn.execute(
            "SELECT pg_advisory_lock(%s, pg_backend_pid())", (_key(MEMBER_CLASS),)
        )

    async def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.conn is None or self.conn.closed:
            raise LeaseLost("no lease connection")
        try:
            cur = await self.conn.execute(sql, args)
            return await cur.fetchall() if cur.description else []
        except psycopg.Error as err:
            self.held.clear()
            conn, self.conn = self.conn, None
            await conn.close()
            raise LeaseLost((str(err).strip().splitlines() or ["?"])[0][:200]) from None

    async def alive(self) -> int:
        """Workers holding a member lock now (this one included)."""
        rows = await self._q(_ALIVE_SQL, (MEMBER_CLASS,))
        return int(rows[0][0])

    async def owners(self) -> dict[int, str]:
        """Partition -> the name of the worker holding it."""
        return {int(p): str(n) for p, n in await self._q(_OWNERS_SQL, (PARTITION_CLASS,))}

    async def try_take(self, partition: int) -> bool:
        rows = await self._q(
            "SELECT pg_try_advisory_lock(%s, %s)", (_key(PARTITION_CLASS), partition)
        )
        if rows and rows[0][0]:
            self.held.add(partition)
            return True
        return False

    async def release(self, partition: int) -> None:
        self.held.discard(partition)
        await self._q("SELECT pg_advisory_unlock(%s, %s)", (_key(PARTITION_CLASS), partition))

    async def close(self) -> None:
        self.held.clear()
        if self.conn is not None:
            await self.conn.close()
            self.conn = None
