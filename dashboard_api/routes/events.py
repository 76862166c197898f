"""GET /events: Server-Sent Events of alarms, commands and work-order changes as they
happen (viewer and up).

Every event is `id: <n>`, `event: <type>`, `data: <the JSON object>`. The stream opens with
`stream.open`; `stream.gap` says notifications may have been missed (the listener
reconnected) and `stream.overflow` closes a stream whose client fell behind: in both cases
reload the lists. `stream.closed` (with a `reason`) ends a stream whose credential ended:
user disabled, token revoked (password, role or status changed), token or API key expired
or revoked; sign in again before reconnecting. Comment lines (`: keepalive`) keep idle
connections open through proxies. A reconnecting client sends `Last-Event-ID` (browsers do
it themselves): the events it missed are sent first, or `stream.gap` when they are no longer
kept (the API restarted, or too many went by), and the client reloads its lists.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import StringConstraints

from dashboard_api.deps import State, Viewer
from dashboard_api.hub import Event

router = APIRouter(tags=["events"])

EVENT_TYPES = (
    "alarm.raised",
    "alarm.cleared",
    "alarm.acknowledged",
    "alarm.shelved",
    "alarm.unshelved",
    "command.state",
    "command.requested",
    "work_order.opened",
    "work_order.changed",
    "notification.state",
    "work_order.flagged",
)
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}\.[a-z_]{1,32}$")]
_EXAMPLE = (
    'id: 42\nevent: alarm.raised\ndata: {"type": "alarm.raised", "alarm_id": 7, '
    '"device_id": "d000042a", "household_id": "h000042", "kind": "leak", '
    '"severity": "critical"}\n\n'
)


def _frame(event: Event) -> bytes:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.data}\n\n".encode()


def _control(type_: str, **fields: object) -> bytes:
    return f"event: {type_}\ndata: {json.dumps({'type': type_, **fields})}\n\n".encode()


@router.get(
    "/events",
    response_class=StreamingResponse,
    summary="Live events (Server-Sent Events)",
    responses={
        200: {
            "description": "An endless text/event-stream",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": _EXAMPLE}},
        }
    },
)
async def events(
    who: Viewer,
    state: State,
    types: Annotated[
        list[EventType] | None,
        Query(
            description=f"Only these event types (repeat the parameter); known: "
            f"{', '.join(EVENT_TYPES)}"
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            max_length=32,
            description="The id of the last event received: replay what came after it",
        ),
    ] = None,
) -> StreamingResponse:
    wanted = frozenset(types) if types else None
    last_id = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    hub = state.hub
    keepalive_s = state.sse_keepalive_s

    async def stream() -> AsyncIterator[bytes]:
        sub = hub.subscribe(wanted, owner=who)
        try:
            yield b"retry: 3000\n" + _control(
                "stream.open", user=who.username, listening=hub.listening.is_set()
            )
            sent = -1
            if last_id is not None:
                missed = hub.replay_after(last_id)
                if missed is None:
                    yield _control("stream.gap", reason="missed events are no longer kept")
                for old in missed or ():
                    if sub.wants(old):
                        yield _frame(old)
                        sent = old.id
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), keepalive_s)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if event is None:
                    if sub.overflowed:
                        yield _control("stream.overflow", reason="client too slow; reconnect")
                    elif sub.ended:
                        yield _control("stream.closed", reason=sub.ended)
                    return
                if event.id > sent:  # not already replayed
                    yield _frame(event)
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
