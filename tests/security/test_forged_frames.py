"""A device can only ever act for itself: bytes shaped like other devices' PUBLISH packets,
inside one device's own payload, never reach another household.

The attack this guards against: a detector publishes, on its own telemetry topic, a payload
made of forged PUBLISH frames of other households' detectors reading 100 %LEL. A gateway
that looks for leaks in raw socket reads without framing them closed the victims' valves.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from feed import Harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import wait_row

from gateway.protocol.packets import PublishFraming, encode_publish, split_packets


def forged(device_id: str, seq: int, ch4: float = 100.0, qos: int = 1) -> bytes:
    body = json.dumps({"seq": seq, "ts": time.time(), "ch4": ch4, "fault": 0}).encode()
    return encode_publish(f"gas/v1/{device_id}/telemetry", body, qos, seq % 65535 + 1)


def run_like_the_service(h: Harness, stream: bytes, cuts: list[int]) -> None:
    """Feed a byte stream as the service does: each read is looked into as it arrives,
    then split into messages (the first triaged again) and judged in order."""
    framing, buf = PublishFraming(), b""
    bounds = sorted({c for c in cuts if 0 < c < len(stream)})
    for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True):
        read = stream[a:b]
        h.gw.triage(framing.feed(read, h.gw.instant_marks), h.now)
        buf += read
        msgs, _, used = split_packets(buf)
        buf = buf[used:]
        if msgs:
            h.gw.triage(msgs[:1], h.now)
            h.gw.handle(msgs, h.now)


def assert_only_household_one_was_touched(h: Harness) -> None:
    assert set(h.closes()) <= {"m1"}, h.closes()
    for batch in [*h.submitted, h.gw.batch]:
        assert {a.household_id for a in batch.alarms} <= {"h1"}
        assert {w.household_id for w in batch.work_orders} <= {"h1"}
        assert {n.household_id for n in batch.notifications} <= {"h1"}
        assert {r[1] for r in batch.rejects} <= {"d1"}
    for other in ("d2", "d3", "m2", "m3"):  # never even a reading of theirs
        assert h.gw.last_seq[h.gw.registry.index[other]] == -1, other


frames = st.lists(st.one_of(
    st.builds(forged, st.sampled_from(["d2", "d3", "m2", "d1"]), st.integers(1, 1000),
              st.sampled_from([40.0, 45.5, 100.0]), st.sampled_from([0, 1])),
    st.binary(max_size=40),
    st.sampled_from([b'{"seq":1,"ts":1,"ch4":100,"fault":0}', b"\x30", b"\x32\x7f",
                     b'"ch4": 99', b"\xff\xff\xff\x7f"])), max_size=12).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=frames, qos=st.sampled_from([0, 1]), cuts=st.lists(st.integers(0, 3000),
                                                                   max_size=6))
def test_any_payload_of_device_one_acts_for_household_one_only(payload: bytes, qos: int,
                                                               cuts: list[int]) -> None:
    h = Harness()
    meter = json.dumps({"seq": 1, "ts": h.now, "vol": 1.0, "flow": 0.2, "valve": "open",
                        "batt": 3.6, "rssi": -70}).encode()
    stream = encode_publish("gas/v1/m1/telemetry", meter, 1, 6) \
        + encode_publish("gas/v1/d1/telemetry", payload, qos, 7 if qos else 0)
    run_like_the_service(h, stream, cuts)
    assert_only_household_one_was_touched(h)


def test_a_payload_of_forged_frames_is_rejected_for_its_publisher_alone() -> None:
    h = Harness()
    payload = b"".join(forged(d, s) for s in range(1, 200) for d in ("d2", "d3"))
    stream = encode_publish("gas/v1/d1/telemetry", payload, 1, 9)
    run_like_the_service(h, stream, [len(stream) // 3, len(stream) // 2])
    assert h.closes() == []
    assert h.gw.metrics.value("gas_fast_lane_cuts_total") == 0
    rejects = [r for b in [*h.submitted, h.gw.batch] for r in b.rejects]
    assert [(r[1], r[2]) for r in rejects] == [("d1", "gas/v1/d1/telemetry")]


# ---------------------------------------------------------------- the real broker and gateway

@pytest.mark.services
def test_two_megabytes_of_forged_frames_close_nothing_outside_the_publisher(
        gateway: Any, fleet: Any, devices: Any, dsn: str) -> None:
    attacker_home, *victims = fleet(3)
    gateway.wait_devices(dsn)
    victim_meters = [devices(v.meter.id) for v in victims]
    own_meter = devices(attacker_home.meter.id)
    attacker = devices(attacker_home.detectors[0].id)
    targets = [d.id for v in victims for d in v.detectors]
    frame_qos = [forged(t, s, qos=q) for s in range(1, 2000) for t in targets for q in (0, 1)]
    payload = bytearray()
    i = 0
    while len(payload) < 1_990_000:  # the broker's max_packet_size is 2,000,000
        payload += frame_qos[i % len(frame_qos)]
        i += 1
    attacker.publish("telemetry", bytes(payload[:1_990_000]))
    # and a small one: exactly the finding's shape, one forged frame in the payload
    attacker.publish("telemetry", forged(targets[0], 5000))
    # the attacker's own real leak afterwards: once its valve closes, everything before it
    # on the same connection has been judged
    t_pub = attacker.detector(45.0)
    t_cmd, cmd = own_meter.commands.get(timeout=10)
    assert cmd["action"] == "valve_close" and t_cmd >= t_pub
    for meter in victim_meters:
        assert meter.commands.empty(), meter.commands.get_nowait()
    victim_ids = [v.id for v in victims]
    # both forged payloads: counted against their publisher
    wait_row(dsn, "SELECT count(*) FROM rejects WHERE device_id = %s", (attacker.id,),
             cond=lambda r: r[0][0] >= 2, what="both forged payloads rejected")
    with psycopg.connect(dsn) as conn:
        # (the victims' own meters may be past their service life: that alarm is theirs)
        checks = {
            "alarms": "device_id = ANY(%(targets)s)",
            "valve_commands": "household_id = ANY(%(homes)s)",
            "work_orders": "household_id = ANY(%(homes)s) AND cause IN ('leak', 'gas_warning')",
            "notifications": "household_id = ANY(%(homes)s)"
                             " AND kind IN ('leak', 'prealarm', 'rising')",
        }
        for table, cond in checks.items():
            rows = conn.execute(f"SELECT * FROM {table} WHERE {cond}",
                                {"targets": targets, "homes": victim_ids}).fetchall()
            assert rows == [], table
        seen = conn.execute("SELECT count(*) FROM detector_readings WHERE device_id = ANY(%s)",
                            (targets,)).fetchone()[0]
        assert seen == 0
