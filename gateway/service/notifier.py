"""Owner notifications: the outbox table, delivered by a channel with retries.

Every notice is written to `notifications` by the writer in the same transaction as the
alarm behind it; this loop takes due rows (`FOR UPDATE SKIP LOCKED`, so several gateways
may run it), hands them to the channel and records the outcome, with exponential backoff
until `notify_max_attempts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.request
from typing import Any, Protocol

import psycopg

from gateway.settings import Settings

logger = logging.getLogger(__name__)


class Channel(Protocol):
    async def deliver(self, recipient: str, body: str, meta: dict[str, Any]) -> None: ...


class LogChannel:
    """The demo channel: the notice goes to the log (never the full phone number)."""

    async def deliver(self, recipient: str, body: str, meta: dict[str, Any]) -> None:
        logger.info(
            "notify channel=log to=***%s household=%s kind=%s body=%r",
            recipient[-4:],
            meta.get("household_id"),
            meta.get("kind"),
            body[:120],
        )


class WebhookChannel:
    """POSTs JSON to an SMS or voice gateway; any non-2xx answer is a failed attempt."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def _post(self, doc: dict[str, Any]) -> None:
        req = urllib.request.Request(
            self.url,
            data=json.dumps(doc).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            if not 200 <= resp.status < 300:
                raise RuntimeError(f"webhook answered {resp.status}")

    async def deliver(self, recipient: str, body: str, meta: dict[str, Any]) -> None:
        await asyncio.to_thread(self._post, {"to": recipient, "body": body, **meta})


def make_channel(settings: Settings) -> Channel:
    r = settings.response
    if r.notify_channel == "webhook":
        if not r.notify_webhook_url:
            raise ValueError("response.notify_channel=webhook needs response.notify_webhook_url")
        return WebhookChannel(r.notify_webhook_url)
    return LogChannel()


class Notifier:
    def __init__(
        self,
        settings: Settings,
        stopping: asyncio.Event,
        channel: Channel | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.stopping = stopping
        self.channel = channel or make_channel(settings)
        self.poll_s = poll_s

    async def run(self) -> None:
        failing = False
        while not self.stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self.settings.db.dsn) as conn:
                    failing = False
                    while not self.stopping.is_set():
                        n = await self.deliver_due(conn)
                        if n == 0:
                            with contextlib.suppress(asyncio.TimeoutError):
                                await asyncio.wait_for(self.stopping.wait(), self.poll_s)
            except psycopg.OperationalError as err:
                (logger.debug if failing else logger.warning)(
                    "notifier lost the database (%s); retrying", str(err).strip()[:200]
                )
                failing = True
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 2.0)

    async def deliver_due(self, conn: psycopg.AsyncConnection[Any], limit: int = 50) -> int:
        max_attempts = self.settings.response.notify_max_attempts
        async with conn.transaction():
            rows = await (
                await conn.execute(
                    "SELECT id, household_id, kind, recipient, body, attempts FROM notifications"
                    " WHERE state = 'pending' AND next_attempt_at <= now()"
                    " ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED",
                    (limit,),
                )
            ).fetchall()
            for nid, household, kind, recipient, body, attempts in rows:
                try:
                    await self.channel.deliver(
                        recipient, body, {"household_id": household, "kind": kind, "id": nid}
                    )
                except Exception as err:  # the channel's failure is data, not a crash
                    attempts += 1
                    state = "failed" if attempts >= max_attempts else "pending"
                    await conn.execute(
                        "UPDATE notifications SET attempts = %s, state = %s, last_error = %s,"
                        " next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
                        (attempts, state, str(err)[:500], 2.0**attempts, nid),
                    )
                    logger.warning("notify failed id=%s attempt=%d error=%s", nid, attempts, err)
                    continue
                await conn.execute(
                    "UPDATE notifications SET attempts = attempts + 1, state = 'sent',"
                    " delivered_at = now(), last_error = NULL WHERE id = %s",
                    (nid,),
                )
                await conn.execute(
                    "SELECT pg_notify('gas_events', %s)",
                    (
                        json.dumps(
                            {
                                "type": "notification.state",
                                "id": nid,
                                "household_id": household,
                                "kind": kind,
                                "state": "sent",
                            }
                        ),
                    ),
                )
        return len(rows)
