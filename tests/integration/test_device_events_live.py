"""Device events against the real broker, gateway and database: a detector's local alarm is
an alarm, an urgent order and a notice, and the platform closes the valve only when the meter
did not confirm the detector's cut in time (a gateway of the test's own, with a 1 s setting)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import pytest
from support import GatewayProcess, wait_row

pytestmark = pytest.mark.services


@pytest.fixture
def quick_gateway(gateway: GatewayProcess, stack) -> Iterator[GatewayProcess]:
    """A gateway with a 1 s confirmation setting. The `gateway` account's client id is its
    user name (use_username_as_clientid): the run's shared gateway steps aside meanwhile."""
    gateway.stop()
    gw = GatewayProcess(stack, extra_env={"GAS_SAFETY_RESPONSE__LOCAL_CUT_CONFIRM_S": "1"})
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
        gateway.start()


def platform_close(meter, timeout_s: float) -> dict | None:
    """The next valve_close the meter receives within timeout_s, or None."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            _, cmd = meter.commands.get(True, left)
        except queue.Empty:
            return None
        if cmd["action"] == "valve_close":
            return cmd
    return None


def test_local_alarm_unconfirmed_cut_is_closed_by_the_platform(
    quick_gateway, fleet, devices, dsn
) -> None:
    house = fleet(1)[0]
    quick_gateway.wait_devices(dsn)
    meter = devices(house.meter.id)
    det = devices(house.detectors[0].id)
    t0 = det.publish("event", {"seq": 1, "ts": time.time(), "type": "local_alarm"})
    wait_row(
        dsn,
        "SELECT 1 FROM work_orders WHERE household_id = %s AND cause = 'leak'"
        " AND priority = 'urgent'",
        (house.id,),
    )
    latency = time.time() - t0
    alarm = wait_row(dsn, "SELECT kind, evidence FROM alarms WHERE device_id = %s", (det.id,))
    assert alarm[0][0] == "leak" and "detector's own alarm" in alarm[0][1][0]["source"]
    wait_row(
        dsn, "SELECT 1 FROM notifications WHERE household_id = %s AND kind = 'leak'", (house.id,)
    )
    cmd = platform_close(meter, 10)
    assert cmd is not None, "the platform did not close an unconfirmed cut"
    assert time.time() - t0 >= 1.0
    why = wait_row(
        dsn,
        "SELECT details FROM audit_log WHERE action = 'cut.unconfirmed' AND entity_id = %s",
        (house.id,),
    )
    assert why[0][0]["why"] == "meter did not confirm the detector's cut within 1 s"
    assert latency < 5, f"local_alarm -> work order took {latency:.2f} s"


def test_local_alarm_confirmed_by_the_meter_sends_no_command(
    quick_gateway, fleet, devices, dsn
) -> None:
    house = fleet(1)[0]
    quick_gateway.wait_devices(dsn)
    meter = devices(house.meter.id)
    det = devices(house.detectors[0].id)
    det.publish("event", {"seq": 1, "ts": time.time(), "type": "local_alarm"})
    meter.publish("event", {"seq": 1, "ts": time.time(), "type": "valve_closed_local"})
    wait_row(
        dsn,
        "SELECT 1 FROM audit_log WHERE action = 'alarm.valve_closed_local' AND entity_id = %s",
        (house.id,),
    )
    # the deadline (1 s) passes, with sweeps every 0.2 s: still no command
    assert platform_close(meter, 3) is None
    assert wait_row(
        dsn,
        "SELECT count(*) FROM valve_commands WHERE meter_id = %s",
        (meter.id,),
        cond=lambda r: r[0][0] == 0,
    )


def test_platform_rule_closes_at_once_behind_a_local_alarm(gateway, fleet, devices, dsn) -> None:
    """The detector's local_alarm holds the leak alarm; its readings at leak level meet the
    platform's own rule just after: the platform closes then, not at the 5 s deadline, and only once."""
    house = fleet(1)[0]
    gateway.wait_devices(dsn)
    meter = devices(house.meter.id)
    det = devices(house.detectors[0].id)
    t0 = det.publish("event", {"seq": 1, "ts": time.time(), "type": "local_alarm"})
    wait_row(dsn, "SELECT 1 FROM alarms WHERE device_id = %s", (det.id,))
    for seq in (2, 3):
        det.publish("telemetry", {"seq": seq, "ts": time.time(), "ch4": 25.0, "fault": 0})
    cmd = platform_close(meter, 10)
    assert cmd is not None, "the platform's own rule did not close behind the local_alarm"
    took = time.time() - t0
    assert took < 4.0, f"local_alarm -> platform close took {took:.2f} s (the deadline is 5 s)"
    why = wait_row(
        dsn,
        "SELECT details FROM audit_log WHERE action = 'cut.rule_confirmed' AND entity_id = %s",
        (house.id,),
    )
    assert "leak rule confirmed" in why[0][0]["why"] and why[0][0]["cmd_id"] == cmd["cmd_id"]
    # past the deadline: the timer sent nothing more; one alarm, one order, one notice
    # (the test's meter does not ack: a resend repeats the cmd_id)
    again = platform_close(meter, 7)
    while again is not None and again["cmd_id"] == cmd["cmd_id"]:
        again = platform_close(meter, 7)
    assert again is None, f"a second close was sent: {again}"
    for sql in (
        "SELECT count(*) FROM valve_commands WHERE meter_id = %s AND action = 'valve_close'",
        "SELECT count(*) FROM alarms WHERE household_id = %s AND kind = 'leak'",
        "SELECT count(*) FROM work_orders WHERE household_id = %s AND cause = 'leak'",
        "SELECT count(*) FROM notifications WHERE household_id = %s AND kind = 'leak'",
    ):
        key = meter.id if "valve_commands" in sql else house.id
        assert wait_row(dsn, sql, (key,))[0][0] == 1, sql
