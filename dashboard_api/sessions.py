"""Open event streams end with their credential: a /events stream outlives the request that
the gate checked, so once a second `StreamWatch` re-reads the users and API keys behind the
open streams (two queries, whatever the number of streams) and ends each stream whose
user was disabled, whose token version moved on (password, role or status changed), or
whose token or key expired or was revoked. The stream's last event says why.

`ended` is the pure verdict; the watch only feeds it. A database outage leaves streams
open (logged): they end on the first pass after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import psycopg_pool

from dashboard_api.hub import EventHub
from dashboard_api.identity import Principal
from dashboard_api.metrics import Metrics

logger = logging.getLogger(__name__)

_USERS = "SELECT id, disabled, token_version FROM users WHERE id = ANY(%s)"
_KEYS = "SELECT id, revoked_at, expires_at FROM api_keys WHERE id = ANY(%s)"


def ended(
    owner: Principal,
    user: Mapping[str, Any] | None,
    key: Mapping[str, Any] | None,
    now: dt.datetime,
) -> str | None:
    """Why a stream opened by `owner` must end now (given the user's and key's rows as they
    are now), or None while the credential is still good."""
    keyed = owner.via == "api_key"
    if user is None or user["disabled"]:
        return "user disabled"
    if keyed and (key is None or key["revoked_at"] is not None):
        return "API key revoked"
    expires = key["expires_at"] if keyed and key is not None else owner.expires_at
    if expires is not None and expires <= now:
        return "API key expired" if keyed else "token expired"
    if not keyed and user["token_version"] != owner.token_version:
        return "token revoked: the user's password, role or status changed"
    return None


class StreamWatch:
    def __init__(
        self,
        hub: EventHub,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        clock: Callable[[], dt.datetime],
        metrics: Metrics,
        every_s: float = 1.0,
    ) -> None:
        self.hub = hub
        self.pool = pool
        self.clock = clock
        self.metrics = metrics
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.check()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as err:
                logger.warning("stream watch cannot read users error=%s", err)

    async def check(self) -> int:
        """One pass: end the streams whose credential is no longer good; how many."""
        owned = [s for s in self.hub.subscriptions() if s.owner is not None]
        if not owned:
            return 0
        user_ids = sorted({s.owner.user_id for s in owned if s.owner})
        key_ids = sorted({s.owner.key_id for s in owned if s.owner and s.owner.key_id})
        async with self.pool.connection() as conn:
            users = {r["id"]: r for r in await (await conn.execute(_USERS, (user_ids,))).fetchall()}
            keys = {}
            if key_ids:
                keys = {
                    r["id"]: r for r in await (await conn.execute(_KEYS, (key_ids,))).fetchall()
                }
        now = self.clock()
        closed = 0
        for sub in owned:
            owner = sub.owner
            assert owner is not None
            reason = ended(
                owner,
                users.get(owner.user_id),
                keys.get(owner.key_id) if owner.key_id else None,
                now,
            )
            if reason is None:
                continue
            logger.warning(
                "stream ended user=%s via=%s reason=%r", owner.username, owner.via, reason
            )
            self.metrics.refuse("stream_closed")
            self.hub.end(sub, reason)
            closed += 1
        return closed
