"""MQTT 3.1.1 packets, built and parsed by hand: just what a device or a fleet bridge sends.

Pure byte functions, no sockets. The publisher pipelines thousands of QoS 1 PUBLISH packets
per write and counts PUBACKs from whole chunks, which is what lets one Python process
outrun paho several times over (simulator/link.py drives it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# one codec for the project: the packet constants and encoders are the gateway's, re-exported
# (`X as X`) for the simulator's link
from gateway.protocol.packets import CONNACK as CONNACK
from gateway.protocol.packets import CONNACK_REASONS, remaining_length
from gateway.protocol.packets import CONNECT as CONNECT
from gateway.protocol.packets import DISCONNECT as DISCONNECT
from gateway.protocol.packets import PINGREQ as PINGREQ
from gateway.protocol.packets import PINGRESP as PINGRESP
from gateway.protocol.packets import PUBACK as PUBACK
from gateway.protocol.packets import PUBLISH as PUBLISH
from gateway.protocol.packets import SUBACK as SUBACK
from gateway.protocol.packets import SUBSCRIBE as SUBSCRIBE
from gateway.protocol.packets import encode_connect as connect
from gateway.protocol.packets import encode_subscribe as subscribe

__all__ = [
    "CONNACK",
    "CONNECT",
    "DISCONNECT",
    "PINGREQ",
    "PINGRESP",
    "PUBACK",
    "PUBLISH",
    "SUBACK",
    "SUBSCRIBE",
    "connect",
    "remaining_length",
    "subscribe",
]

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
CONNACK_CODES = {0: "accepted", **CONNACK_REASONS}


class ProtocolError(Exception):
    """The broker sent something this client cannot parse."""


def publish(
    topic: bytes,
    payload: bytes,
    packet_id: int = 0,
    qos: int = 1,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """One PUBLISH; `topic` already UTF-8 encoded (callers keep it per device)."""
    head = PUBLISH | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    n = 2 + len(topic) + (2 if qos else 0) + len(payload)
    pid = packet_id.to_bytes(2, "big") if qos else b""
    return b"".join(
        (bytes([head]), remaining_length(n), len(topic).to_bytes(2, "big"), topic, pid, payload)
    )


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class Packet:
    type: int  # high nibble of the first byte
    flags: int  # low nibble
    body: bytes


def read_packet(buf: bytes | bytearray, pos: int = 0) -> tuple[Packet | None, int]:
    """The complete packet starting at `pos` and the position after it, or (None, pos)."""
    end = len(buf)
    if end - pos < 2:
        return None, pos
    first = buf[pos]
    mult, n, i = 1, 0, pos + 1
    while True:
        if i >= end:
            return None, pos
        byte = buf[i]
        n += (byte & 0x7F) * mult
        i += 1
        if not byte & 0x80:
            break
        mult <<= 7
        if mult > 128**3:
            raise ProtocolError("remaining length longer than 4 bytes")
    if end - i < n:
        return None, pos
    return Packet(first & 0xF0, first & 0x0F, bytes(buf[i : i + n])), i + n


def split(buf: bytearray) -> Iterator[Packet]:
    """Yield complete packets from the front of `buf` and remove them; keep a partial tail."""
    pos = 0
    while True:
        pkt, nxt = read_packet(buf, pos)
        if pkt is None:
            break
        pos = nxt
        yield pkt
    del buf[:pos]


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    packet_id: int
    retain: bool
    dup: bool


def parse_publish(p: Packet) -> Message:
    body = p.body
    tlen = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + tlen].decode("utf-8", "replace")
    qos = (p.flags >> 1) & 0x03
    pos = 2 + tlen
    pid = 0
    if qos:
        pid = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
    return Message(topic, body[pos:], qos, pid, bool(p.flags & 0x01), bool(p.flags & 0x08))
