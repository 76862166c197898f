"""The call-chain planner, with a fake clock: who is called next, when, and when it stops."""

from __future__ import annotations

import pytest

from gateway.core import call_chain as cc
from gateway.core.call_chain import ChainPolicy, Contacts, Next, Outcome

LEAK = ["voice_owner", "sms_owner", "voice_emergency", "control_room"]
BOTH = Contacts("+15550000001", "+15550000002")
OWNER_ONLY = Contacts("+15550000001", None)
T0 = 1_000_000.0


def policy(names: list[str] = LEAK, **kw: float) -> ChainPolicy:
    return ChainPolicy.of(names, **kw)  # type: ignore[arg-type]


def name(p: ChainPolicy, d: cc.Decision) -> str:
    return p.steps[d.step].name


def test_a_leak_chain_starts_with_a_call_to_the_owner_now() -> None:
    p = policy()
    d = cc.start(p, BOTH, T0)
    assert (d.next, name(p, d), d.attempt, d.due) == (Next.ATTEMPT, "voice_owner", 0, T0)


def test_answered_at_step_one_stops_the_chain() -> None:
    p = policy()
    d = cc.after(p, BOTH, 0, 1, Outcome.ANSWERED, T0, T0 + 20)
    assert d.next is Next.CONFIRMED and d.done and d.reached


def test_nobody_answers_walks_to_the_control_room_after_the_confirm_window() -> None:
    p = policy(confirm_s=600.0)
    d = cc.after(p, BOTH, 0, 1, Outcome.NO_ANSWER, T0, T0 + 30)
    assert (d.next, name(p, d), d.due) == (Next.ATTEMPT, "sms_owner", T0 + 30)
    d = cc.after(p, BOTH, d.step, 1, Outcome.SENT, T0, T0 + 31)
    assert (name(p, d), d.reached) == ("voice_emergency", True)
    d = cc.after(p, BOTH, d.step, 1, Outcome.NO_ANSWER, T0, T0 + 60, d.reached)
    # the household still has until T0 + 600 to confirm
    assert (d.next, name(p, d), d.due) == (Next.FLAG, "control_room", T0 + 600)
    # once flagged, nothing follows
    assert cc.after(p, BOTH, d.step, 1, Outcome.SENT, T0, T0 + 600).done


def test_the_flag_is_due_at_once_when_the_window_has_passed() -> None:
    p = policy(confirm_s=10.0)
    d = cc.after(p, BOTH, 2, 1, Outcome.NO_ANSWER, T0, T0 + 50)
    assert (d.next, d.due) == (Next.FLAG, T0 + 50)


def test_failed_attempts_retry_with_doubling_backoff_then_move_on() -> None:
    p = policy(attempts=3, backoff_s=2.0)
    d1 = cc.after(p, BOTH, 0, 1, Outcome.FAILED, T0, T0 + 1)
    assert (d1.next, d1.step, d1.attempt, d1.due) == (Next.ATTEMPT, 0, 1, T0 + 3)
    d2 = cc.after(p, BOTH, 0, 2, Outcome.FAILED, T0, T0 + 3)
    assert (d2.step, d2.attempt, d2.due) == (0, 2, T0 + 7)
    d3 = cc.after(p, BOTH, 0, 3, Outcome.FAILED, T0, T0 + 7)
    assert (name(p, d3), d3.attempt, d3.due) == ("sms_owner", 0, T0 + 7)


def test_backoff_is_capped() -> None:
    p = policy(attempts=20, backoff_s=2.0, backoff_max_s=60.0)
    assert cc.backoff_s(p, 1) == 2.0
    assert cc.backoff_s(p, 4) == 16.0
    assert cc.backoff_s(p, 15) == 60.0


def test_no_emergency_contact_skips_its_step() -> None:
    p = policy()
    d = cc.after(p, OWNER_ONLY, 1, 1, Outcome.SENT, T0, T0 + 5)
    assert (d.next, name(p, d)) == (Next.FLAG, "control_room")


def test_a_short_chain_ends_sent_or_failed() -> None:
    p = policy(["sms_owner"])
    d = cc.start(p, BOTH, T0)
    assert name(p, d) == "sms_owner"
    assert cc.after(p, BOTH, 0, 1, Outcome.SENT, T0, T0).next is Next.SENT
    p1 = policy(["sms_owner"], attempts=1)
    assert cc.after(p1, BOTH, 0, 1, Outcome.FAILED, T0, T0).next is Next.FAILED


def test_a_household_without_phones_reaches_the_control_room_or_fails() -> None:
    nobody = Contacts(None, None)
    d = cc.start(policy(confirm_s=600), nobody, T0)
    assert (d.next, d.due) == (Next.FLAG, T0 + 600)
    assert cc.start(policy(["sms_owner", "sms_emergency"]), nobody, T0).next is Next.FAILED


def test_the_window_counts_from_when_the_notice_was_written() -> None:
    d = cc.start(policy(["control_room"], confirm_s=600), BOTH, T0 + 100, started=T0)
    assert d.due == T0 + 600


@pytest.mark.parametrize(
    ("names", "why"),
    [
        (["control_room", "sms_owner"], "last step"),
        (["fax_owner"], "unknown call-chain step"),
        ([], "at least one step"),
        (["sms_owner", "sms_owner"], "each step once"),
    ],
)
def test_bad_chains_are_refused_with_the_reason(names: list[str], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        ChainPolicy.of(names)


def test_settings_refuse_a_bad_chain_and_a_webhook_without_its_url() -> None:
    from pydantic import ValidationError

    from gateway.settings import Settings

    with pytest.raises(ValidationError, match=r"notify_chains\.tamper"):
        Settings(response={"notify_chains": {"tamper": ["sms_owner", "fax_owner"]}})
    with pytest.raises(ValidationError, match="notify_voice_url"):
        Settings(response={"notify_channel": "webhook", "notify_sms_url": "http://x/sms"})
