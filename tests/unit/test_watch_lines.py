"""`gas-safety watch` shows each message decoded by the protocol's own decoders."""

from __future__ import annotations

import json

from gateway.ops.watch import describe, topics


def test_topics_cover_the_chosen_devices_and_channels() -> None:
    assert topics("gas/v1", ["d1"], ["telemetry", "ack"]) == ["gas/v1/d1/telemetry",
                                                             "gas/v1/d1/ack"]
    assert topics("gas/v1", [], ["event"]) == ["gas/v1/+/event"]


def test_readings_events_and_commands_are_decoded() -> None:
    det = describe("gas/v1/d1/telemetry", b'{"seq":1,"ts":5,"ch4":42.5,"fault":0}',
                   "gas/v1", 10.0)
    assert det is not None and det.fields["ch4"] == 42.5 and det.error is None
    met = describe("gas/v1/m1/telemetry", json.dumps(
        {"seq": 2, "ts": 5, "vol": 1.5, "flow": 0.2, "valve": "closed", "batt": 3.6,
         "rssi": -70}).encode(), "gas/v1", 10.0)
    assert met is not None and met.fields["valve"] == "closed"
    cmd = describe("gas/v1/m1/cmd", b'{"cmd_id":"c1","action":"valve_close","reason":"leak",'
                   b'"ts":5}', "gas/v1", 10.0)
    assert cmd is not None and cmd.fields["action"] == "valve_close"
    assert "valve_close" in cmd.text() and json.loads(cmd.json())["device"] == "m1"


def test_an_invalid_payload_shows_its_reason_and_foreign_topics_are_skipped() -> None:
    bad = describe("gas/v1/d1/telemetry", b'{"seq":1', "gas/v1", 10.0)
    assert bad is not None and bad.error and bad.text().split()[-1] != ""
    assert "invalid:" in bad.text()
    assert describe("other/v1/d1/telemetry", b"{}", "gas/v1", 10.0) is None
    assert describe("gas/v1/d1/nothing", b"{}", "gas/v1", 10.0) is None
