"""The worker's connection to the log's nodes: kept up by the client's own reconnects, with
one log line per failure and no traceback, and given up only when the worker stops."""

from __future__ import annotations

import asyncio
import logging
import time

import nats
from nats.aio.client import Client as NatsClient

logger = logging.getLogger(__name__)

QUIET_S = 10.0  # the same failure is logged at most this often


async def connect(servers: list[str], name: str, stopping: asyncio.Event) -> NatsClient | None:
    """Connected to one of `servers` (retried until it is), or None when stopping first."""
    said: dict[str, float] = {}

    async def on_error(err: Exception) -> None:
        line = (str(err) or type(err).__name__).splitlines()[0][:200]
        now = time.monotonic()
        if now - said.get(line, -QUIET_S) >= QUIET_S:
            said[line] = now
            logger.warning("log %s: %s; retrying", ",".join(servers), line)

    async def on_disconnect() -> None:
        logger.warning("log connection lost; reconnecting to another node")

    async def on_reconnect() -> None:
        logger.info("log connection up again")

    attempt = asyncio.ensure_future(
        nats.connect(
            servers=servers,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    )
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not attempt.done():
        attempt.cancel()
        return None
    return attempt.result()
