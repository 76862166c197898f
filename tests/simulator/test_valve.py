"""Meters obey commands: the valve state machine, with its poor responders."""

from __future__ import annotations

from gateway.protocol import Command
from simulator import valve as vv
from simulator.valve import Responder, Responsiveness


def close(cmd_id: str = "c-1") -> Command:
    return Command(cmd_id, "valve_close", "leak", 1.0)


def acks(effects: list[vv.Effect]) -> list[vv.SendAck]:
    return [e for e in effects if isinstance(e, vv.SendAck)]


def moves(effects: list[vv.Effect]) -> list[vv.MoveValve]:
    return [e for e in effects if isinstance(e, vv.MoveValve)]


def test_close_closes_and_acks_with_the_same_cmd_id() -> None:
    st = vv.ValveState()
    eff = vv.on_command(st, Responsiveness(), close("abc"), 100.0)
    assert [m.valve for m in moves(eff)] == ["closed"]
    (ack,) = acks(eff)
    assert (ack.ack.cmd_id, ack.ack.ok, ack.ack.valve, ack.ack.error) == ("abc", True, "closed",
                                                                           None)
    assert ack.at == 100.0 and not ack.duplicate
    assert st.valve == "closed"


def test_duplicate_is_acked_again_but_not_executed_again() -> None:
    st = vv.ValveState()
    vv.on_command(st, Responsiveness(), close("dup"), 100.0)
    st.valve = "open"  # even if something reopened it meanwhile, a resend does not act again
    eff = vv.on_command(st, Responsiveness(), close("dup"), 105.0)
    assert moves(eff) == []
    (ack,) = acks(eff)
    assert ack.duplicate and ack.ack.cmd_id == "dup" and ack.ack.valve == "closed"
    # a new command id is a new command
    assert moves(vv.on_command(st, Responsiveness(), close("new"), 106.0))


def test_reopen_waits_for_the_resident() -> None:
    st = vv.ValveState()
    vv.on_command(st, Responsiveness(), close(), 1.0)
    eff = vv.on_command(st, Responsiveness(), Command("o-1", "valve_open", "resolved", 2.0), 2.0)
    (ack,) = acks(eff)
    assert (ack.ack.ok, ack.ack.valve, ack.ack.error) == (True, "closed", vv.AWAITING_PRESS)
    assert moves(eff) == [] and st.valve == "closed"
    assert [m.valve for m in moves(vv.on_button_press(st, 30.0))] == ["open"]
    assert st.valve == "open"
    assert vv.on_button_press(st, 31.0) == []  # pressing again does nothing


def test_press_without_a_reopen_request_does_nothing() -> None:
    st = vv.ValveState()
    vv.on_command(st, Responsiveness(), close(), 1.0)
    assert vv.on_button_press(st, 2.0) == [] and st.valve == "closed"


def test_self_test_reports_the_valve() -> None:
    st = vv.ValveState()
    (ack,) = acks(vv.on_command(st, Responsiveness(), Command("s", "self_test", "", 0), 5.0))
    assert ack.ack.valve == "open" and ack.ack.ok


def test_slow_meter_acks_late() -> None:
    st = vv.ValveState()
    eff = vv.on_command(st, Responsiveness(Responder.SLOW, 8.0), close(), 100.0)
    assert acks(eff)[0].at == 108.0 and moves(eff)[0].at == 108.0
    # a resend before it is done is answered when it is done, not earlier
    assert acks(vv.on_command(st, Responsiveness(Responder.SLOW, 8.0), close(), 103.0))[0].at \
        == 108.0


def test_never_ack_meter_closes_silently() -> None:
    st = vv.ValveState()
    eff = vv.on_command(st, Responsiveness(Responder.NEVER), close(), 1.0)
    assert acks(eff) == [] and [m.valve for m in moves(eff)] == ["closed"]
    assert acks(vv.on_command(st, Responsiveness(Responder.NEVER), close(), 6.0)) == []


def test_lossy_meter_drops_a_share_and_a_resend_can_get_through() -> None:
    profile = Responsiveness(Responder.LOSSY, 0.0, 0.5)
    dropped = got_through_on_resend = 0
    for i in range(400):
        st = vv.ValveState()
        first = vv.on_command(st, profile, close(f"c{i}"), 1.0, seed=3)
        if isinstance(first[0], vv.Dropped):
            dropped += 1
            for k in range(4):  # the platform resends up to 3 times
                eff = vv.on_command(st, profile, close(f"c{i}"), 6.0 + k, seed=3)
                if acks(eff):
                    got_through_on_resend += 1
                    assert moves(eff)  # executed once, on the delivery that got through
                    break
    assert 150 < dropped < 250
    assert got_through_on_resend > 0.8 * dropped


def test_lossy_drops_are_reproducible() -> None:
    profile = Responsiveness(Responder.LOSSY, 0.0, 0.5)
    runs = [[type(vv.on_command(vv.ValveState(), profile, close(f"c{i}"), 1.0, seed=3)[0])
             for i in range(50)] for _ in range(2)]
    assert runs[0] == runs[1]


def test_responder_shares() -> None:
    shares = vv.ResponderShares(slow=0.1, lossy=0.05, never=0.02, slow_delay_s=7.0)
    got = shares.assign(seed=1, meters=20_000)
    count = {r: sum(1 for x in got if x.kind is r) for r in Responder}
    assert abs(count[Responder.SLOW] / 20_000 - 0.1) < 0.01
    assert abs(count[Responder.LOSSY] / 20_000 - 0.05) < 0.01
    assert abs(count[Responder.NEVER] / 20_000 - 0.02) < 0.005
    assert all(x.delay_s == 7.0 for x in got if x.kind is Responder.SLOW)
    assert got == shares.assign(seed=1, meters=20_000)
