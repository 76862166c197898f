"""MQTT packets built and parsed by hand."""

from __future__ import annotations

from simulator import wire


def test_publish_round_trip_and_partial_packets() -> None:
    pkts = [wire.publish(b"gas/v1/m1/telemetry", b'{"seq":%d}' % i, packet_id=i + 1)
            for i in range(3)]
    pkts.append(wire.publish(b"t", b"x" * 300, qos=0))  # two-byte remaining length
    stream = b"".join(pkts)
    buf = bytearray()
    got = []
    for k in range(0, len(stream), 7):  # arrives in awkward pieces
        buf += stream[k:k + 7]
        got += [wire.parse_publish(p) for p in wire.split(buf)]
    assert not buf
    assert [m.packet_id for m in got] == [1, 2, 3, 0]
    assert got[0].topic == "gas/v1/m1/telemetry" and got[2].payload == b'{"seq":2}'
    assert got[3].qos == 0 and len(got[3].payload) == 300


def test_remaining_length_encoding() -> None:
    assert wire.remaining_length(0) == b"\x00"
    assert wire.remaining_length(127) == b"\x7f"
    assert wire.remaining_length(128) == b"\x80\x01"
    assert wire.remaining_length(2_097_152) == b"\x80\x80\x80\x01"


def test_connect_carries_will_and_credentials() -> None:
    pkt = wire.connect("d1", "d1", "pw", 30, True, ("gas/v1/d1/status", b'{"online":false}', 1,
                                                       True))
    p, _ = wire.read_packet(pkt)
    assert p is not None and p.type == wire.CONNECT
    flags = p.body[7]
    assert flags & 0x04 and flags & 0x20 and (flags >> 3) & 3 == 1  # will, retained, QoS 1
    assert flags & 0x80 and flags & 0x40  # user name and password
    assert b'{"online":false}' in p.body
