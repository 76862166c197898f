"""`gas-safety watch` (no device named): the platform's live events in a terminal.

What the control room's second screen shows: alarms raised, acknowledged and cleared, valve
commands and their escalations, work orders opened and changed, owner notifications. They
are the `gas_events` notifications the gateway and the API send in the transaction that
records each change (the API's /events stream carries the same), read here with LISTEN on
the database: read-only, no account of the API needed. A lost connection is said on screen
(events sent meanwhile are not shown: the database does not keep them) and retried.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from rich.console import Console
from rich.markup import escape

CHANNEL = "gas_events"
# what `--events` may choose, and the event types' prefixes each stands for
KINDS = {
    "alarms": ("alarm.",),
    "commands": ("command.", "valve."),
    "orders": ("work_order.",),
    "notices": ("notification.",),
}
_LABEL = {"alarms": "ALARM", "commands": "COMMAND", "orders": "ORDER", "notices": "NOTICE"}

SNAPSHOT_SQL = """
SELECT
  (SELECT count(*) FROM alarms WHERE cleared_at IS NULL) AS alarms,
  (SELECT count(*) FROM alarms WHERE cleared_at IS NULL AND severity = 'critical'),
  (SELECT count(*) FROM work_orders WHERE status IN ('open', 'dispatched', 'on_site')),
  (SELECT count(*) FROM work_orders WHERE status IN ('open', 'dispatched', 'on_site')
     AND (resolve_by < now() OR (status <> 'on_site' AND arrive_by < now()))),
  (SELECT count(*) FROM valve_commands WHERE state IN ('issued', 'sent'))
"""


class FeedError(Exception):
    """The feed cannot start: one line saying why."""


def kind_of(event_type: str) -> str | None:
    for kind, prefixes in KINDS.items():
        if event_type.startswith(prefixes):
            return kind
    return None


@dataclass(frozen=True, slots=True)
class EventLine:
    """One event as the feed shows it."""

    at: float
    kind: str  # a key of KINDS, or "other"
    doc: dict[str, Any]

    @property
    def style(self) -> str:
        t = self.doc.get("type", "")
        if t == "alarm.raised":
            return "bold red" if self.doc.get("severity") == "critical" else "yellow"
        if t == "alarm.cleared":
            return "green"
        if t == "command.escalated":
            return "bold magenta"
        return {"commands": "cyan", "orders": "blue", "notices": "dim"}.get(self.kind, "")

    def text(self) -> str:
        d = self.doc
        t = str(d.get("type", "?"))
        what = t.split(".", 1)[-1]
        parts = [what]
        for key in ("kind", "severity", "action", "state", "priority", "cause"):
            if key in d:
                parts.append(str(d[key]))
        for key, label in (
            ("device_id", ""),
            ("meter_id", ""),
            ("household_id", ""),
            ("work_order_id", "#"),
            ("cmd_id", "cmd "),
        ):
            if key in d:
                parts.append(f"{label}{d[key]}")
        for key in ("value", "attempts", "by", "why", "reason"):
            if key in d and d[key] not in (None, ""):
                parts.append(f"{key}={d[key]}")
        stamp = dt.datetime.fromtimestamp(self.at).strftime("%H:%M:%S.%f")[:-3]
        return f"{stamp} {_LABEL.get(self.kind, t.upper()):<8} {' '.join(parts)}"

    def json(self) -> str:
        return json.dumps({"at": round(self.at, 3), "feed": self.kind, **self.doc})


def parse(payload: str, now: float) -> EventLine | None:
    """A notification as a line; None for a payload that is not an event object."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        return None
    return EventLine(now, kind_of(doc["type"]) or "other", doc)


def snapshot(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(SNAPSHOT_SQL).fetchone()
    assert row is not None
    alarms, critical, orders, overdue, commands = row
    return (
        f"now: {alarms} active alarm(s), {critical} critical; {orders} open work order(s), "
        f"{overdue} overdue; {commands} valve command(s) awaiting an ack"
    )


class Feed:
    """Prints events until `count` of them, `duration_s`, or Ctrl-C."""

    def __init__(
        self,
        dsn: str,
        kinds: set[str],
        as_json: bool,
        count: int | None,
        duration_s: float | None,
        console: Console | None = None,
    ) -> None:
        self.dsn = dsn
        self.kinds = kinds
        self.as_json = as_json
        self.count = count
        self.deadline = None if duration_s is None else time.monotonic() + duration_s
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.shown = 0

    def _left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _done(self) -> bool:
        left = self._left()
        return (self.count is not None and self.shown >= self.count) or (
            left is not None and left <= 0
        )

    def show(self, line: EventLine) -> None:
        if line.kind not in self.kinds:
            return
        if self.as_json:
            print(line.json(), flush=True)
        else:
            self.console.print(escape(line.text()), style=line.style)
        self.shown += 1

    async def run(self) -> int:
        delay = 0.5
        first = True
        while not self._done():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if first:
                        await self._header()
                        first = False
                    else:
                        print("feed: reconnected", file=sys.stderr, flush=True)
                    delay = 0.5
                    await self._listen(conn)
            except psycopg.OperationalError as err:
                why = (str(err).strip().splitlines() or ["connection failed"])[0]
                if first:
                    raise FeedError(f"cannot listen for events: {why}") from None
                print(
                    f"feed: database connection lost ({why}); events meanwhile are not shown;"
                    f" retrying in {delay:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        return self.shown

    async def _header(self) -> None:
        def read() -> str:
            with psycopg.connect(self.dsn, connect_timeout=5) as conn:
                return snapshot(conn)

        summary = await asyncio.to_thread(read)
        print(
            f"watching live events ({', '.join(sorted(self.kinds))}); {summary}",
            file=sys.stderr,
            flush=True,
        )

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while not self._done():
            left = self._left()
            async for note in conn.notifies(timeout=1.0 if left is None else min(left, 1.0)):
                line = parse(note.payload, time.time())
                if line is not None:
                    self.show(line)
                if self._done():
                    return
