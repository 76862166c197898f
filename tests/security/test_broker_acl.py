"""The broker lets a device speak only for itself: it may publish only under its own id and
read only its own commands; no account but the gateway's command link sends commands.

Negative checks are ordered by the broker itself: each forbidden publish is acknowledged
(and dropped) before the allowed one that follows it is sent, so the victim's first
delivery shows whether anything forbidden got through.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from support import wait_row

from gateway.ops import credentials

pytestmark = pytest.mark.services


def _cmd(cmd_id: str, action: str = "valve_close") -> bytes:
    return json.dumps({"cmd_id": cmd_id, "action": action, "reason": "t",
                       "ts": time.time()}).encode()


def test_no_device_or_tool_account_can_command_another_meter(runtime: Any, fleet: Any,
                                                             devices: Any) -> None:
    mine, theirs = fleet(2)
    victim = devices(theirs.meter.id)
    attackers = [devices(mine.detectors[0].id, subscribe_cmd=False),
                 devices(mine.meter.id, subscribe_cmd=False),
                 devices(credentials.OPS, subscribe_cmd=False,
                         password=credentials.service_password(runtime, credentials.OPS)),
                 devices(credentials.MONITOR, subscribe_cmd=False,
                         password=credentials.service_password(runtime, credentials.MONITOR))]
    for i, a in enumerate(attackers):
        for action in ("valve_close", "valve_open"):
            a.client.publish(f"gas/v1/{theirs.meter.id}/cmd", _cmd(f"forged-{i}-{action}",
                                                                   action),
                             qos=1).wait_for_publish(5)
    link = devices(credentials.COMMANDS, subscribe_cmd=False,
                   password=credentials.service_password(runtime, credentials.COMMANDS))
    link.client.publish(f"gas/v1/{theirs.meter.id}/cmd", _cmd("real-1", "self_test"),
                        qos=1).wait_for_publish(5)
    _, first = victim.commands.get(timeout=5)
    assert first["cmd_id"] == "real-1"
    assert victim.commands.empty()


def test_a_device_cannot_publish_readings_under_another_id(gateway: Any, fleet: Any,
                                                           devices: Any, dsn: str) -> None:
    mine, theirs = fleet(2)
    gateway.wait_devices(dsn)
    attacker = devices(mine.detectors[0].id, subscribe_cmd=False)
    victim_det = theirs.detectors[0].id
    victim_meter = devices(theirs.meter.id)
    for seq in (1, 2):
        attacker.client.publish(f"gas/v1/{victim_det}/telemetry", json.dumps(
            {"seq": seq, "ts": time.time(), "ch4": 100.0, "fault": 0}).encode(),
            qos=1).wait_for_publish(5)
        attacker.client.publish(f"gas/v1/{victim_det}/event", json.dumps(
            {"seq": seq, "ts": time.time(), "type": "local_alarm"}).encode(),
            qos=1).wait_for_publish(5)
    honest = devices(victim_det, subscribe_cmd=False)
    honest.detector(0.5)  # seq 1: the victim's own first reading
    rows = wait_row(dsn, "SELECT seq, ch4_lel FROM detector_readings WHERE device_id = %s",
                    (victim_det,), what="the victim's own first reading stored")
    assert rows == [(1, pytest.approx(0.5))]
    with psycopg.connect(dsn) as conn:
        events = conn.execute("SELECT count(*) FROM device_events WHERE device_id = %s",
                              (victim_det,)).fetchone()[0]
        assert events == 0
    assert victim_meter.commands.empty()
