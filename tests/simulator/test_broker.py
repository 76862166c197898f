"""The simulator against the real Mosquitto: credentials, last wills, commands, bridges, load."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from support import reload_broker, wait_until_async

from gateway import protocol
from gateway.ops import credentials, provision
from gateway.ops.stack import Runtime, Stack
from simulator import notices, wire
from simulator.fleet import Fleet
from simulator.link import Link, LinkError
from simulator.runner import FleetRun, RunOptions
from simulator.transport import DETECTOR, BridgeTransport, PerDeviceTransport
from simulator.valve import ResponderShares

pytestmark = pytest.mark.services


@pytest.fixture
def gateway_account(gateway):  # type: ignore[no-untyped-def]
    """The `gateway` MQTT account for a test client: the account's client id is fixed
    (use_username_as_clientid), so the run's shared gateway steps aside meanwhile."""
    gateway.stop()
    try:
        yield credentials.GATEWAY
    finally:
        gateway.start()


def provisioned(stack: Stack, rt: Runtime, prefix: str, households: int, seed: int = 1) -> Fleet:
    city = provision.generate_city(households, seed=seed, prefix=prefix)
    provision.provision(rt.dsn, city, str(stack.passwd_file), rt.fleet_key)
    reload_broker(stack, rt, city[-1].devices[-1].id)
    return Fleet.from_households(city)


class Watcher:
    """A service client collecting what it receives (monitor, or the gateway account)."""

    def __init__(self, rt: Runtime, account: str = credentials.MONITOR) -> None:
        self.got: list[tuple[float, wire.Message]] = []
        self.link = Link("127.0.0.1", rt.mqtt_port, account, account,
                         credentials.service_password(rt, account),
                         on_message=lambda m: self.got.append((time.time(), m)))

    async def start(self, *topics: str) -> Watcher:
        await self.link.connect()
        await self.link.subscribe([(t, 1) for t in topics])
        return self

    async def wait(self, pred: Callable[[wire.Message], bool], timeout_s: float = 5.0,
                   count: int = 1) -> list[tuple[float, wire.Message]]:
        def hits() -> list[tuple[float, wire.Message]] | None:
            found = [(t, m) for t, m in self.got if pred(m)]
            return found if len(found) >= count else None

        try:
            return await wait_until_async(hits, timeout_s, interval_s=0.02,
                                          what=f"{count} matching message(s)")
        except AssertionError as err:
            raise AssertionError(f"{err}; got {[m.topic for _, m in self.got[-5:]]}") from None


async def test_per_device_connections_use_their_own_credentials(stack, runtime, prefix) -> None:
    fleet = provisioned(stack, runtime, prefix, 3)
    mon = await Watcher(runtime).start("gas/v1/+/status")
    tr = PerDeviceTransport(fleet, "127.0.0.1", runtime.mqtt_port, runtime.fleet_key, runtime)
    await tr.start(lambda *a: None)
    try:
        n = fleet.devices
        hits = await mon.wait(lambda m: m.topic.split("/")[2].startswith(prefix), count=n)
        statuses = {m.topic.split("/")[2]: json.loads(m.payload) for _, m in hits}
        assert set(statuses) == set(fleet.all_device_ids())
        det = fleet.detector_ids[0]
        assert statuses[det] == {"online": True, "fw": "1.4.2",
                                 "model": fleet.detector_models[0]}
        # a wrong password, and a device posing as another, are refused by the broker
        bad = Link("127.0.0.1", runtime.mqtt_port, det, det, "not-the-password")
        with pytest.raises(LinkError, match="refused"):
            await bad.connect()
    finally:
        await tr.close()
        await mon.link.disconnect()


async def test_last_will_fires_when_a_device_drops(stack, runtime, prefix) -> None:
    fleet = provisioned(stack, runtime, prefix, 2)
    det = fleet.detector_ids[0]
    tr = PerDeviceTransport(fleet, "127.0.0.1", runtime.mqtt_port, runtime.fleet_key, runtime)
    await tr.start(lambda *a: None)
    mon = await Watcher(runtime).start(protocol.topic(det, "status"))
    try:
        await mon.wait(lambda m: json.loads(m.payload)["online"] is True)
        t0 = time.time()
        tr.drop(DETECTOR, 0)  # the socket dies, no DISCONNECT: the broker sends the will
        ((t, _),) = await mon.wait(lambda m: json.loads(m.payload) == {"online": False})
        assert t - t0 < 2.0
        # retained: whoever subscribes later learns the device is offline
        late = await Watcher(runtime).start(protocol.topic(det, "status"))
        (_, m2), = await late.wait(lambda m: True)
        assert m2.retain and json.loads(m2.payload) == {"online": False}
        await late.link.disconnect()
    finally:
        await tr.close()
        await mon.link.disconnect()


async def test_foreign_topic_is_refused_by_the_broker(stack, runtime, prefix) -> None:
    fleet = provisioned(stack, runtime, prefix, 2)
    tr = PerDeviceTransport(fleet, "127.0.0.1", runtime.mqtt_port, runtime.fleet_key, runtime)
    await tr.start(lambda *a: None)
    mon = await Watcher(runtime).start("gas/v1/+/telemetry")
    try:
        own, other = fleet.detector_topics[0], fleet.detector_topics[1]
        link = tr.link_for(DETECTOR, 0)
        link.publish(other, b'{"seq":1,"ts":1.0,"ch4":50.0,"fault":0}')
        link.publish(own, b'{"seq":2,"ts":1.0,"ch4":1.0,"fault":0}')
        # the broker handles one connection's publishes in order and forwards them to the
        # monitor in that order: had the foreign one got through, it would be there first
        await mon.wait(lambda m: m.topic == own.decode())
        assert not [m for _, m in mon.got if m.topic == other.decode()]
    finally:
        await tr.close()
        await mon.link.disconnect()


@pytest.mark.parametrize("per_device", [False, True], ids=["bridge", "per-device"])
async def test_meter_obeys_valve_close_and_acks(stack, runtime, prefix, per_device,
                                                gateway_account) -> None:
    fleet = provisioned(stack, runtime, prefix, 3)
    meter = fleet.meter_ids[1]
    opts = RunOptions(duration_s=30, speed=1, interval_s=0.3, leaks=0, faults=0,
                      responders=ResponderShares(), grace_s=0, status_on_start=False)
    tr = (PerDeviceTransport(fleet, "127.0.0.1", runtime.mqtt_port, runtime.fleet_key, runtime)
          if per_device else BridgeTransport(fleet, "127.0.0.1", runtime.mqtt_port, runtime,
                                             (6,)))
    run = FleetRun(fleet, tr, opts, per_device=per_device)
    await run.start()
    stop = asyncio.Event()
    task = asyncio.create_task(run.run(stop))
    gw = await Watcher(runtime, credentials.GATEWAY).start(
        protocol.topic(meter, "ack"), protocol.topic(meter, "telemetry"))
    try:
        cmd = protocol.Command("cut-1", "valve_close", "test", time.time())
        t_pub = time.time()
        gw.link.publish(protocol.topic(meter, "cmd").encode(), protocol.encode(cmd))
        (t_ack, ack_msg), = await gw.wait(lambda m: m.topic.endswith("/ack"))
        ack = json.loads(ack_msg.payload)
        assert set(ack) == {"cmd_id", "ok", "valve", "ts", "error"}
        assert (ack["cmd_id"], ack["ok"], ack["valve"], ack["error"]) == ("cut-1", True,
                                                                          "closed", None)
        assert t_ack - t_pub < 1.0
        protocol.decode(protocol.Ack, ack_msg.payload)  # the platform's own decoder takes it
        # the next readings report the valve closed and no flow
        _, reading = (await gw.wait(lambda m: m.topic.endswith("/telemetry")
                                    and b'"closed"' in m.payload))[0]
        r = protocol.decode(protocol.MeterReading, reading.payload)
        assert r.valve == "closed" and r.flow == 0
        # a resend with the same cmd_id is acked again, not executed again
        gw.link.publish(protocol.topic(meter, "cmd").encode(), protocol.encode(cmd))
        await gw.wait(lambda m: m.topic.endswith("/ack"), count=2)
        rec = run.truth.commands["cut-1"]
        assert len(rec.received_at) == 2 and len(rec.acks_published) == 2
        assert run.valves[1].deliveries == {"cut-1": 2}
    finally:
        stop.set()
        await task
        await tr.close()
        await gw.link.disconnect()


async def test_bridge_mode_publishes_readings_all_pubacked(stack, runtime, prefix) -> None:
    fleet = provisioned(stack, runtime, prefix, 40)
    mon = await Watcher(runtime).start("gas/v1/+/telemetry")
    tr = BridgeTransport(fleet, "127.0.0.1", runtime.mqtt_port, runtime, (4, 5), subscribe=False)
    await tr.start(lambda *a: None)
    try:
        n = 5_000
        for k in range(n):
            d = k % fleet.detectors
            tr.publish(DETECTOR, d, fleet.detector_topics[d],
                       b'{"seq":%d,"ts":%.3f,"ch4":1.0,"fault":0}' % (k, time.time()))
        assert await tr.wait_acked(10.0)
        assert tr.sent == tr.acked == n and tr.inflight == 0
        await mon.wait(lambda m: m.topic.split("/")[2].startswith(prefix), count=n, timeout_s=10)
    finally:
        await tr.close()
        await mon.link.disconnect()


async def test_scenario_against_the_gateway(stack, runtime, prefix, gateway, tmp_path) -> None:
    """A whole run against `gas-safety gateway`: leaks develop, the gateway cuts, nothing is
    lost, every bad payload is rejected for its reason, and the truth scores it all."""
    from simulator import storage
    from simulator.behaviour import LeakKind

    fleet = provisioned(stack, runtime, prefix, 40)
    gateway.wait_devices(runtime.dsn)
    opts = RunOptions(duration_s=8, speed=60, interval_s=0.5, leaks=4, faults=2, seed=4,
                      grace_s=8, chaos=0.03, responders=ResponderShares(),
                      leak_kinds=(LeakKind.RUPTURE, LeakKind.HOSE_OFF, LeakKind.SEEP),
                      # early enough for the seep to reach its cut inside 8 s (a start at
                      # 43 % of the run left it due in some runs and not in others)
                      leak_window=(0.05, 0.35))
    run = FleetRun(fleet, BridgeTransport(fleet, "127.0.0.1", runtime.mqtt_port, runtime, (3,)),
                   opts)
    await run.start()
    truth = await run.run()
    await run.transport.close()
    ids, lo, hi, n = run.sent_ranges()
    stored, _ = storage.wait_stored(runtime.dsn, ids, lo, hi, run.started_at, int(n.sum()),
                                    3.0, 20.0)
    db = notices.read_platform(runtime.dsn, fleet, run.started_at, list(truth.commands))
    s = truth.score(db)
    assert stored == int(n.sum()), "readings lost"
    not_due = [(lk.id, lk.kind, round(lk.start_wall - run.started_at, 2), lk.peak,
                lk.first_dangerous_publish) for lk in truth.leaks if lk.cut_due_publish is None]
    assert s["cut_due"] >= 4 and s["cut"] == s["cut_due"], not_due
    assert not s["missed"] and not s["false_cuts"]
    assert s["latency_to_command_ms"]["n"] == s["cut"]
    assert s["platform"]["valve_commands"].get("acked", 0) >= s["cut"]
    for reason, got in s["platform"]["rejects_vs_expected"].items():
        assert got["found"] == got["expected"], (reason, got)
    truth.to_json(tmp_path / "truth.json", s)
    assert json.loads((tmp_path / "truth.json").read_text())["scores"]["cut"] == s["cut"]


async def test_load_mode_small(stack, runtime, prefix) -> None:
    """Publisher processes pace themselves and every reading is PUBACKed."""
    from simulator import load

    fleet = provisioned(stack, runtime, prefix, 120)
    args = argparse.Namespace(devices=200, rate=2_000.0, duration=2.0, processes=2,
                              prefix=prefix, seed=1, probes=0.0, settle=1.0,
                              no_store_check=True, quiet=True)
    r: dict[str, Any] = await load.run_load(args, fleet, [], runtime, "127.0.0.1",
                                            runtime.mqtt_port, runtime.dsn, live=False)
    assert r["devices"] >= 200 and r["processes"] == 2
    assert 3_000 <= r["sent"] <= 4_400  # 2 s at 2 k/s, less the ramp
    assert r["acked_by_broker"] == r["sent"], r["per_process"]
    assert all(p["all_acked"] for p in r["per_process"]), r["per_process"]


def test_loss_accounting_counts_distinct_seqs_in_range(dsn, prefix) -> None:
    """Stored = distinct (device, seq) reading rows within each device's sent range."""
    import datetime as dt

    import numpy as np
    import psycopg

    from simulator import storage

    det, meter = f"{prefix}dx", f"{prefix}mx"
    now = time.time()
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    with psycopg.connect(dsn) as conn:
        for seq in (10, 11, 12, 13, 14, 20):  # 20 is outside the range sent in this run
            conn.execute("INSERT INTO detector_readings (time, device_id, seq, ch4_lel, fault,"
                         " received_at) VALUES (%s, %s, %s, 1.0, 0, now())",
                         (t + dt.timedelta(milliseconds=seq), det, seq))
        # a redelivery stored twice under another time still counts once
        conn.execute("INSERT INTO detector_readings (time, device_id, seq, ch4_lel, fault,"
                     " received_at) VALUES (%s, %s, 12, 1.0, 0, now())",
                     (t + dt.timedelta(seconds=1), det))
        conn.execute("INSERT INTO meter_readings (time, device_id, seq, vol_m3, flow_m3h, valve,"
                     " batt_v, rssi, received_at) VALUES (%s, %s, 5, 1, 0, 0, 3.6, -80, now())",
                     (t, meter))
    n = storage.count_stored(dsn, [det, meter], np.array([10, 5]), np.array([14, 6]), now - 5)
    assert n == 5 + 1


async def test_type_a_detectors_tamper_and_outage_against_the_gateway(
        stack, runtime, prefix, gateway) -> None:
    """Type A detectors close their meters themselves and the platform records it; where a
    meter fails to, the platform closes it after its confirmation window. A tamper opens a
    high-priority order; a detector back from a power cut says power_on. Each leak's order
    and notice are read back."""
    from support import wait_row

    from simulator import truth as truth_mod
    from simulator.behaviour import LeakKind

    fleet = provisioned(stack, runtime, prefix, 40)
    gateway.wait_devices(runtime.dsn)
    opts = RunOptions(duration_s=10, speed=30, interval_s=0.5, leaks=4, faults=0, seed=5,
                      grace_s=12, responders=ResponderShares(), leak_kinds=(LeakKind.SEEP,),
                      leak_window=(0.05, 0.3), type_a_share=1.0, local_close_fail=0.5,
                      tampers=1, outages=1, outage_share=0.3)
    run = FleetRun(fleet, BridgeTransport(fleet, "127.0.0.1", runtime.mqtt_port, runtime, (3,)),
                   opts)
    assert run.local_fail[[lp.household for lp in run.plan.leaks]].any(), "seed: no failure"
    assert run.type_a.all()
    await run.start()
    truth = await run.run()
    await run.transport.close()
    by_detector = [lk for lk in truth.leaks if truth_mod.cut_by(lk) == "detector"]
    failed = [lk for lk in truth.leaks if lk.local_close_failed]
    assert by_detector and failed
    for lk in by_detector:  # recorded on the leak alarm the detector's event raised
        wait_row(runtime.dsn, "SELECT 1 FROM audit_log WHERE action = 'alarm.valve_closed_local'"
                 " AND entity_id = %s", (lk.household_id,))
    for lk in failed:  # the platform's own close: at its own leak rule, or after the window
        assert truth_mod.cut_by(lk) == "platform", lk
        why = wait_row(runtime.dsn, "SELECT action FROM audit_log WHERE action IN"
                       " ('cut.unconfirmed', 'cut.rule_confirmed') AND entity_id = %s",
                       (lk.household_id,))
        assert len(why) == 1, why  # one close, by one of the two
        if why[0][0] == "cut.unconfirmed":
            assert lk.close_received_at - lk.local_alarm_publish >= 4.9
        else:  # the rule's readings came after the detector's alarm, before the deadline
            assert lk.cut_due_publish is not None
            assert lk.close_received_at - lk.local_alarm_publish < 4.9
    (tamper,) = [e for e in truth.events if e.kind == "tamper"]
    wait_row(runtime.dsn, "SELECT 1 FROM work_orders WHERE household_id = %s AND cause = 'tamper'"
             " AND priority = 'high'", (tamper.household_id,))
    wait_row(runtime.dsn, "SELECT 1 FROM work_orders WHERE household_id = ANY(%s)"
             " AND cause = 'leak'", ([lk.household_id for lk in truth.leaks],),
             cond=lambda r: len(r) == len(truth.leaks))
    s = truth.score(notices.read_platform(runtime.dsn, fleet, run.started_at,
                                            list(truth.commands)))
    assert not s["missed"] and not s["false_cuts"] and not s["unexpected_local_alarms"]
    assert s["cut_by_detector"] == len(by_detector)
    for o in s["platform"]["leak_outcomes"]:
        assert o["order"]["cause"] == "leak" and o["order"]["priority"] == "urgent", o
        assert o["notice"] is not None and o["notice"]["kind"] == "leak", o
    outage = next(e for e in s["platform"]["events"] if e["kind"] == "outage")
    assert outage["power_on_sent"] and outage["power_on_recorded"], outage
