"""Device events through the pipeline (no broker, no database): each event's effects, repeats,
wrong kinds, floods, and the platform confirming a detector's own cut."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from feed import Harness

from gateway.protocol import RejectReason


@pytest.fixture
def h() -> Harness:
    return Harness()


def event(h: Harness, did: str, type_: str, seq: int = 1, **extra: Any) -> None:
    h.feed(f"gas/v1/{did}/event", {"seq": seq, "ts": h.now, "type": type_, **extra})


def audit_actions(h: Harness) -> list[str]:
    return [a[1] for a in h.gw.batch.audit]


def closes(h: Harness) -> list[str]:
    """Meters sent a close, one per command (resends of a command repeat its cmd_id)."""
    seen: dict[str, str] = {}
    for t, p in h.published:
        if p["action"] == "valve_close":
            seen.setdefault(p["cmd_id"], t.split("/")[2])
    return list(seen.values())


def rejects(h: Harness) -> list[str]:
    return [r[3] for r in h.gw.batch.rejects]


def test_local_alarm_is_a_leak_of_the_detectors_own(h: Harness) -> None:
    event(h, "d1", "local_alarm")
    b = h.gw.batch
    assert [(a.device_id, a.kind, a.severity) for a in b.alarms] == [("d1", "leak", "critical")]
    assert "detector's own alarm" in b.alarms[0].evidence[0]["source"]
    assert [(w.cause, w.priority) for w in b.work_orders] == [("leak", "urgent")]
    assert [n.kind for n in b.notifications] == ["leak"]
    assert closes(h) == []  # the detector cut the gas itself: the platform waits first
    assert len(b.events) == 1 and b.events[0][3] == "local_alarm"


def test_unconfirmed_cut_is_closed_by_the_platform_after_the_setting(h: Harness) -> None:
    event(h, "d1", "local_alarm")
    h.now += 4.9
    h.gw.tick(h.now)
    assert closes(h) == []
    h.now += 0.2
    h.gw.tick(h.now)
    assert closes(h) == ["m1"]
    why = [a[4] for a in h.gw.batch.audit if a[1] == "cut.unconfirmed"]
    assert why and why[0]["why"] == "meter did not confirm the detector's cut within 5 s"
    h.now += 10
    h.gw.tick(h.now)
    assert closes(h) == ["m1"]  # once


@pytest.mark.parametrize("confirm", ["event", "telemetry", "ack"])
def test_meter_confirming_the_cut_in_time_means_no_platform_command(
    h: Harness, confirm: str
) -> None:
    if confirm == "ack":  # a platform close in flight, then acked: no second close
        h.detector("d1", 45.0)
        cmd = h.published[0][1]["cmd_id"]
        event(h, "d1", "local_alarm")
        h.feed("gas/v1/m1/ack", {"cmd_id": cmd, "ok": True, "valve": "closed", "ts": h.now})
    else:
        event(h, "d1", "local_alarm")
        h.now += 1
        if confirm == "event":
            event(h, "m1", "valve_closed_local")
        else:
            h.meter("m1", flow=0.0, valve="closed")
    h.now += 10
    h.gw.tick(h.now)
    assert closes(h) == ([] if confirm != "ack" else ["m1"])
    assert "cut.unconfirmed" not in audit_actions(h)


def test_detector_readings_and_local_alarm_give_one_alarm_order_notice(h: Harness) -> None:
    event(h, "d1", "local_alarm")
    h.detector("d1", 60.0)
    h.detector("d1", 60.0)
    b = h.gw.batch
    assert len(b.alarms) == 1 and len(b.work_orders) == 1 and len(b.notifications) == 1
    assert closes(h) == ["m1"]  # the platform's own rule confirmed it: one close
    h.now += 10
    h.gw.tick(h.now)
    assert closes(h) == ["m1"]


def test_platform_rule_closes_at_once_behind_a_local_alarm(h: Harness) -> None:
    event(h, "d1", "local_alarm")
    h.detector("d1", 25.0)  # one reading at leak level: the rule waits for a second
    assert closes(h) == []
    h.detector("d1", 25.0)  # 2 s after the local_alarm, no tick between
    assert closes(h) == ["m1"]  # at the rule's moment, not the 5 s deadline
    why = [a[4] for a in h.gw.batch.audit if a[1] == "cut.rule_confirmed"]
    assert len(why) == 1 and "leak rule confirmed" in why[0]["why"] and why[0]["cmd_id"]
    h.detector("d1", 60.0)
    for _ in range(3):
        h.now += 5
        h.gw.tick(h.now)
    b = h.gw.batch
    assert closes(h) == ["m1"]  # the timer sends nothing more
    assert "cut.unconfirmed" not in audit_actions(h)
    assert len(b.alarms) == 1 and len(b.work_orders) == 1 and len(b.notifications) == 1


def test_platform_rule_sends_nothing_when_the_meter_reported_the_cut(h: Harness) -> None:
    event(h, "d1", "local_alarm")
    h.now += 0.5
    event(h, "m1", "valve_closed_local")
    h.now += 0.5
    h.detector("d1", 60.0)
    h.detector("d1", 60.0)
    for _ in range(3):
        h.now += 5
        h.gw.tick(h.now)
    assert closes(h) == []
    assert "cut.rule_confirmed" not in audit_actions(h)


def test_platform_rule_behind_a_local_alarm_after_telemetry_closed(h: Harness) -> None:
    event(h, "d1", "local_alarm")
    h.now += 0.5
    h.meter("m1", flow=0.0, valve="closed")
    h.now += 0.5
    h.detector("d1", 60.0)
    h.now += 10
    h.gw.tick(h.now)
    assert closes(h) == []
    assert "cut.confirmed" in audit_actions(h)


def test_a_second_detector_of_the_household_attaches_to_the_open_leak(h: Harness) -> None:
    h.gw.load_devices(
        [
            (
                "d1b",
                "detector",
                "LD-100",
                "h1",
                dt.date(2024, 1, 1),
                "1 Road",
                "C00",
                "C00-B000",
                "Ann",
                "+15550000001",
                None,
                4.0,
            )
        ]
    )
    event(h, "d1", "local_alarm")
    h.detector("d1b", 60.0)
    b = h.gw.batch
    assert [a.device_id for a in b.alarms] == ["d1"]
    assert len(b.work_orders) == 1 and len(b.notifications) == 1
    assert "alarm.attached" in audit_actions(h)
    assert closes(h) == ["m1"]  # the readings' own rule still cuts at once
    h.now += 10
    h.gw.tick(h.now)
    assert closes(h) == ["m1"]  # and the awaited cut attaches to that close


def test_a_flood_of_local_alarms_is_one_alarm_order_and_command(h: Harness) -> None:
    for seq in range(1, 200):
        event(h, "d1", "local_alarm", seq=seq)
    h.now += 6
    h.gw.tick(h.now)
    for seq in range(200, 300):
        event(h, "d1", "local_alarm", seq=seq)
    h.now += 6
    h.gw.tick(h.now)
    b = h.gw.batch
    assert len(b.alarms) == 1 and len(b.work_orders) == 1 and len(b.notifications) == 1
    assert closes(h) == ["m1"]


def test_valve_closed_local_is_recorded_on_the_open_gas_alarm(h: Harness) -> None:
    h.detector("d1", 45.0)
    event(h, "m1", "valve_closed_local")
    recorded = [a for a in h.gw.batch.audit if a[1] == "alarm.valve_closed_local"]
    assert recorded and recorded[0][4]["alarm_device"] == "d1"
    assert all(w.cause != "valve_inspection" for w in h.gw.batch.work_orders)


def test_valve_closed_local_without_an_alarm_asks_why(h: Harness) -> None:
    event(h, "m2", "valve_closed_local")
    event(h, "m2", "valve_closed_local", seq=2)
    b = h.gw.batch
    assert [(w.household_id, w.cause, w.priority, w.title) for w in b.work_orders] == [
        ("h2", "valve_inspection", "high", "The valve closed by itself: why?")
    ]
    assert b.alarms == [] and closes(h) == []


def test_tamper_is_a_high_inspection_and_the_owner_told(h: Harness) -> None:
    for seq in (1, 2, 3):
        event(h, "d3", "tamper", seq=seq)
    b = h.gw.batch
    assert [(w.household_id, w.cause, w.priority) for w in b.work_orders] == [
        ("h3", "tamper", "high")
    ]
    assert [(n.household_id, n.kind) for n in b.notifications] == [("h3", "tamper")]
    assert closes(h) == []


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "fault"},
        {"type": "self_test", "ok": False},
        {"type": "self_test", "result": "fail"},
    ],
)
def test_fault_and_failed_self_test_share_the_maintenance_order(h: Harness, payload: dict) -> None:
    h.feed("gas/v1/d2/event", {"seq": 1, "ts": h.now, **payload})
    h.feed("gas/v1/d2/event", {"seq": 2, "ts": h.now, **payload})
    b = h.gw.batch
    assert [(w.cause, w.priority) for w in b.work_orders] == [("detector_maintenance", "normal")]
    # the same cause as the DETECTOR_FAULT rule: one open order per household in the database
    h.detector("d2", 1.0, fault=4)
    assert {w.cause for w in b.work_orders} == {"detector_maintenance"}


def test_passed_self_test_is_only_recorded(h: Harness) -> None:
    event(h, "d2", "self_test", ok=True)
    b = h.gw.batch
    assert len(b.events) == 1 and b.work_orders == [] and b.alarms == []


def test_power_on_clears_offline(h: Harness) -> None:
    h.feed("gas/v1/d1/status", {"online": False})
    assert [a.kind for a in h.gw.batch.alarms] == ["offline"]
    event(h, "d1", "power_on")
    assert [c[1] for c in h.gw.batch.cleared] == ["offline"]
    assert h.gw.batch.events[-1][3] == "power_on"


@pytest.mark.parametrize(
    ("did", "payload", "reason"),
    [
        ("m1", {"type": "local_alarm"}, RejectReason.WRONG_DEVICE_KIND),
        ("d1", {"type": "valve_closed_local"}, RejectReason.WRONG_DEVICE_KIND),
        ("d1", {"type": "gas_everywhere"}, RejectReason.UNKNOWN_EVENT_TYPE),
        ("d1", {"type": "valve_open_local"}, RejectReason.UNKNOWN_EVENT_TYPE),
        ("d1", {"type": "local_alarm", "ts": 1_700_000_000.0}, RejectReason.CLOCK_SKEW),
    ],
)
def test_bad_events_are_rejected_with_a_reason_and_do_nothing(
    h: Harness, did: str, payload: dict, reason: RejectReason
) -> None:
    h.feed(f"gas/v1/{did}/event", {"seq": 1, "ts": h.now, **payload})
    h.now += 10
    h.gw.tick(h.now)
    b = h.gw.batch
    assert rejects(h) == [reason.value]
    assert b.events == [] and b.alarms == [] and b.work_orders == [] and closes(h) == []
    assert h.gw.metrics.rejects.labels(reason.value)._value.get() == 1


def test_an_event_acts_only_for_its_own_device_and_household(h: Harness) -> None:
    # a payload naming another device changes nothing: the topic says who spoke
    h.feed(
        "gas/v1/d3/event",
        {"seq": 1, "ts": h.now, "type": "local_alarm", "device_id": "d1", "household": "h1"},
    )
    b = h.gw.batch
    assert [(a.device_id, a.household_id) for a in b.alarms] == [("d3", "h3")]
    h.now += 10
    h.gw.tick(h.now)
    assert closes(h) == ["m3"]
