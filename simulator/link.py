"""One MQTT connection, as a device or a fleet bridge: a minimal asyncio Protocol client.

Why not paho or gmqtt: a load generator must be cheaper than what it loads. This client
pipelines QoS 1 PUBLISH packets (many per socket write, packet ids allocated without locks),
counts PUBACKs straight from the byte stream, sets TCP_NODELAY, and keeps its own cap on
unacknowledged messages (Mosquitto 2.0 stops honouring the in-flight limit once PUBACKs
flow, docs/architecture.md). It also carries a last will, subscribes, answers incoming
QoS 1 messages, pings, and reconnects resending what was still unacknowledged (DUP set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from simulator import wire

logger = logging.getLogger(__name__)


class LinkError(ConnectionError):
    """The broker refused or dropped the connection; carries the client id."""

    def __init__(self, client_id: str, reason: str) -> None:
        super().__init__(f"{client_id}: {reason}")
        self.client_id = client_id
        self.reason = reason


@dataclass
class LinkStats:
    sent: int = 0
    acked: int = 0
    resent: int = 0
    received: int = 0
    bytes_sent: int = 0
    reconnects: int = 0
    # PUBACK round trips (s) of every `sample_every`-th message: cheap enough for 50 k/s.
    ack_rtt_s: list[float] = field(default_factory=list)


class _Protocol(asyncio.Protocol):
    def __init__(self, link: Link) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.link._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.link._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._on_lost(exc)

    def pause_writing(self) -> None:
        self.link._writable.clear()

    def resume_writing(self) -> None:
        self.link._writable.set()


class Link:
    """A connection to the broker; `publish` is synchronous and never blocks."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        *,
        keepalive_s: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
        on_message: Callable[[wire.Message], None] | None = None,
        max_inflight: int = 20_000,
        reconnect: bool = False,
        sample_every: int = 16,
    ) -> None:
        assert max_inflight < 65_000, "packet ids are 16 bits"
        self.host, self.port = host, port
        self.client_id, self.username, self.password = client_id, username, password
        self.keepalive_s, self.will = keepalive_s, will
        self.on_message = on_message
        self.max_inflight = max_inflight
        self.reconnect = reconnect
        self.sample_every = sample_every
        self.stats = LinkStats()
        self.inflight: dict[int, tuple[float, bytes]] = {}
        self.connected = False
        self.closing = False
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._next_id = 0
        self._connack: asyncio.Future[int] | None = None
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ping_task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[Exception | None] | None = None
        self._subscriptions: list[tuple[str, int]] = []

    # ------------------------------------------------------------ connect
    async def connect(self, timeout_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self.host, self.port), timeout_s
            )
        except OSError as err:
            raise LinkError(
                self.client_id, f"cannot reach {self.host}:{self.port}: {err}"
            ) from None
        assert self._transport is not None
        self._transport.write(
            wire.connect(
                self.client_id, self.username, self.password, self.keepalive_s, True, self.will
            )
        )
        try:
            code = await asyncio.wait_for(asyncio.shield(self._connack), timeout_s)
        except TimeoutError:
            self._abort_transport()
            raise LinkError(self.client_id, "no CONNACK") from None
        if code != 0:
            self._abort_transport()
            reason = (
                "connection closed before CONNACK"
                if code == 255
                else wire.CONNACK_CODES.get(code, str(code))
            )
            raise LinkError(self.client_id, f"refused: {reason}")
        self.connected = True
        if self._ping_task is None:
            self._ping_task = asyncio.create_task(self._pinger())

    def _abort_transport(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def subscribe(self, topics: list[tuple[str, int]], timeout_s: float = 10.0) -> bytes:
        """Subscribe and wait for SUBACK; returns the granted QoS bytes (0x80 = refused)."""
        self._subscriptions = [*self._subscriptions, *topics]
        return await self._subscribe(topics, timeout_s)

    async def _subscribe(self, topics: list[tuple[str, int]], timeout_s: float) -> bytes:
        pid = self._alloc_id()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._subacks[pid] = fut
        self._write(wire.subscribe(pid, topics))
        try:
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._subacks.pop(pid, None)

    # ------------------------------------------------------------ publish
    @property
    def free(self) -> int:
        """How many more QoS 1 messages may go out before PUBACKs come back."""
        return self.max_inflight - len(self.inflight)

    def _alloc_id(self) -> int:
        inflight = self.inflight
        nid = self._next_id
        while True:
            nid = nid % 65_535 + 1
            if nid not in inflight and nid not in self._subacks:
                self._next_id = nid
                return nid

    def publish(self, topic: bytes, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue one message on the socket now; returns its packet id (0 for QoS 0)."""
        pid = 0
        if qos:
            pid = self._alloc_id()
            pkt = wire.publish(topic, payload, pid, qos, retain)
            self.inflight[pid] = (time.time(), pkt)
            self._idle.clear()
            if len(self.inflight) >= self.max_inflight:
                self._space.clear()
        else:
            pkt = wire.publish(topic, payload, 0, 0, retain)
        self.stats.sent += 1
        self._write(pkt)
        return pid

    def publish_many(self, items: Iterable[tuple[bytes, bytes]], qos: int = 1) -> int:
        """Pipeline many messages in one socket write; the caller respects `free`."""
        inflight = self.inflight
        now = time.time()
        parts: list[bytes] = []
        nid = self._next_id
        n = 0
        pub = wire.PUBLISH | (qos << 1)
        rl = wire.remaining_length
        for topic, payload in items:
            if qos:
                while True:
                    nid = nid % 65_535 + 1
                    if nid not in inflight and nid not in self._subacks:
                        break
                length = 4 + len(topic) + len(payload)
                pkt = b"".join(
                    (
                        bytes((pub,)),
                        rl(length),
                        len(topic).to_bytes(2, "big"),
                        topic,
                        nid.to_bytes(2, "big"),
                        payload,
                    )
                )
                inflight[nid] = (now, pkt)
            else:
                length = 2 + len(topic) + len(payload)
                pkt = b"".join(
                    (bytes((pub,)), rl(length), len(topic).to_bytes(2, "big"), topic, payload)
                )
            parts.append(pkt)
            n += 1
        self._next_id = nid
        if not n:
            return 0
        if qos:
            self._idle.clear()
            if len(inflight) >= self.max_inflight:
                self._space.clear()
        self.stats.sent += n
        self._write(b"".join(parts))
        return n

    def _write(self, data: bytes) -> None:
        self.stats.bytes_sent += len(data)
        if self._transport is not None and self.connected:
            self._transport.write(data)
        # while disconnected, QoS 1 packets wait in `inflight` and go out on reconnect

    async def wait_space(self) -> None:
        await self._space.wait()

    async def wait_writable(self) -> None:
        await self._writable.wait()

    async def wait_acked(self, timeout_s: float) -> bool:
        """Wait until every QoS 1 message has its PUBACK; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------ receive
    def _on_data(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        inflight = self.inflight
        stats = self.stats
        sample = self.sample_every
        pos, end = 0, len(buf)
        acked = 0
        now = 0.0
        while pos < end:
            # Fast path: 4-byte PUBACKs, the bulk of what a publisher receives.
            if buf[pos] == 0x40 and pos + 4 <= end and buf[pos + 1] == 2:
                pid = (buf[pos + 2] << 8) | buf[pos + 3]
                entry = inflight.pop(pid, None)
                if entry is not None:
                    acked += 1
                    if pid % sample == 0:
                        if not now:
                            now = time.time()
                        stats.ack_rtt_s.append(now - entry[0])
                pos += 4
                continue
            pkt, nxt = wire.read_packet(buf, pos)
            if pkt is None:
                break
            pos = nxt
            self._on_packet(pkt)
        if pos:
            del buf[:pos]
        if acked:
            stats.acked += acked
        if not inflight:
            self._idle.set()
        if len(inflight) < self.max_inflight:
            self._space.set()

    def _on_packet(self, p: wire.Packet) -> None:
        if p.type == wire.PUBLISH:
            msg = wire.parse_publish(p)
            self.stats.received += 1
            if msg.qos == 1:
                self._write(wire.puback(msg.packet_id))
            if self.on_message is not None:
                try:
                    self.on_message(msg)
                except Exception:  # one bad handler call must not kill the connection
                    logger.exception(
                        "message handler failed client=%s topic=%s", self.client_id, msg.topic
                    )
        elif p.type == wire.PUBACK:
            pid = int.from_bytes(p.body[:2], "big")
            if self.inflight.pop(pid, None) is not None:
                self.stats.acked += 1
        elif p.type == wire.CONNACK:
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(p.body[1] if len(p.body) > 1 else 255)
        elif p.type == wire.SUBACK:
            pid = int.from_bytes(p.body[:2], "big")
            fut = self._subacks.get(pid)
            if fut is not None and not fut.done():
                fut.set_result(p.body[2:])

    def _on_lost(self, exc: Exception | None) -> None:
        was_connected = self.connected
        self.connected = False
        self._transport = None
        self._buf.clear()
        self._writable.set()
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(255)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(exc)
        if self.reconnect and not self.closing and was_connected:
            asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.2
        while not self.closing:
            await asyncio.sleep(delay)
            try:
                await self.connect()
            except LinkError as err:
                logger.warning("reconnect failed: %s", err)
                delay = min(delay * 2, 5.0)
                continue
            self.stats.reconnects += 1
            if self._subscriptions:
                await self._subscribe(self._subscriptions, 10.0)
            # Resend what the broker never acknowledged, in order, with DUP set.
            if self.inflight and self._transport is not None:
                pkts = [bytes((pkt[0] | 0x08,)) + pkt[1:] for _, pkt in self.inflight.values()]
                self.stats.resent += len(pkts)
                self._transport.write(b"".join(pkts))
            return

    async def _pinger(self) -> None:
        interval = max(1.0, self.keepalive_s / 2)
        while not self.closing:
            await asyncio.sleep(interval)
            if self.connected and self._transport is not None:
                self._transport.write(wire.PINGREQ_PACKET)

    # ------------------------------------------------------------ close
    async def disconnect(self) -> None:
        """Clean DISCONNECT: the broker discards the last will."""
        self.closing = True
        if self._ping_task is not None:
            self._ping_task.cancel()
        if self._transport is not None:
            self._transport.write(wire.DISCONNECT_PACKET)
            self._transport.close()
        if self._lost is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._lost), 2.0)

    def abort(self) -> None:
        """Drop the socket without DISCONNECT, as a dead battery would: the will fires."""
        self.closing = True
        if self._ping_task is not None:
            self._ping_task.cancel()
        if self._transport is not None:
            self._transport.abort()
