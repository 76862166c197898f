"""The gateway's hot path fed directly (no broker, no database): decode, route, detect, act."""

from __future__ import annotations

import json
from typing import Any

import pytest
from feed import NOW, Harness, rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol.packets import Message
from gateway.settings import Settings


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_a_leak_publishes_valve_close_before_anything_is_stored(h: Harness) -> None:
    h.detector("d1", 45.0)
    assert h.closes() == ["m1"]
    assert h.submitted == []  # nothing written yet: the command went first
    b = h.gw.batch
    assert [a.kind for a in b.alarms] == ["leak"]
    assert [(w.cause, w.priority) for w in b.work_orders] == [("leak", "urgent")]
    assert [n.kind for n in b.notifications] == ["leak"]
    assert [c["state"] for c in b.commands] == ["sent"]
    assert b.packet_ids == [1]


def test_two_consecutive_readings_at_20_are_a_leak_one_is_not(h: Harness) -> None:
    h.detector("d1", 25.0)
    assert h.closes() == []
    h.detector("d1", 3.0)
    h.detector("d1", 21.0)
    assert h.closes() == []
    h.detector("d1", 22.0)
    assert h.closes() == ["m1"]


def test_cooking_spike_below_the_level_never_alarms(h: Harness) -> None:
    for v in (1.0, 4.0, 8.0, 9.5, 9.9, 6.0, 2.0):
        h.detector("d1", v)
    assert h.closes() == [] and h.gw.batch.alarms == []


def test_repeated_leak_readings_give_one_command(h: Harness) -> None:
    for _ in range(10):
        h.detector("d1", 60.0)
    assert h.closes() == ["m1"]
    assert len(h.gw.batch.alarms) == 1


def test_overflow_closes_the_meter_itself(h: Harness) -> None:
    h.meter("m2", flow=4.0 * 1.6)
    assert h.closes() == ["m2"]


def test_silence_never_closes_a_valve(h: Harness) -> None:
    h.detector("d1", 1.0)
    h.now += 3600
    h.gw.tick(h.now)
    assert h.closes() == []
    assert "offline" in [a.kind for a in h.gw.batch.alarms]
    assert all(w.cause != "leak" for w in h.gw.batch.work_orders)


def test_status_offline_raises_at_once_and_online_clears(h: Harness) -> None:
    h.feed("gas/v1/d1/status", {"online": False})
    assert [a.kind for a in h.gw.batch.alarms] == ["offline"]
    h.feed("gas/v1/d1/status", {"online": True, "fw": "1.2", "model": "LD-100"})
    assert [c[1] for c in h.gw.batch.cleared] == ["offline"]


def test_ack_closes_the_command_and_unknown_ack_is_rejected(h: Harness) -> None:
    h.detector("d1", 45.0)
    cmd_id = h.published[0][1]["cmd_id"]
    h.feed("gas/v1/m1/ack", {"cmd_id": cmd_id, "ok": True, "valve": "closed", "ts": h.now})
    assert h.gw.batch.commands[-1]["state"] == "acked"
    h.feed("gas/v1/m1/ack", {"cmd_id": "nope", "ok": True, "valve": "closed", "ts": h.now})
    assert h.gw.batch.rejects[-1][3] == "unknown_command"
    h.feed("gas/v1/m2/ack", {"cmd_id": cmd_id, "ok": True, "valve": "closed", "ts": h.now})
    assert h.gw.batch.rejects[-1][3] == "unknown_command"  # not m2's command


def test_bad_input_is_counted_and_the_stream_goes_on(h: Harness) -> None:
    h.feed("gas/v1/d1/telemetry", b"{not json")
    h.feed("gas/v1/ghost/telemetry", {"seq": 1, "ts": NOW, "ch4": 1.0, "fault": 0})
    h.feed("gas/v1/d1/telemetry", b"x" * 1_000_000)
    h.feed("gas/v1/d1/telemetry", {"seq": 1, "ts": NOW, "ch4": 140.0, "fault": 0})
    h.detector("d1", 50.0)
    reasons = [r[3] for r in h.gw.batch.rejects]
    assert reasons == ["not_json", "unknown_device", "oversized", "out_of_range"]
    assert h.closes() == ["m1"]
    assert len(h.gw.batch.packet_ids) == 5  # rejects are acknowledged too (after commit)
    assert h.gw.metrics.value("gas_rejects_total", reason="oversized") == 1


def test_seq_replay_is_rejected_but_a_redelivery_is_stored_without_judging(h: Harness) -> None:
    h.detector("d1", 1.0, seq=10)
    h.detector("d1", 1.0, seq=9)
    assert h.gw.batch.rejects[-1][3] == "seq_replayed"
    h.detector("d1", 45.0, seq=8, dup=True)  # the broker resending after a restart
    assert h.closes() == []  # already judged the first time round
    assert h.gw.batch.redelivered
    assert list(h.gw.batch.detector.seq) == [10, 8]  # type: ignore[union-attr]


def test_behind_its_sequence_from_the_cluster_log_is_stored_not_judged(h: Harness) -> None:
    h.gw.ingest.late_stored = True  # as a partition worker's pipeline
    h.detector("d1", 1.0, seq=10)
    h.detector("d1", 45.0, seq=9)  # resent by an edge relay through a log election
    assert h.gw.batch.rejects == []
    assert h.closes() == []  # older than what was judged: never acted on
    assert h.gw.batch.redelivered  # written idempotently
    assert list(h.gw.batch.detector.seq) == [10, 9]  # type: ignore[union-attr]
    assert h.gw.metrics.value("gas_readings_late_total") == 1


def test_far_future_clock_is_stored_at_receive_time_and_flagged(h: Harness) -> None:
    h.feed("gas/v1/d1/telemetry", {"seq": 1, "ts": 4102444800.0, "ch4": 1.0, "fault": 0})
    d = h.gw.batch.detector
    assert d is not None and d.time[0] == NOW and d.flags[0] == 1


def test_a_building_with_two_households_leaking_is_one_incident(h: Harness) -> None:
    h.detector("d1", 45.0)
    h.detector("d2", 45.0)
    h.detector("d3", 45.0)  # another building
    incident = {a.household_id: a.incident for a in h.gw.batch.alarms}
    assert incident == {"h1": False, "h2": True, "h3": False}


def test_resend_then_escalate_without_ack(h: Harness) -> None:
    h.meter("m3", flow=10.0)
    for _ in range(30):
        h.now += 5
        h.gw.tick(h.now)
    ids = {p["cmd_id"] for _, p in h.published}
    assert len(h.published) == 4 and len(ids) == 1
    causes = [w.cause for w in h.gw.batch.work_orders]
    assert causes == ["overflow", "valve_escalation"]


def test_flush_hands_the_batch_to_the_writer(h: Harness) -> None:
    h.detector("d1", 2.0)
    h.gw.flush()
    assert len(h.submitted) == 1 and h.submitted[0].packet_ids == [1]
    h.gw.flush()
    assert len(h.submitted) == 1  # nothing new, nothing submitted


# ---------------------------------------------------------------- fuzzing the hot path
_topics = st.one_of(
    st.sampled_from([f"gas/v1/{d}/{c}" for d in ("d1", "m1", "d2", "ghost", "bad id")
                     for c in ("telemetry", "ack", "status", "event", "cmd", "x")]),
    st.text(max_size=40))
_docs = st.fixed_dictionaries({}, optional={
    "seq": st.one_of(st.integers(-5, 2**33), st.floats(), st.text(max_size=3)),
    "ts": st.one_of(st.floats(0, 5e9), st.integers(-1, 5e9), st.none()),
    "ch4": st.one_of(st.floats(-10, 200), st.text(max_size=3)),
    "fault": st.integers(-1, 2**33), "vol": st.floats(-1, 1e6), "flow": st.floats(-1, 50),
    "valve": st.sampled_from(["open", "closed", "fault", "half", 3]),
    "batt": st.floats(-1, 20), "rssi": st.integers(-300, 10), "cmd_id": st.text(max_size=70),
    "ok": st.booleans(), "online": st.one_of(st.booleans(), st.integers()),
    "type": st.sampled_from(["self_test", "tamper", "boom"])})
_payloads = st.one_of(_docs.map(lambda d: json.dumps(d, allow_nan=True).encode()),
                      st.binary(max_size=200))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(_topics, _payloads, st.booleans()), min_size=1, max_size=20))
def test_fuzzed_messages_never_escape_and_every_one_is_accounted_for(msgs) -> None:
    h = Harness()
    before = h.gw.metrics.value("gas_readings_received_total")
    batch = [Message(t, p, 1, i + 1, dup, False) for i, (t, p, dup) in enumerate(msgs)]
    h.gw.handle(batch, h.now)  # must not raise
    b = h.gw.batch
    assert b.packet_ids == [m.packet_id for m in batch]  # every message will be acked
    readings = h.gw.metrics.value("gas_readings_received_total") - before
    handled = (readings + len(b.rejects) + len(b.events)
               + sum(1 for c in b.commands if c["state"] != "sent"))
    acks = sum(1 for t, _, _ in msgs if t.endswith("/ack"))
    assert handled <= len(msgs) and len(msgs) - handled <= acks  # only duplicate acks are silent
    for r in b.rejects:
        assert r[3] and r[4]  # a reason and a detail for each


def test_a_mass_offline_sweep_pauses_between_ranges_and_raises_the_same(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.pipeline import ticks

    monkeypatch.setattr(ticks, "TICK_SLOTS", 2)
    h.now += 3 * 86400  # every device silent for days
    parts = list(h.gw.tick_in_parts(h.now))
    assert len(parts) == 3  # six devices, two per range: the loop runs between them
    offline = sorted(a.device_id for a in h.gw.batch.alarms if a.kind == "offline")
    assert offline == ["d1", "d2", "d3", "m1", "m2", "m3"]
    assert h.closes() == []


def _all(h: Harness, name: str) -> list[Any]:
    """Rows of one kind, in the batches handed to the writer and the one still open."""
    return [x for b in [*h.submitted, h.gw.batch] for x in getattr(b, name)]


def test_a_sweeps_alarms_are_applied_in_parts_and_a_reading_finishes_them_first(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.pipeline import actions

    monkeypatch.setattr(actions, "APPLY_STEP", 2)
    h.now += 3 * 86400  # all six devices silent for days: six offline alarms in one range
    parts = h.gw.tick_in_parts(h.now)
    assert next(parts) is True and h.gw.applying  # two raised, the loop may run now
    assert len(_all(h, "alarms")) == 2
    # d3 comes back before the sweep is fully applied: its offline alarm must exist (be
    # raised) before this reading clears it, so judging finishes the sweep first
    h.detector("d3", 0.5)
    assert not h.gw.applying
    assert sorted(a.device_id for a in _all(h, "alarms") if a.kind == "offline") == \
        ["d1", "d2", "d3", "m1", "m2", "m3"]
    assert [c[:2] for c in _all(h, "cleared")] == [("d3", "offline")]
    assert list(parts) == [False]  # the rest was applied by the reading: nothing twice
    assert len(_all(h, "alarms")) == 6


def test_a_sweep_applied_in_parts_raises_what_one_apply_raises(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.pipeline import actions

    whole, parted = Harness(), Harness()
    for x in (whole, parted):
        x.now += 3 * 86400
    whole.gw.tick(whole.now)
    monkeypatch.setattr(actions, "APPLY_STEP", 1)
    flags = list(parted.gw.tick_in_parts(parted.now))
    assert flags == [True] * 5 + [False]

    def rows(x: Harness) -> list[Any]:
        return [(a.device_id, a.kind, a.raised_at) for a in _all(x, "alarms")]

    assert rows(parted) == rows(whole) and len(rows(whole)) == 6
    assert len(parted.submitted) >= 5  # handed to the writer a part at a time
    for name in ("work_orders", "notifications", "audit"):
        assert len(_all(parted, name)) == len(_all(whole, name))


async def test_the_service_holds_judging_while_a_sweep_is_half_applied(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from gateway.pipeline import actions
    from gateway.service import app

    monkeypatch.setattr(actions, "APPLY_STEP", 1)
    svc = app.GatewayService(Settings())
    svc.gw.load_devices(rows())
    svc.gw.publish = lambda t, p: None
    svc.loop = asyncio.get_running_loop()
    parts = svc.gw.tick_in_parts(svc.gw.clock() + 3 * 86400)
    assert next(parts) is True
    raw = json.dumps({"seq": 1, "ts": svc.gw.clock(), "ch4": 0.5, "fault": 0}).encode()
    svc._on_batch([Message("gas/v1/d1/telemetry", raw, 1, 1, False, False)])
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(svc._pending) == 1 and svc.gw.applying  # held, and the sweep not forced
    for _ in parts:
        pass
    svc._kick_drain()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not svc._pending and svc.gw.metrics.readings._value.get() == 1


def test_an_operators_close_attaches_to_the_close_in_flight(h: Harness) -> None:
    from gateway.core.commands import ValveCommand

    h.detector("d1", 45.0)  # the gateway's own close, not yet acked
    assert h.closes() == ["m1"]
    in_flight = h.gw.book.open_for("m1", "valve_close")
    op = ValveCommand(cmd_id="op-1", meter_id="m1", household_id="h1", action="valve_close",
                      reason="manual: crew request", requested_by="ops.li", issued_at=h.now)
    assert h.gw.operator_command(op, h.now) is in_flight
    assert h.closes() == ["m1"]  # no second command on the wire
    assert ("ops.li", "command.attached", "valve_command", "op-1",
            {"meter": "m1", "household": "h1", "attached_to": in_flight.cmd_id}) \
        in h.gw.batch.audit
    other = ValveCommand(cmd_id="op-2", meter_id="m2", household_id="h2", action="valve_close",
                         reason="manual", requested_by="ops.li", issued_at=h.now)
    assert h.gw.operator_command(other, h.now) is None
    assert h.closes() == ["m1", "m2"]
