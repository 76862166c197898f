"""Protocol v1: the shared conformance vectors and the topic grammar, without services."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import protocol
from gateway.protocol import Channel, Rejected, RejectReason

CASES = json.loads((Path(__file__).parents[1] / "data/cases.json").read_text())["cases"]
# What the decoder alone can decide; device-level checks live in the gateway tests.
GATEWAY_LEVEL = {"unknown_device", "ack_unknown_cmd", "clock_far_future"}


def _payload(case: dict) -> bytes:
    if "raw" in case:
        return case["raw"].encode()
    if "raw_hex" in case:
        return bytes.fromhex(case["raw_hex"])
    if "raw_repeat" in case:
        r = case["raw_repeat"]
        return (r["prefix"] + r["fill"] * r["count"] + r["suffix"]).encode()
    return json.dumps(case["payload"]).encode()


def _decode(case: dict) -> object:
    t = protocol.parse_topic(case["topic"].replace("{detector}", "d1").replace("{meter}", "m1"))
    cls = {Channel.TELEMETRY: protocol.MeterReading if t.device_id == "m1"
           else protocol.DetectorReading, Channel.ACK: protocol.Ack,
           Channel.EVENT: protocol.DeviceEvent, Channel.STATUS: protocol.Status}[t.channel]
    return protocol.decode(cls, _payload(case), t.device_id)


@pytest.mark.parametrize("case", [c for c in CASES if c["name"] not in GATEWAY_LEVEL],
                         ids=lambda c: c["name"])
def test_conformance_vector(case: dict) -> None:
    if case["expect"] == "reject":
        with pytest.raises(Rejected) as err:
            _decode(case)
        assert err.value.detail  # a precise, human reason
    else:
        assert _decode(case) is not None


@pytest.mark.parametrize("name,reason", [
    ("malformed_json", RejectReason.NOT_JSON), ("not_utf8", RejectReason.NOT_UTF8),
    ("json_not_object", RejectReason.NOT_OBJECT), ("missing_ch4", RejectReason.MISSING_FIELD),
    ("ch4_string", RejectReason.WRONG_TYPE), ("ch4_above_100", RejectReason.OUT_OF_RANGE),
    ("ch4_negative", RejectReason.OUT_OF_RANGE), ("ch4_nan", RejectReason.NOT_JSON),
    ("seq_negative", RejectReason.OUT_OF_RANGE), ("seq_too_large", RejectReason.OUT_OF_RANGE),
    ("flow_negative", RejectReason.OUT_OF_RANGE),
    ("valve_unknown_state", RejectReason.UNKNOWN_VALVE_STATE),
    ("detector_payload_on_meter", RejectReason.MISSING_FIELD),
    ("bad_device_id", RejectReason.BAD_DEVICE_ID), ("unknown_channel", RejectReason.UNKNOWN_CHANNEL),
    ("oversized", RejectReason.OVERSIZED),
])
def test_reject_reasons(name: str, reason: RejectReason) -> None:
    case = next(c for c in CASES if c["name"] == name)
    with pytest.raises(Rejected) as err:
        _decode(case)
    assert err.value.reason is reason


def test_topics_round_trip() -> None:
    name = protocol.topic("m-01_x", Channel.CMD)
    assert name == "gas/v1/m-01_x/cmd"
    assert protocol.parse_topic(name) == protocol.Topic("m-01_x", Channel.CMD)
    with pytest.raises(Rejected) as err:
        protocol.parse_topic("other/v1/m1/telemetry")
    assert err.value.reason is RejectReason.BAD_TOPIC
    with pytest.raises(Rejected):
        protocol.parse_topic("gas/v1/" + "x" * 65 + "/telemetry")


def test_command_encoding_is_what_devices_expect() -> None:
    raw = protocol.encode(protocol.Command("c-1", "valve_close", "leak", 1.5))
    assert json.loads(raw) == {"cmd_id": "c-1", "action": "valve_close", "reason": "leak",
                               "ts": 1.5}


@given(st.binary(max_size=300))
def test_decoder_never_raises_anything_but_rejected(payload: bytes) -> None:
    for cls in (protocol.DetectorReading, protocol.MeterReading, protocol.Ack, protocol.Status,
                protocol.DeviceEvent):
        try:
            protocol.decode(cls, payload, "d1")
        except Rejected as err:
            assert err.reason in RejectReason


json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) |
                           st.integers() | st.text(max_size=10),
                           lambda kids: st.lists(kids, max_size=4) |
                           st.dictionaries(st.sampled_from(["seq", "ts", "ch4", "fault", "vol",
                                                            "flow", "valve", "batt", "x"]),
                                           kids, max_size=6), max_leaves=12)


@given(json_values)
def test_structured_fuzz_gives_a_reading_or_a_reason(doc: object) -> None:
    payload = msgspec.json.encode(doc)
    try:
        r = protocol.decode(protocol.DetectorReading, payload, "d1")
    except Rejected as err:
        assert err.reason in RejectReason
    else:
        assert 0 <= r.ch4 <= 100 and 0 <= r.seq < 2**32
