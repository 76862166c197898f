"""The gateway's MQTT packet codec: what the broker sends is split exactly, whatever the reads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.packets import (
    MqttError,
    decode_publish,
    encode_pubacks,
    encode_publish,
    parse_packets,
    split_packets,
)

publishes = st.lists(st.tuples(
    st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=40),
    st.binary(max_size=300), st.sampled_from([0, 1]), st.integers(1, 65535), st.booleans()),
    min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(publishes, st.lists(st.integers(1, 65535), max_size=5), st.integers(1, 97))
def test_split_packets_matches_the_reference_over_any_read_boundaries(pubs, acks, cut) -> None:
    stream = b"".join(encode_publish(t, p, q, pid, False, dup) for t, p, q, pid, dup in pubs)
    stream += encode_pubacks(acks)
    expected = [decode_publish(f, b) for f, b in parse_packets(stream)[0] if f & 0xF0 == 0x30]
    got, others, buf = [], [], b""
    for k in range(0, len(stream), cut):  # the socket hands over arbitrary pieces
        buf += stream[k:k + cut]
        msgs, other, used = split_packets(buf)
        got += msgs
        others += other
        buf = buf[used:]
    assert buf == b""
    assert got == expected
    assert [(f, b) for f, b in others] == [(0x40, pid.to_bytes(2, "big")) for pid in acks]


def test_a_topic_longer_than_its_packet_is_refused() -> None:
    pkt = bytearray(encode_publish("gas/v1/d1/telemetry", b"{}", 1, 7))
    pkt[2:4] = (200).to_bytes(2, "big")  # topic length beyond the packet
    with pytest.raises(MqttError):
        split_packets(bytes(pkt) + b"\x00" * 300)
