"""A minimal MQTT 3.1.1 client on an asyncio Protocol, built for acknowledge-after-commit.

Why not a library on the hot path: paho-mqtt and aiomqtt receive QoS 1 at 6-9 k messages/s
in one process here, aiomqtt acknowledges before our code runs, and gmqtt needs a Task per
message to delay its PUBACK (13.5 k/s). Parsing whole socket reads into batches and writing
all PUBACKs of a commit in one write reaches the broker's own limit (shared/MEASUREMENTS.md).

What it does: CONNECT with a persistent session, SUBSCRIBE, receive PUBLISH (QoS 0/1) in
batches, PUBACK on request strictly in arrival order, PUBLISH QoS 1 with PUBACK futures,
PINGREQ keepalive, TCP_NODELAY. Reconnects are the caller's loop (`run_forever`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
_CONNACK_REASONS = {1: "unacceptable protocol version", 2: "identifier rejected",
                    3: "server unavailable", 4: "bad user name or password", 5: "not authorised"}


class MqttError(Exception):
    """The broker refused us or the connection broke."""


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    packet_id: int  # 0 for QoS 0
    dup: bool
    retain: bool


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def encode_connect(client_id: str, username: str | None, password: str | None,
                   keepalive_s: int, clean_session: bool,
                   will: tuple[str, bytes, int, bool] | None = None) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _utf8(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _utf8(topic) + struct.pack("!H", len(message)) + message
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + payload
    return bytes([CONNECT]) + _remaining_length(len(body)) + body


def encode_publish(topic: str, payload: bytes, qos: int, packet_id: int = 0,
                   retain: bool = False, dup: bool = False) -> bytes:
    head = PUBLISH | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    body = _utf8(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([head]) + _remaining_length(len(body)) + body


def encode_subscribe(packet_id: int, topics: Sequence[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_utf8(t) + bytes([q]) for t, q in topics)
    return bytes([SUBSCRIBE]) + _remaining_length(len(body)) + body


def encode_pubacks(packet_ids: Sequence[int]) -> bytes:
    return b"".join(b"\x40\x02" + struct.pack("!H", pid) for pid in packet_ids)


def _remaining_length_at(buf: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """The remaining length of the packet at `pos` and where its body starts; None when
    the read ends inside the length field."""
    mult, length, i = 1, 0, pos + 1
    while True:
        if i >= end:
            return None
        byte = buf[i]
        length += (byte & 0x7F) * mult
        mult *= 128
        i += 1
        if not byte & 0x80:
            return length, i
        if mult > 128**3:
            raise MqttError("malformed remaining length")


def parse_packets(buf: bytes) -> tuple[list[tuple[int, memoryview]], int]:
    """Split complete packets off the front of `buf`: [(first byte, body)], bytes used."""
    packets: list[tuple[int, memoryview]] = []
    view = memoryview(buf)
    pos, end = 0, len(buf)
    while pos + 2 <= end:
        head = _remaining_length_at(buf, pos, end)
        if head is None:
            break
        length, i = head
        if i + length > end:
            break
        packets.append((buf[pos], view[i:i + length]))
        pos = i + length
    return packets, pos


def split_packets(buf: bytes) -> tuple[list[Message], list[tuple[int, bytes]], int]:
    """One pass over a socket read: PUBLISHes straight to Messages, other packets as
    (first byte, body); and the bytes used (an incomplete packet stays for the next read).
    The hot path of ingest: about 40 % cheaper than parse_packets + decode_publish."""
    msgs: list[Message] = []
    other: list[tuple[int, bytes]] = []
    pos, end = 0, len(buf)
    while pos + 2 <= end:
        first = buf[pos]
        byte = buf[pos + 1]
        if byte < 0x80:  # remaining length in one byte: most packets
            length, i = byte, pos + 2
        else:
            head = _remaining_length_at(buf, pos, end)
            if head is None:
                break
            length, i = head
        stop = i + length
        if stop > end:
            break
        if first & 0xF0 == PUBLISH:
            t_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
            qos = (first >> 1) & 0x03
            if qos:
                pid, p0 = (buf[t_end] << 8) | buf[t_end + 1], t_end + 2
            else:
                pid, p0 = 0, t_end
            if p0 > stop:
                raise MqttError("PUBLISH topic longer than its packet")
            msgs.append(Message(buf[i + 2:t_end].decode("utf-8", "replace"), buf[p0:stop], qos,
                                pid, bool(first & 0x08), bool(first & 0x01)))
        else:
            other.append((first, buf[i:stop]))
        pos = stop
    return msgs, other, pos


def decode_publish(first: int, body: memoryview) -> Message:
    qos = (first >> 1) & 0x03
    tlen = (body[0] << 8) | body[1]
    topic = bytes(body[2:2 + tlen]).decode("utf-8", "replace")
    pos = 2 + tlen
    packet_id = 0
    if qos:
        packet_id = (body[pos] << 8) | body[pos + 1]
        pos += 2
    return Message(topic, bytes(body[pos:]), qos, packet_id, bool(first & 0x08), bool(first & 0x01))


class PublishFraming:
    """Packet boundaries across one connection's socket reads, to look inside PUBLISHes as
    each read arrives, before the read waits its turn to be split into messages.

    Only PUBLISH packets lying whole in one read are offered, with the topic from their own
    header and the payload bounded by their own length: bytes inside one message's payload
    can never be taken for another message, whatever they look like. A packet cut in two
    by the reads is not offered here; the caller sees it when the reads are split.
    Walking the headers costs a few bytecodes a packet; payloads are only looked into
    where `marks` (a C regex over the whole read, usually finding nothing) points.
    """

    __slots__ = ("_broken", "_carry", "_skip")

    def __init__(self) -> None:
        self._carry = b""  # the start of a fixed header cut by the read (5 bytes at most)
        self._skip = 0  # bytes of a packet begun in an earlier read, still to come
        self._broken = False  # a malformed length: the splitter closes the connection

    def feed(self, data: bytes, marks: Callable[[bytes], list[int]]) -> list[Message]:
        """The whole PUBLISHes of this read whose payload holds one of `marks(read)`."""
        if self._broken:
            return []
        if self._carry:
            data = self._carry + data
            self._carry = b""
        end = len(data)
        pos = self._skip
        if pos >= end:
            self._skip = pos - end
            return []
        points = marks(data)
        found: list[Message] = []
        k, n_points = 0, len(points)
        while pos + 2 <= end:
            first = data[pos]
            byte = data[pos + 1]
            if byte < 0x80:
                length, i = byte, pos + 2
            else:
                try:
                    head = _remaining_length_at(data, pos, end)
                except MqttError:
                    self._broken = True
                    return found
                if head is None:
                    break
                length, i = head
            stop = i + length
            while k < n_points and points[k] < i:
                k += 1  # a mark in a header or a packet begun earlier: not a payload
            if k < n_points and points[k] < stop <= end and first & 0xF0 == PUBLISH \
                    and length >= 2:
                t_end = i + 2 + ((data[i] << 8) | data[i + 1])
                qos = (first >> 1) & 0x03
                p0 = t_end + 2 if qos else t_end
                if p0 <= stop:
                    while k < n_points and points[k] < p0:
                        k += 1  # in the topic or packet id
                    if k < n_points and points[k] < stop:
                        pid = (data[t_end] << 8) | data[t_end + 1] if qos else 0
                        found.append(Message(data[i + 2:t_end].decode("utf-8", "replace"),
                                             data[p0:stop], qos, pid, bool(first & 0x08),
                                             bool(first & 0x01)))
            pos = stop
        if pos >= end:
            self._skip = pos - end
        else:
            self._skip = 0
            self._carry = data[pos:]
        return found


@dataclass(frozen=True, slots=True)
class Lookahead:
    """What a client looks for in each read as it arrives: `marks(read)` gives offsets worth
    a look, and `deliver` gets the whole PUBLISHes holding them (see PublishFraming)."""

    marks: Callable[[bytes], list[int]]
    deliver: Callable[[list[Message]], object]


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

    def __init__(self, config: ClientConfig, on_batch: Callable[[list[Message]], None],
                 generation: int = 0, lookahead: Lookahead | None = None) -> None:
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
    async def connect(cls, config: ClientConfig, on_batch: Callable[[list[Message]], None],
                      generation: int = 0, timeout_s: float = 10.0,
                      lookahead: Lookahead | None = None) -> MqttClient:
        """With a `lookahead`, each socket read is looked into at once (framed PUBLISHes
        only); splitting it into messages (and `on_batch`) then waits its turn on the
        event loop, one read a turn."""
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: cls(config, on_batch, generation, lookahead),
                                   config.host, config.port), timeout_s)
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
        self.transport.write(encode_connect(c.client_id, c.username, c.password, c.keepalive_s,
                                            c.clean_session, c.will))
        code = await self._connack
        if code:
            raise MqttError(f"broker refused the connection: {_CONNACK_REASONS.get(code, code)}")
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
        for fut in [self._connack, *self._suback.values(),
                    *(o.future for o in self._outgoing.values())]:
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
        if self._paused and self._raw_bytes <= RAW_MAX_BYTES // 2 \
                and self._unacked < self.config.max_unacked // 2 and self.transport:
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
        if self._paused and self._unacked < self.config.max_unacked // 2 \
                and self._raw_bytes <= RAW_MAX_BYTES // 2:
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

    def publish(self, topic: str, payload: bytes, qos: int = 1,
                retain: bool = False, dup: bool = False) -> asyncio.Future[None]:
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
