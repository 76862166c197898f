"""Limits at the edge.

`BodyLimit`: bodies larger than `max_bytes` are refused with 413 before anything reads them
into memory (declared by Content-Length, or counted as a chunked body streams in). The
API's bodies are small; the public resident routes make a bound worth having.

`ConcurrencyLimit`: requests to a few paths are handled `concurrent` at a time, the rest
wait their turn, at most `max_wait_s` (then 503) and at most `max_waiting` of them (then
503 at once). For POST /auth/token: a burst of hundreds of sign-ins would otherwise all be
made runnable at once, and every other request's next step would queue behind all of them
on the event loop (measured: 0.15 to 0.3 s for a burst of 200, however cheap each refusal
is). Admitted a few at a time they take turns with everyone else, and the attacker's own
requests are what wait. Refusing early instead (a short queue) concentrates the refusals
in the burst and measured worse for everyone else. A request about to wait a long while
on something else (sign-in, on the hash pool) calls `request.state.end_turn()` to let the
next one in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard_api.errors import problem

MAX_BODY_BYTES = 64 * 1024


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised into whoever reads the body (FastAPI lets HTTPException through
                    # its body parsing): the route never runs, the handler answers 413.
                    raise HTTPException(413, self._detail)
            return message

        await self.app(scope, counting_receive, send)

    @property
    def _detail(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem(413, self._detail)(scope, receive, send)


class ConcurrencyLimit:
    def __init__(
        self,
        app: ASGIApp,
        paths: Iterable[str],
        concurrent: int = 4,
        max_waiting: int = 1024,
        max_wait_s: float = 10.0,
        refused: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.refused = refused
        self.paths = frozenset(paths)
        self.concurrent = concurrent
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self.waiting = 0
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if self._slots is None:  # made on the loop that serves
            self._slots = asyncio.Semaphore(self.concurrent)
        if self.waiting >= self.max_waiting:
            await self._busy(scope, receive, send, f"{self.waiting} requests waiting")
            return
        self.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait_s):
                await self._slots.acquire()
            turn = True
        except TimeoutError:
            turn = False
        finally:
            self.waiting -= 1
        if not turn:
            await self._busy(scope, receive, send, f"waited {self.max_wait_s:g} s for a turn")
            return
        slots, done = self._slots, False

        def end_turn() -> None:
            nonlocal done
            if not done:
                done = True
                slots.release()

        scope.setdefault("state", {})["end_turn"] = end_turn
        try:
            await self.app(scope, receive, send)
        finally:
            end_turn()

    async def _busy(self, scope: Scope, receive: Receive, send: Send, why: str) -> None:
        if self.refused is not None:
            self.refused()
        await problem(
            503, f"{scope['path']} is busy ({why}); retry in 1 s", headers={"Retry-After": "1"}
        )(scope, receive, send)
