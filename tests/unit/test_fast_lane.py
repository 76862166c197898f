"""The fast lane: an instant leak read behind a backlog is cut before the backlog is judged,
and judging it later in order raises the alarm without a second command."""

from __future__ import annotations

import json

import pytest
from feed import Harness

from gateway.protocol.packets import Message, PublishFraming, encode_publish, split_packets


def msg(h: Harness, did: str, ch4: float, seq: int, dup: bool = False) -> Message:
    h.pid += 1
    body = json.dumps({"seq": seq, "ts": h.now, "ch4": ch4, "fault": 0}).encode()
    return Message(f"gas/v1/{did}/telemetry", body, 1, h.pid, dup, False)


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_instant_leak_is_cut_on_read_and_judged_later_without_a_second_command(h) -> None:
    backlog = [msg(h, "d2", 0.5, s) for s in range(1, 400)] + [msg(h, "d1", 45.0, 1)]
    assert h.gw.triage(backlog, h.now) == 1
    assert h.closes() == ["m1"]  # before any of the backlog was judged
    cmd_id = h.published[0][1]["cmd_id"]
    h.gw.handle(backlog, h.now)
    assert h.closes() == ["m1"]  # judged in order: the alarm, not a second command
    b = h.gw.batch
    assert [(a.device_id, a.kind) for a in b.alarms] == [("d1", "leak")]
    assert [(w.cause, w.priority) for w in b.work_orders] == [("leak", "urgent")]
    assert [n.kind for n in b.notifications] == ["leak"]
    # the command is written again beside its alarm, so the row links to it
    assert [c["cmd_id"] for c in b.commands] == [cmd_id, cmd_id]
    assert h.gw._fast_cut == {}
    assert h.gw.metrics.value("gas_fast_lane_cuts_total") == 1


def test_meter_ack_before_the_reading_is_judged_still_means_one_command(h) -> None:
    m = [msg(h, "d1", 50.0, 1)]
    h.gw.triage(m, h.now)
    cmd_id = h.published[0][1]["cmd_id"]
    ack = json.dumps({"cmd_id": cmd_id, "ok": True, "valve": "closed", "ts": h.now,
                      "error": None}).encode()
    h.gw.handle([Message("gas/v1/m1/ack", ack, 1, 99, False, False)], h.now)
    assert h.gw.book.open_for("m1", "valve_close") is None  # acked, finished
    h.gw.handle(m, h.now)
    assert h.closes() == ["m1"]
    assert [a.kind for a in h.gw.batch.alarms] == ["leak"]


@pytest.mark.parametrize("ch4", [39.9, 25.0, 10.0])
def test_below_the_instant_level_waits_its_turn(h, ch4) -> None:
    assert h.gw.triage([msg(h, "d1", ch4, 1)], h.now) == 0
    assert h.closes() == []


def test_replays_unknown_devices_meters_and_garbage_take_the_normal_path(h) -> None:
    h.detector("d1", 0.5)
    h.detector("d1", 0.5)  # last seq 2
    bad = [msg(h, "d1", 45.0, 2),  # replayed seq
           msg(h, "d1", 45.0, 1, dup=True),  # an old redelivery
           Message("gas/v1/nobody/telemetry", b'{"seq":1,"ts":1,"ch4":45,"fault":0}', 1, 7,
                   False, False),
           Message("gas/v1/m1/telemetry", b'{"ch4": 45}', 1, 8, False, False),
           Message("gas/v1/d2/telemetry", b'{"seq":1,"ch4":45,', 1, 9, False, False),
           Message("gas/v1/d2/telemetry", b'{"seq":1,"ts":1,"ch4":450,"fault":0}', 1, 10, False,
                   False)]  # out of range
    assert h.gw.triage(bad, h.now) == 0
    assert h.closes() == []


def test_an_open_leak_is_not_cut_again_and_a_later_leak_is(h) -> None:
    h.detector("d1", 45.0)  # judged in order: LEAK open, valve close sent
    assert h.closes() == ["m1"]
    assert h.gw.triage([msg(h, "d1", 60.0, 2)], h.now) == 0  # LEAK still open
    for _ in range(6):
        h.detector("d1", 0.0)  # clears the leak (clear_count readings below clear_lel)
    assert h.gw.state.active[h.gw.registry.index["d1"]] == 0
    seq = h.seq["d1"] + 1
    # the first close is still open (no ack): a new leak is not cut twice
    assert h.gw.triage([msg(h, "d1", 45.0, seq)], h.now) == 0
    cmd = h.gw.book.open_for("m1", "valve_close")
    h.gw.book.on_ack("m1", cmd.cmd_id, True, "closed", None, h.now)
    assert h.gw.triage([msg(h, "d1", 45.0, seq)], h.now) == 1
    assert h.closes() == ["m1", "m1"]


def _raw(h: Harness, items: list[tuple[str, float, int]], qos: int = 1) -> bytes:
    out = b""
    for did, ch4, seq in items:
        h.pid += 1
        body = json.dumps({"seq": seq, "ts": h.now, "ch4": ch4, "fault": 0}).encode()
        out += encode_publish(f"gas/v1/{did}/telemetry", body, qos, h.pid if qos else 0)
    return out


def look(h: Harness, framing: PublishFraming, read: bytes) -> int:
    """What the service does as a read arrives: framed PUBLISHes worth a look, triaged."""
    return h.gw.triage(framing.feed(read, h.gw.instant_marks), h.now)


@pytest.mark.parametrize("qos", [0, 1])
def test_a_read_is_looked_into_before_it_is_split(h, qos) -> None:
    data = _raw(h, [("d2", 0.5, s) for s in range(1, 300)] + [("d1", 47.5, 1), ("d3", 39.0, 1)],
                qos)
    assert look(h, PublishFraming(), data) == 1
    assert h.closes() == ["m1"]
    msgs, _, _ = split_packets(data)
    assert h.gw.triage(msgs, h.now) == 0  # already cut: not twice
    h.gw.handle(msgs, h.now)
    assert h.closes() == ["m1"] and [a.kind for a in h.gw.batch.alarms] == ["leak"]


def test_a_leak_cut_in_two_by_the_reads_is_caught_when_split(h) -> None:
    data = _raw(h, [("d1", 60.0, 1)])
    first, second = data[:20], data[20:]
    framing = PublishFraming()
    assert look(h, framing, first) + look(h, framing, second) == 0
    msgs, _, _ = split_packets(first + second)
    assert h.gw.triage(msgs[:1], h.now) == 1
    assert h.closes() == ["m1"]


def test_packets_after_one_cut_by_the_reads_are_still_framed(h) -> None:
    data = _raw(h, [("d2", 0.5, 1), ("d3", 0.7, 1)] * 40 + [("d1", 60.0, 1)])
    for cut in (1, 2, 3, 50, 200, len(data) - 120):
        hh = Harness()
        framing = PublishFraming()
        assert look(hh, framing, data[:cut]) + look(hh, framing, data[cut:]) == 1, cut
        assert hh.closes() == ["m1"]


def test_the_look_ignores_what_is_not_a_fresh_valid_detector_reading(h) -> None:
    h.detector("d1", 0.5)
    data = (_raw(h, [("d1", 45.0, 1)])  # replayed seq
            + _raw(h, [("nobody", 45.0, 1)])
            + _raw(h, [("d2", 450.0, 1)]))  # out of range
    assert look(h, PublishFraming(), data) == 0
    assert h.closes() == []


def test_a_malformed_stream_stops_the_look_not_the_gateway(h) -> None:
    framing = PublishFraming()
    assert look(h, framing, b"\x30\xff\xff\xff\xff\x7f" + _raw(h, [("d1", 60.0, 1)])) == 0
    assert look(h, framing, _raw(h, [("d1", 60.0, 2)])) == 0  # broken: nothing trusted
    assert h.closes() == []


@pytest.mark.parametrize("floor", [40.0, 39.5, 5.0, 100.0, 12.0, 199.0, 0.5])
def test_the_prefilter_finds_every_value_whose_integer_part_reaches_the_floor(floor) -> None:
    from gateway.pipeline.gateway import at_least

    pattern = at_least(floor)
    for v in [0, 1, 3.5, 4, 9, 10, 11, 12, 19, 20, 39, 39.9, 40, 40.5, 41, 49, 50, 99, 100,
              101, 150, 199, 200, 1000, 5.5]:
        found = pattern.search(json.dumps({"seq": 1, "ch4": v}).encode()) is not None
        assert found == (int(v) >= int(floor)), (floor, v)
