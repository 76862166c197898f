"""The gateway's MQTT connection: a minimal MQTT 3.1.1 client on an asyncio Protocol,
built for acknowledge-after-commit (the packets themselves: gateway.protocol.packets).

Why not a library on the hot path: paho-mqtt and aiomqtt receive QoS 1 at 6-9 k messages/s
in one process here, aiomqtt acknowledges before our code runs, and gmqtt needs a Task per
message to delay its PUBACK (13.5 k/s). Parsing whole socket reads into batches and writing
all PUBACKs of a commit in one write reaches the broker's own limit (docs/architecture.md).

What it does: CONNECT with a persistent session, SUBSCRIBE, receive PUBLISH (QoS 0/1) in
batches, PUBACK on request strictly in arrival order, PUBLISH QoS 1 with PUBACK futures,
PINGREQ keepalive, TCP_NODELAY. Reconnects are the caller's loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.protocol.packets import (
    CONNACK,
    CONNACK_REASONS,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    SUBACK,
    Lookahead,
    Message,
    MqttError,
    PublishFraming,
    encode_connect,
    encode_pubacks,
    encode_publish,
    encode_subscribe,
    split_packets,
)

logger = logging.getLogger(__name__)


@dataclass
class _Outgoing:
    packet: bytes
    future: asyncio.Future[None]


@dataclass
class ClientConfig:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    clean_session: bool = False
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    will: tuple[str, bytes, int, bool] | None = None
    max_unacked: int = 20_000  # incoming QoS 1 we hold before pausing the socket


RAW_MAX_BYTES = 32 * 2**20  # reads held unsplit before the socket pauses


class MqttClient(asyncio.Protocol):
    """One connection. `on_batch(messages)` gets every socket read's complete PUBLISHes."""

    def __init__(
        self,
        config: ClientConfig,
        on_batch: Callable[[list[Message]], None],
        generation: int = 0,
        lookahead: Lookahead | None = None,
    ) -> None:
        self.config = config
        self.on_batch = on_batch
        self.lookahead = lookahead
        self._framing = PublishFraming()
        self.generation = generation
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._raw: deque[bytes] = deque()  # reads not yet split (with a lookahead)
        self._raw_bytes = 0
        self._split_scheduled = False
        self._connack: asyncio.Future[int] | None = None
        self._suback: dict[int, asyncio.Future[bytes]] = {}
        self._outgoing: dict[int, _Outgoing] = {}
        self._next_pid = 0
        self.closed: asyncio.Future[Exception | None] | None = None
        self._unacked = 0
        self._paused = False
        self._ping_task: asyncio.Task[None] | None = None
        self.received = 0

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    async def connect(
        cls,
        config: ClientConfig,
        on_batch: Callable[[list[Message]], None],
        generation: int = 0,
        timeout_s: float = 10.0,
        lookahead: Lookahead | None = None,
    ) -> MqttClient:
        """With a `lookahead`, each socket read is looked into at once (framed PUBLISHes
        only); splitting it into messages (and `on_batch`) then waits its turn on the
        event loop, one read a turn."""
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(
                lambda: cls(config, on_batch, generation, lookahead), config.host, config.port
            ),
            timeout_s,
        )
        try:
            await asyncio.wait_for(proto._handshake(), timeout_s)
        except BaseException:
            proto.close()
            raise
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self.closed = loop.create_future()

    async def _handshake(self) -> None:
        c = self.config
        assert self.transport is not None and self._connack is not None
        self.transport.write(
            encode_connect(
                c.client_id, c.username, c.password, c.keepalive_s, c.clean_session, c.will
            )
        )
        code = await self._connack
        if code:
            raise MqttError(f"broker refused the connection: {CONNACK_REASONS.get(code, code)}")
        if c.subscriptions:
            granted = await self.subscribe(c.subscriptions)
            if any(g == 0x80 for g in granted):
                raise MqttError(f"subscription refused: {c.subscriptions}")
        self._ping_task = asyncio.get_running_loop().create_task(self._pinger())

    async def _pinger(self) -> None:
        while self.transport is not None and not self.transport.is_closing():
            await asyncio.sleep(self.config.keepalive_s / 2)
            if self.transport is not None:
                self.transport.write(bytes([PINGREQ, 0]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        while self._raw:  # reads of this connection are split now, under its generation
            data = self._raw.popleft()
            self._raw_bytes -= len(data)
            try:
                self._split(data)
            except Exception:  # a broken last read must not keep the loss from being seen
                logger.exception("splitting the last reads of a lost connection")
        err = exc or MqttError("connection closed")
        for fut in [
            self._connack,
            *self._suback.values(),
            *(o.future for o in self._outgoing.values()),
        ]:
            if fut is not None and not fut.done():
                fut.set_exception(err)
        self._outgoing.clear()
        if self._ping_task is not None:
            self._ping_task.cancel()
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(exc)

    def close(self, graceful: bool = True) -> None:
        if self.transport is not None:
            if graceful:
                self.transport.write(bytes([DISCONNECT, 0]))
            self.transport.close()

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # ---------------------------------------------------------------- receive
    def data_received(self, data: bytes) -> None:
        look = self.lookahead
        if look is None:
            self._split(data)
            return
        # libuv hands over up to 32 reads in a row: each is looked into now (cheap), and
        # split into messages one per loop turn, so the loop never stops for a whole backlog
        found = self._framing.feed(data, look.marks)
        if found:
            look.deliver(found)
        self._raw.append(data)
        self._raw_bytes += len(data)
        if not self._split_scheduled:
            self._split_scheduled = True
            asyncio.get_running_loop().call_soon(self._split_next)
        if self._raw_bytes > RAW_MAX_BYTES and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def _split_next(self) -> None:
        self._split_scheduled = False
        if not self._raw:
            return
        data = self._raw.popleft()
        self._raw_bytes -= len(data)
        if self._raw:
            self._split_scheduled = True
            asyncio.get_running_loop().call_soon(self._split_next)
        self._split(data)
        if (
            self._paused
            and self._raw_bytes <= RAW_MAX_BYTES // 2
            and self._unacked < self.config.max_unacked // 2
            and self.transport
        ):
            self._paused = False
            self.transport.resume_reading()

    def _split(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
        try:
            batch, packets, used = split_packets(data)
        except (MqttError, IndexError):
            logger.error("malformed packet from the broker; closing the connection")
            self.close(graceful=False)
            return
        self._buf = data[used:]
        if batch:
            self._unacked += sum(1 for m in batch if m.qos)
        for first, body in packets:
            kind = first & 0xF0
            if kind == PUBACK:
                pid = (body[0] << 8) | body[1]
                out = self._outgoing.pop(pid, None)
                if out is not None and not out.future.done():
                    out.future.set_result(None)
            elif kind == CONNACK:
                if self._connack is not None and not self._connack.done():
                    self._connack.set_result(body[1])
            elif kind == SUBACK:
                pid = (body[0] << 8) | body[1]
                fut = self._suback.pop(pid, None)
                if fut is not None and not fut.done():
                    fut.set_result(bytes(body[2:]))
            # PINGRESP and anything else: nothing to do
        if batch:
            self.received += len(batch)
            self.on_batch(batch)
        if self._unacked >= self.config.max_unacked and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()  # back-pressure: the broker keeps the rest

    def ack(self, packet_ids: Sequence[int]) -> None:
        """PUBACK, in the order received, messages whose work is durable."""
        if not packet_ids or self.transport is None:
            return
        self.transport.write(encode_pubacks(packet_ids))
        self._unacked -= len(packet_ids)
        if (
            self._paused
            and self._unacked < self.config.max_unacked // 2
            and self._raw_bytes <= RAW_MAX_BYTES // 2
        ):
            self._paused = False
            self.transport.resume_reading()

    @property
    def unacked(self) -> int:
        return self._unacked

    # ---------------------------------------------------------------- send
    def _pid(self) -> int:
        for _ in range(65535):
            self._next_pid = self._next_pid % 65535 + 1
            if self._next_pid not in self._outgoing and self._next_pid not in self._suback:
                return self._next_pid
        raise MqttError("no free packet id")

    async def subscribe(self, topics: Sequence[tuple[str, int]]) -> bytes:
        assert self.transport is not None
        pid = self._pid()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._suback[pid] = fut
        self.transport.write(encode_subscribe(pid, topics))
        return await fut

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, dup: bool = False
    ) -> asyncio.Future[None]:
        """Write a PUBLISH now; the future completes on PUBACK (at once for QoS 0)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self.transport is None or self.transport.is_closing():
            fut.set_exception(MqttError("not connected"))
            return fut
        if qos == 0:
            self.transport.write(encode_publish(topic, payload, 0, retain=retain))
            fut.set_result(None)
            return fut
        pid = self._pid()
        packet = encode_publish(topic, payload, 1, pid, retain, dup)
        self._outgoing[pid] = _Outgoing(packet, fut)
        self.transport.write(packet)
        return fut
