"""Faults at load against the real services: nothing accepted is lost, nothing done twice.

Run with `./dev.sh test -m faults` (they are part of the default run too). Each test prints
readings sent, stored, duplicates absorbed, lost, and the commands issued/delivered/escalated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from loadgen import Load
from support import GatewayProcess, wait_row, wait_until

pytestmark = [pytest.mark.services, pytest.mark.faults]


def _stored(dsn: str, ids: list[str]) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        rows = 0
        distinct = 0
        for table in ("detector_readings", "meter_readings"):
            r = conn.execute(f"SELECT count(*), count(DISTINCT (device_id, seq)) FROM {table}"
                             " WHERE device_id = ANY(%s)", (ids,)).fetchone()
            rows += r[0]
            distinct += r[1]
    return rows, distinct


def _wait_stored(dsn: str, ids: list[str], expected: int, timeout_s: float) -> tuple[int, int]:
    """(rows, distinct readings) once `expected` are stored, or as they are at the timeout:
    the caller reports the figures and asserts on them."""
    got = (0, 0)

    def enough() -> bool:
        nonlocal got
        got = _stored(dsn, ids)
        return got[1] >= expected

    with contextlib.suppress(AssertionError):
        wait_until(enough, timeout_s, interval_s=0.25, what=f"{expected} readings stored")
    return got


def _under_way(load: Load, acked: int) -> None:
    """Wait until the load is well under way (`acked` readings PUBACKed): the fault comes
    in the middle of it, not before it starts."""
    wait_until(lambda: load.acked >= acked, 30, what=f"{acked} readings of the load acked")


def _acked(dsn: str, cmd_id: str) -> None:
    wait_row(dsn, "SELECT 1 FROM valve_commands WHERE cmd_id = %s AND state = 'acked'",
             (cmd_id,), what=f"{cmd_id} acked")


def _run_load(load: Load, total: int) -> threading.Thread:
    t = threading.Thread(target=lambda: asyncio.run(load.run(total)), daemon=True)
    t.start()
    return t


def _report(name: str, **figures: Any) -> None:
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in figures.items()))


@dataclass
class Scene:
    """A fleet with its own gateway: one household's meter and detector to leak, load on
    the rest."""

    gw: GatewayProcess
    home: Any
    meter: Any
    det: Any
    load: Load


def _scene(own_gateway: Any, fleet: Any, devices: Any, runtime: Any, dsn: str, households: int,
           rate_per_s: float, leak_home: int = 0, **env: str) -> Scene:
    city = fleet(households)
    ids = [d.id for h in city for d in h.devices]
    gw = own_gateway(**env)
    gw.wait_devices(dsn)
    home = city[leak_home]
    meter, det = devices(home.meter.id), devices(home.detectors[0].id)
    load = Load(runtime, [i for i in ids if i not in (meter.id, det.id)],
                {h.meter.id for h in city}, rate_per_s=rate_per_s)
    return Scene(gw, home, meter, det, load)


@pytest.fixture
def own_gateway(gateway: GatewayProcess, stack) -> Any:
    """Stop the run's shared gateway; the test drives its own, then the shared one returns."""
    gateway.stop()
    made: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        gw = GatewayProcess(stack, env).start()
        made.append(gw)
        return gw

    yield start
    for gw in made:
        gw.stop()
    gateway.start()


def test_gateway_killed_mid_load_loses_nothing_and_repeats_nothing(own_gateway, fleet, devices,
                                                                    runtime, dsn) -> None:
    sc = _scene(own_gateway, fleet, devices, runtime, dsn, 200, 4000)
    gw, leak_home, meter, det, load = sc.gw, sc.home, sc.meter, sc.det, sc.load
    # a leak before the kill: its alarm and command must not repeat after the restart
    det.detector(55.0)
    _, cmd = meter.commands.get(timeout=5)
    meter.ack(cmd["cmd_id"])
    _acked(dsn, cmd["cmd_id"])
    total = 24_000
    t = _run_load(load, total)
    _under_way(load, 8_000)
    gw.kill()
    killed_at = len(load.sent)
    time.sleep(1.0)  # the outage under test: a second of load piles up at the broker
    gw2 = own_gateway()
    det.detector(60.0)  # still leaking after the restart
    t.join(60)
    rows, distinct = _wait_stored(dsn, load.device_ids, total, 60)
    # the restarted gateway has judged the second leak reading: stored, and with it (same
    # transaction) any alarm or command it caused
    wait_row(dsn, "SELECT count(*) FROM detector_readings WHERE device_id = %s", (det.id,),
             cond=lambda r: r[0][0] == 2, what="both leak readings stored")
    with psycopg.connect(dsn) as conn:
        alarms = conn.execute("SELECT count(*) FROM alarms WHERE device_id = %s AND kind = 'leak'",
                              (det.id,)).fetchone()[0]
        cmds = conn.execute("SELECT count(*) FROM valve_commands WHERE household_id = %s",
                            (leak_home.id,)).fetchone()[0]
    dups = gw2.metrics().get("gas_duplicates_absorbed", 0)
    _report("gateway SIGKILL", sent=total, stored=distinct, rows=rows, duplicates_absorbed=dups,
            lost=total - distinct, devices_at_kill=killed_at, commands=cmds, leak_alarms=alarms)
    assert distinct == total and rows == total  # every reading exactly once
    assert alarms == 1 and cmds == 1
    assert meter.commands.empty()  # the closed valve was not commanded again


def test_database_outage_keeps_cutting_valves_and_loses_no_reading(own_gateway, fleet, devices,
                                                                   runtime, dsn, stack, api,
                                                                   as_role) -> None:
    sc = _scene(own_gateway, fleet, devices, runtime, dsn, 100, 1500, leak_home=1,
                GAS_SAFETY_DB__SPOOL_AFTER_S="1.0")
    gw, meter, det, load = sc.gw, sc.meter, sc.det, sc.load
    total = 45_000  # 30 s of load
    t = _run_load(load, total)
    _under_way(load, 4_000)
    stack._pg_stop()
    outage_start = time.monotonic()
    try:
        gw.wait_for(lambda m: m.get("gas_db_up") == 0, 15, "the writer to find the database down")
        t_pub = det.detector(70.0)  # a leak while the database is down
        t_cmd, cmd = meter.commands.get(timeout=5)
        meter.ack(cmd["cmd_id"])
        m = gw.metrics()
        assert m.get("gas_db_up") == 0
        # the rest of the 30 s outage under test (readings spool meanwhile), with a control
        # room asking the API all along: it says 503, and its pool keeps trying to reconnect
        with httpx.Client(base_url=api.base_url, timeout=20) as http:
            while time.monotonic() - outage_start < 30:
                r = http.get("/households", params={"limit": 1}, headers=as_role["operator"])
                assert r.status_code == 503, r.text
                time.sleep(0.5)
        rss_mb = _rss_mb(gw)
    finally:
        stack._pg_start(stack.runtime())  # type: ignore[arg-type]
    # the API answers again within seconds of the database's return, not after its pool's
    # reconnect pauses have grown past the outage's length
    back = time.monotonic()
    with httpx.Client(base_url=api.base_url, timeout=20) as http:
        wait_until(lambda: http.get("/households", params={"limit": 1},
                                    headers=as_role["operator"]).status_code == 200,
                   timeout_s=60, interval_s=0.2, what="the API back after the outage")
    api_back_s = time.monotonic() - back
    t.join(60)
    rows, distinct = _wait_stored(dsn, load.device_ids, total, 90)
    with psycopg.connect(dsn) as conn:
        cmd_row = _wait(lambda: conn.execute("SELECT state FROM valve_commands WHERE cmd_id = %s",
                                             (cmd["cmd_id"],)).fetchone(), 20)
        alarm = conn.execute("SELECT count(*) FROM alarms WHERE device_id = %s", (det.id,)
                             ).fetchone()[0]
    _report("database outage 30 s", sent=total, stored=distinct, rows=rows,
            lost=total - distinct, valve_cut_ms=round((t_cmd - t_pub) * 1000, 1),
            gateway_rss_mb=rss_mb, command_state=cmd_row[0], api_back_s=round(api_back_s, 1))
    assert api_back_s < 12.0
    assert distinct == total and rows == total
    assert cmd_row[0] == "acked" and alarm == 1
    assert (t_cmd - t_pub) < 1.0


def test_writer_process_killed_mid_load_is_replaced_and_loses_nothing(
        own_gateway, fleet, devices, runtime, dsn) -> None:
    sc = _scene(own_gateway, fleet, devices, runtime, dsn, 100, 4000, leak_home=2)
    gw, meter, det, load = sc.gw, sc.meter, sc.det, sc.load
    total = 20_000
    t = _run_load(load, total)
    _under_way(load, 6_000)
    first = _writer_child(gw)
    first.kill()  # batches in its hands, some committed and not yet reported
    t_pub = det.detector(65.0)  # a leak meanwhile: cutting does not wait for the writer
    t_cmd, cmd = meter.commands.get(timeout=5)
    meter.ack(cmd["cmd_id"])
    t.join(60)
    rows, distinct = _wait_stored(dsn, load.device_ids, total, 60)
    m = gw.wait_for(lambda m: m.get("gas_writer_restarts", 0) >= 1, 10, "writer restart")
    second = _writer_child(gw)
    with psycopg.connect(dsn) as conn:
        cmd_row = _wait(lambda: conn.execute("SELECT state FROM valve_commands WHERE cmd_id = %s",
                                             (cmd["cmd_id"],)).fetchone(), 20)
        alarms = conn.execute("SELECT count(*) FROM alarms WHERE device_id = %s AND kind = 'leak'",
                              (det.id,)).fetchone()[0]
    _report("writer process SIGKILL", sent=total, stored=distinct, rows=rows,
            lost=total - distinct, duplicates_absorbed=m.get("gas_duplicates_absorbed", 0),
            valve_cut_ms=round((t_cmd - t_pub) * 1000, 1), command_state=cmd_row[0])
    assert second.pid != first.pid and m["gas_writer_restarts"] == 1
    assert distinct == total and rows == total  # the new writer took the dead one's batches
    assert cmd_row[0] == "acked" and alarms == 1
    assert (t_cmd - t_pub) < 1.0


def test_writer_as_a_thread_still_stores_everything(own_gateway, fleet, devices, runtime,
                                                   dsn) -> None:
    """`db.writer_process=false`: the same writer in a thread of the gateway's process."""
    import psutil

    sc = _scene(own_gateway, fleet, devices, runtime, dsn, 40, 2000,
                GAS_SAFETY_DB__WRITER_PROCESS="false")
    gw, meter, det, load = sc.gw, sc.meter, sc.det, sc.load
    assert gw.proc is not None and not psutil.Process(gw.proc.pid).children()
    total = 4_000
    t = _run_load(load, total)
    det.detector(50.0)
    _, cmd = meter.commands.get(timeout=5)
    meter.ack(cmd["cmd_id"])
    t.join(60)
    rows, distinct = _wait_stored(dsn, load.device_ids, total, 30)
    with psycopg.connect(dsn) as conn:
        state = _wait(lambda: conn.execute("SELECT state FROM valve_commands WHERE cmd_id = %s",
                                           (cmd["cmd_id"],)).fetchone(), 20)
    assert distinct == total and rows == total
    assert state[0] == "acked"


def test_broker_restart_sessions_resume_and_queued_command_is_delivered(
        own_gateway, fleet, devices, runtime, dsn, stack) -> None:
    import paho.mqtt.client as mqtt

    from gateway.ops import credentials

    city = fleet(50)
    ids = [d.id for h in city for d in h.devices]
    meters = {h.meter.id for h in city}
    gw = own_gateway()
    gw.wait_devices(dsn)
    home = city[2]
    # the meter has a persistent session and is offline when the command is issued
    def meter_session() -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=home.meter.id,
                        clean_session=False)
        c.username_pw_set(home.meter.id, credentials.derive_password(runtime.fleet_key,
                                                                      home.meter.id))
        c.on_message = lambda c, u, msg: got.append(json.loads(msg.payload))
        c.connect("127.0.0.1", runtime.mqtt_port)
        return c

    got: list[dict] = []
    subacked: list[int] = []
    m = meter_session()
    m.on_subscribe = lambda c, u, mid, codes, props: subacked.append(mid)
    m.loop_start()
    _, mid = m.subscribe(f"gas/v1/{home.meter.id}/cmd", qos=1)
    wait_until(lambda: mid in subacked, 10, what="the meter's persistent subscription")
    m.loop_stop()
    m.disconnect()
    load = Load(runtime, [i for i in ids if i not in (home.meter.id, home.detectors[0].id)],
                meters, rate_per_s=2000)
    total = 16_000
    t = _run_load(load, total)
    _under_way(load, 3_000)
    devices(home.detectors[0].id).detector(80.0)
    # the close is out (the gateway publishes before it writes the row) and queued for the
    # offline meter's session when the broker goes down
    wait_row(dsn, "SELECT state FROM valve_commands WHERE household_id = %s", (home.id,),
             what="the close issued")
    stack.restart_broker()
    t.join(90)
    rows, distinct = _wait_stored(dsn, load.device_ids, total, 60)
    m = meter_session()  # the meter comes back with its persistent session
    m.loop_start()
    try:
        wait_until(lambda: got, 20, what="the queued command delivered")
    finally:
        m.loop_stop()
        m.disconnect()
    _report("broker restart", sent=total, stored=distinct, rows=rows, lost=total - distinct,
            publisher_resends=load.errors, queued_commands_delivered=len(got))
    assert distinct == total and rows == total
    assert got and got[0]["action"] == "valve_close"


def _rss_mb(gw: GatewayProcess) -> float:
    """The gateway's and its writer process's resident memory."""
    import psutil

    assert gw.proc is not None
    p = psutil.Process(gw.proc.pid)
    return round(sum(q.memory_info().rss for q in [p, *p.children()]) / 2**20, 1)


def _writer_child(gw: GatewayProcess) -> Any:
    import psutil

    assert gw.proc is not None
    kids = [c for c in psutil.Process(gw.proc.pid).children()
            if "gateway.storage.writer_process" in " ".join(c.cmdline())]
    assert len(kids) == 1, kids
    return kids[0]


def _wait(fn: Any, timeout_s: float) -> Any:
    return wait_until(fn, timeout_s, interval_s=0.2, what="the command's row")
