"""Response rules: the policy table and the valve-command lifecycle, without services."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.core.alarms import AlarmKind
from gateway.core.commands import CommandBook, CommandState, UnknownCommand, ValveCommand
from gateway.core.response import POLICIES, Priority, sla_deadlines


def _cmd(cmd_id: str = "c1", meter: str = "m1") -> ValveCommand:
    return ValveCommand(cmd_id=cmd_id, meter_id=meter, household_id="h1", action="valve_close",
                        reason="leak", requested_by="gateway", issued_at=0.0)


def test_every_alarm_kind_has_a_policy() -> None:
    assert set(POLICIES) == set(AlarmKind)


def test_only_leak_and_overflow_close_the_valve() -> None:
    closing = {k for k, p in POLICIES.items() if p.close_valve}
    assert closing == {AlarmKind.LEAK, AlarmKind.OVERFLOW}
    assert not POLICIES[AlarmKind.OFFLINE].close_valve  # silence never cuts gas


def test_urgent_orders_have_the_emergency_arrival_clock() -> None:
    opened = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    arrive, resolve = sla_deadlines(Priority.URGENT, opened, 1800, 14400)
    assert arrive - opened == dt.timedelta(minutes=30)
    assert resolve - opened == dt.timedelta(hours=4)
    arrive_n, _ = sla_deadlines(Priority.NORMAL, opened, 1800, 14400)
    assert arrive_n > arrive


def test_one_open_close_command_per_meter() -> None:
    book = CommandBook()
    assert book.request(_cmd("c1")) is not None
    assert book.request(_cmd("c2")) is None  # already on its way
    assert book.request(_cmd("c3", meter="m2")) is not None


def test_lifecycle_ack_closes_the_command() -> None:
    book = CommandBook(ack_timeout_s=5)
    book.request(_cmd())
    book.mark_sent("c1", now=10.0)
    cmd, first = book.on_ack("m1", "c1", True, "closed", None, now=10.2)
    assert first and cmd.state is CommandState.ACKED and cmd.ack_valve == "closed"
    assert book.due(100.0) == []
    again, first = book.on_ack("m1", "c1", True, "closed", None, now=10.3)
    assert not first and again is cmd  # a duplicate ack of a resent command is harmless
    assert book.request(_cmd("c4")) is not None  # the meter may be commanded again


def test_unknown_or_foreign_ack_is_refused() -> None:
    book = CommandBook()
    book.request(_cmd())
    with pytest.raises(UnknownCommand):
        book.on_ack("m1", "never-issued", True, "closed", None, now=1.0)
    with pytest.raises(UnknownCommand):
        book.on_ack("m2", "c1", True, "closed", None, now=1.0)  # not this meter's command


def test_timeouts_resend_with_backoff_then_escalate() -> None:
    book = CommandBook(ack_timeout_s=5, max_resends=3, backoff_factor=2)
    book.request(_cmd())
    book.mark_sent("c1", now=0.0)
    assert book.due(4.9) == []
    events = []
    now = 0.0
    for _ in range(10):
        cmd = book.open.get("c1")
        if cmd is None:
            break
        now = cmd.deadline
        for due in book.due(now):
            events.append((due.what, round(now, 1)))
            if due.what == "resend":
                book.mark_sent("c1", now)
    assert events == [("resend", 5.0), ("resend", 15.0), ("resend", 35.0), ("escalate", 75.0)]
    assert book.finished["c1"].state is CommandState.ESCALATED


def test_failed_ack_is_final() -> None:
    book = CommandBook()
    book.request(_cmd())
    book.mark_sent("c1", 0.0)
    cmd, _ = book.on_ack("m1", "c1", False, "fault", "motor stalled", 1.0)
    assert cmd.state is CommandState.FAILED and cmd.ack_error == "motor stalled"
    assert book.open == {}
