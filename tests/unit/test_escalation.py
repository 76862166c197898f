"""What an unconfirmed valve command asks for: a close that never confirmed sends a crew to
shut off the gas by hand; a reopen (or a self-test) that never confirmed asks for an on-site
check, since the gas is off or the valve's state unknown, and a shut-off would be wrong."""

from __future__ import annotations

import pytest
from feed import Harness

from gateway.core import response
from gateway.core.commands import ValveCommand


def test_only_an_unconfirmed_close_asks_for_a_manual_shut_off() -> None:
    close = response.escalation_for("valve_close")
    assert "shut off gas manually" in close.title and close.cause == "valve_escalation"
    for action in ("valve_open", "self_test"):
        p = response.escalation_for(action)
        assert p.cause == "valve_check"
        assert "on-site check" in p.title and "shut off" not in p.title.replace("no shut-off", "")


@pytest.mark.parametrize(
    ("action", "cause", "title_has"),
    [
        ("valve_close", "valve_escalation", "shut off gas manually"),
        ("valve_open", "valve_check", "on-site check"),
    ],
)
def test_an_operator_command_never_acked_escalates_by_its_action(
    action: str, cause: str, title_has: str
) -> None:
    h = Harness()
    cmd = ValveCommand("op-1", "m3", "h3", action, "operator", "alice", h.now)
    assert h.gw.operator_command(cmd, h.now) is None
    for _ in range(30):  # every resend, then the escalation
        h.now += 5
        h.gw.tick(h.now)
    orders = [(w.cause, w.title) for w in h.gw.batch.work_orders]
    assert len(orders) == 1, orders
    assert orders[0][0] == cause and title_has in orders[0][1]
    if action == "valve_open":
        assert "manually" not in orders[0][1]
