"""Live events: one dedicated connection LISTENs on `gas_events` and fans each notification
out to every open /events stream through its own bounded queue.

A stream whose client falls behind (queue full) is closed with a final `stream.overflow`
event rather than slowing the others or growing without bound; the browser's EventSource
reconnects and the page reloads its lists. When the LISTEN connection drops (database
restart), it reconnects with backoff and tells every stream `stream.gap`: notifications
sent meanwhile are lost, so clients refetch.

Event ids grow across restarts (they start at the process's start time in microseconds), and
the last `replay_size` events are kept: a client reconnecting with `Last-Event-ID` gets what
it missed (`replay_after`), or `stream.gap` when its id is older than what is kept (or from
before a restart), so it reloads instead of missing something silently.

Payloads are JSON objects with at least {"type": ...}; anything else is logged and skipped.
Each stream knows its owner (the credential that opened it): dashboard_api.sessions closes
the streams whose credential stopped being valid, with the reason (`end`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psycopg

from dashboard_api.identity import Principal
from dashboard_api.metrics import Metrics

logger = logging.getLogger(__name__)

CHANNEL = "gas_events"
COMMANDS_CHANNEL = "gas_commands"


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    data: str  # the JSON text as received (or built), sent as the SSE data line


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[Event | None]
    types: frozenset[str] | None  # None: every type
    owner: Principal | None = None
    overflowed: bool = field(default=False)
    ended: str | None = None  # why the hub closed it (its credential's end), if it did

    def wants(self, event: Event) -> bool:
        return self.types is None or event.type in self.types or event.type.startswith("stream.")


class EventHub:
    def __init__(
        self,
        dsn: str,
        metrics: Metrics,
        *,
        queue_size: int = 256,
        reconnect_max_s: float = 10.0,
        replay_size: int = 4096,
    ) -> None:
        self.dsn = dsn
        self.metrics = metrics
        self.queue_size = queue_size
        self.reconnect_max_s = reconnect_max_s
        self._subs: set[Subscription] = set()
        self.first_id = time.time_ns() // 1000  # below 2**53: exact in a browser's Number
        self._ids = itertools.count(self.first_id)
        self._recent: deque[Event] = deque(maxlen=replay_size)
        self._forgotten = self.first_id - 1  # the newest id no longer kept
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    # ------------------------------------------------------------ lifecycle
    async def start(self, wait_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name="gas-events-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), wait_s)
        if not self.listening.is_set():
            logger.warning("events listener not connected yet; retrying in the background")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sub in list(self._subs):
            self._close(sub)

    async def _run(self) -> None:
        delay = 0.2
        first = True
        while True:
            try:
                # TCP keepalives: a silent network partition must end notifies() too.
                async with await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self.metrics.listener_up.set(1)
                    if not first:
                        logger.info("events listener reconnected")
                        self._broadcast(
                            "stream.gap", {"type": "stream.gap", "reason": "listener reconnected"}
                        )
                    first = False
                    delay = 0.2
                    async for notify in conn.notifies():
                        self.publish_raw(notify.payload)
            except asyncio.CancelledError:
                raise
            except psycopg.Error as err:
                logger.warning("events listener lost error=%s retry_in_s=%.1f", err, delay)
            finally:
                self.listening.clear()
                self.metrics.listener_up.set(0)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    # ------------------------------------------------------------ fan-out
    def publish_raw(self, payload: str) -> None:
        self.metrics.events_received.inc()
        try:
            obj = json.loads(payload)
        except json.JSONDecodeError:
            logger.warning("gas_events payload is not JSON head=%r", payload[:80])
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str) or not obj["type"]:
            logger.warning("gas_events payload has no type head=%r", payload[:80])
            return
        # JSON strings cannot hold raw line breaks, so these are whitespace between tokens;
        # SSE data must stay on one line.
        one_line = payload.replace("\r", " ").replace("\n", " ")
        self._fan_out(Event(next(self._ids), obj["type"], one_line))

    def _broadcast(self, type_: str, obj: dict[str, Any]) -> None:
        self._fan_out(Event(next(self._ids), type_, json.dumps(obj)))

    def _fan_out(self, event: Event) -> None:
        if not event.type.startswith("stream."):
            if len(self._recent) == self._recent.maxlen:
                self._forgotten = self._recent[0].id
            self._recent.append(event)
        for sub in list(self._subs):
            if not sub.wants(event):
                continue
            if sub.queue.qsize() >= self.queue_size:
                self.metrics.events_dropped.inc()
                sub.overflowed = True
                self._close(sub)
                continue
            sub.queue.put_nowait(event)

    def subscribe(
        self, types: frozenset[str] | None = None, owner: Principal | None = None
    ) -> Subscription:
        # One slot more than the limit for the closing marker.
        sub = Subscription(asyncio.Queue(self.queue_size + 1), types, owner)
        self._subs.add(sub)
        self.metrics.sse_clients.set(len(self._subs))
        return sub

    def replay_after(self, last_id: int) -> list[Event] | None:
        """The kept events after `last_id`, or None when some after it were not kept (an id
        older than the oldest kept, or issued before this process started)."""
        if last_id < self._forgotten:
            return None
        return [e for e in self._recent if e.id > last_id]

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        self.metrics.sse_clients.set(len(self._subs))

    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)

    def end(self, sub: Subscription, reason: str) -> None:
        """Close `sub` now, telling its client why (the stream's last event)."""
        if sub in self._subs:
            sub.ended = reason
            self._close(sub)

    def _close(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        self.metrics.sse_clients.set(len(self._subs))
        with contextlib.suppress(asyncio.QueueFull):
            sub.queue.put_nowait(None)
