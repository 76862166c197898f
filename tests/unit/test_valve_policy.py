"""Valve authority rules, pure (dashboard_api.valve_policy and workflow): the mass-action
and rate verdicts, the latest cut, and each condition of the reopen interlock."""

from __future__ import annotations

import datetime as dt

import pytest

from dashboard_api import valve_policy as vp
from dashboard_api import workflow
from dashboard_api.workflow import ActiveAlarm
from gateway.core import response
from gateway.core.alarms import GAS_KINDS

T0 = dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.UTC)
LONG_REASON = "closing the whole riser on the fire brigade's request"


def at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


def refused(fn, *args, **kw) -> vp.Refused:
    with pytest.raises(vp.Refused) as err:
        fn(*args, **kw)
    return err.value


# ---------------------------------------------------------------- kinds and causes

def test_kinds_and_causes_follow_the_gateway_policies() -> None:
    cutting = {response.kind_name(k) for k, p in response.POLICIES.items() if p.close_valve}
    assert set(workflow.CUT_ALARM_KINDS) == cutting
    assert cutting | {response.kind_name(k) for k in GAS_KINDS} == set(workflow.GAS_ALARM_KINDS)
    critical = {p.cause for p in response.POLICIES.values() if p.severity == "critical"}
    assert critical <= set(workflow.SAFETY_CAUSES)
    assert response.ESCALATION.cause in workflow.BLOCKING_CAUSES


def test_resolve_refused_while_gas_is_detected() -> None:
    leak = ActiveAlarm(7, "leak", "acknowledged", T0)
    why = workflow.resolve_refusal("leak", "h1", [leak])
    assert why is not None and "active leak alarm 7 (acknowledged" in why
    assert workflow.resolve_refusal("valve_inspection", "h1", [leak]) is not None
    assert workflow.resolve_refusal("detector_maintenance", "h1", [leak]) is None
    assert workflow.resolve_refusal("leak", "h1", []) is None


# ---------------------------------------------------------------- mass actions

def test_rate_below_the_threshold_is_plain() -> None:
    recent = [at(-s) for s in range(1, vp.MASS_ACTION_THRESHOLD)]
    assert vp.judge_rate(recent, T0, False, "x") is False


def test_rate_past_the_threshold_needs_confirmation_and_a_reason() -> None:
    recent = [at(-s) for s in range(1, vp.MASS_ACTION_THRESHOLD + 1)]
    err = refused(vp.judge_rate, recent, T0, False, LONG_REASON)
    assert (err.condition, err.status) == ("mass_confirmation", 409)
    assert f"valve action {vp.MASS_ACTION_THRESHOLD + 1}" in err.message
    err = refused(vp.judge_rate, recent, T0, True, "x" * (vp.MASS_REASON_MIN_CHARS - 1))
    assert err.condition == "mass_reason"
    assert vp.judge_rate(recent, T0, True, LONG_REASON) is True
    # Actions older than the window no longer count.
    old = [at(-vp.WINDOW_S - s) for s in range(50)]
    assert vp.judge_rate(old, T0, False, "x") is False


def test_rate_limit_says_when_a_slot_frees() -> None:
    recent = [at(-50), at(-40), at(-10), at(-70)]
    err = refused(vp.judge_rate, recent, T0, True, LONG_REASON, threshold=1, limit=3)
    assert (err.condition, err.status, err.retry_after_s) == ("rate_limit", 429, 10)
    err = refused(vp.judge_rate, [at(-59.5)] * 5, T0, True, LONG_REASON, threshold=1, limit=3)
    assert err.retry_after_s == 1


# ---------------------------------------------------------------- the latest cut

def test_latest_cut() -> None:
    cmd = vp.Cut(at(0), "op-1", "dispatch.li")
    assert vp.choose_cut(None, None, None) is None
    assert vp.choose_cut(cmd, None, None) is cmd
    assert vp.choose_cut(None, None, at(5)) == vp.Cut(at(5), None, "meter")
    # The meter reports the command's own closing: still the command's cut.
    assert vp.choose_cut(cmd, at(-1), at(2)) is cmd
    assert vp.choose_cut(cmd, at(30), at(31)) is cmd  # a skewed clock, within the grace
    # Seen open long after the command, then closed by itself: a cut of its own.
    assert vp.choose_cut(cmd, at(3600), at(3700)) == vp.Cut(at(3700), None, "meter")


# ---------------------------------------------------------------- the interlock

CUT = vp.Cut(at(0), "gw-1", "gateway")


def order(id: int = 1, cause: str = "leak", status: str = "resolved", by: str = "eng.a",
          when: float = 100, role: str = "engineer", cmd_id: str | None = None) -> vp.SafetyOrder:
    resolved = status == "resolved"
    return vp.SafetyOrder(id, cause, status, cmd_id, at(when), by if resolved else None,
                          at(when) if resolved else None, role if resolved else None, 9)


def facts(*orders: vp.SafetyOrder, **kw) -> vp.ReopenFacts:
    base = {"meter_id": "m1", "household_id": "h1", "cut": CUT, "orders": orders}
    return vp.ReopenFacts(**{**base, **kw})


def test_reopen_needs_a_cut_and_no_reopen_in_flight() -> None:
    assert refused(vp.judge_reopen, facts(order(), cut=None), "x").condition == "no_cut"
    err = refused(vp.judge_reopen, facts(order(), reopen_in_flight="op-9"), "x")
    assert err.condition == "reopen_in_flight" and err.context == {"cmd_id": "op-9"}


def test_reopen_refused_while_gas_is_detected() -> None:
    alarm = ActiveAlarm(5, "prealarm", "active", at(200))
    err = refused(vp.judge_reopen, facts(order(), gas_alarms=(alarm,)), "eng.b")
    assert err.condition == "gas_alarm" and err.context == {"alarm_id": 5}


@pytest.mark.parametrize("cause", ["leak", "valve_inspection", "valve_escalation"])
def test_reopen_refused_while_an_order_is_open(cause: str) -> None:
    err = refused(vp.judge_reopen, facts(order(2, cause, "dispatched"), order()), "eng.b")
    assert err.condition == "open_order" and err.context["work_order_id"] == 2


@pytest.mark.parametrize(("bad", "why"), [
    (order(2, status="cancelled", when=50), "order 2 (leak) was cancelled"),
    (order(2, when=-5), "order 2 (leak) was resolved at"),
    (order(2, role="operator"), "resolved by eng.a, who is not an engineer"),
    (order(2, cmd_id="op-old"), "answers for an earlier cut (op-old)"),
    (order(2, cause="detector_maintenance"), "the household has no such order"),
])
def test_orders_that_never_count(bad: vp.SafetyOrder, why: str) -> None:
    err = refused(vp.judge_reopen, facts(bad), "eng.b")
    assert err.condition == "no_resolved_order" and why in err.message
    assert "/valves/m1/inspection" in err.message and CUT.describe() in err.message


def test_an_order_resolved_before_a_newer_leak_does_not_count() -> None:
    leak = ActiveAlarm(8, "leak", "cleared", at(150))
    err = refused(vp.judge_reopen, facts(order(when=100), last_cut_alarm=leak), "eng.b")
    assert "before the leak alarm 8" in err.message
    grant = vp.judge_reopen(facts(order(when=200), last_cut_alarm=leak), "eng.b")
    assert grant.basis.id == 1


def test_the_second_person() -> None:
    assert vp.judge_reopen(facts(order(cmd_id="gw-1")), "eng.b") == vp.Grant(
        order(cmd_id="gw-1"), False, (order(cmd_id="gw-1"),))
    mine = vp.judge_reopen(facts(order()), "eng.a")
    assert mine.needs_supervisor and mine.basis.id == 1
    # Another engineer resolved an order of the cut too: the request stands on that one.
    both = vp.judge_reopen(facts(order(2, by="eng.a", when=300), order(3, by="eng.c")), "eng.a")
    assert not both.needs_supervisor and both.basis.id == 3


def test_confirmation() -> None:
    pending = vp.PendingReopen(4, "pending", "eng.a", "gw-1", at(0))
    assert vp.judge_confirmation(facts(order()), pending, "boss").id == 1
    assert refused(vp.judge_confirmation, facts(order()), pending,
                   "eng.a").condition == "same_person"
    resolved_by_boss = facts(order(by="boss", role="admin"))
    assert refused(vp.judge_confirmation, resolved_by_boss,
                   vp.PendingReopen(4, "pending", "eng.a", "gw-1", at(0)),
                   "boss").condition == "same_person"
    closed = vp.PendingReopen(4, "confirmed", "eng.a", "gw-1", at(0))
    assert refused(vp.judge_confirmation, facts(order()), closed,
                   "boss").condition == "request_closed"
    newer = facts(order(when=900), cut=vp.Cut(at(800), "gw-2", "gateway"))
    assert refused(vp.judge_confirmation, newer, pending, "boss").condition == "superseded"
    gas = facts(order(), gas_alarms=(ActiveAlarm(5, "leak", "active", at(400)),))
    assert refused(vp.judge_confirmation, gas, pending, "boss").condition == "gas_alarm"
