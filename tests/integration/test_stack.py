"""The private stack: real Mosquitto and TimescaleDB, provisioned credentials and ACLs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from gateway.ops import credentials
from gateway.ops.stack import Stack, StackError
from gateway.storage import schema

pytestmark = pytest.mark.services


def _pub(port: int, user: str | None, password: str | None, topic: str,
         mqtt5: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["mosquitto_pub", "-p", str(port), "-t", topic, "-q", "1", "-m", "{}", "-d"]
    if mqtt5:
        cmd += ["-V", "mqttv5"]
    if user:
        cmd += ["-u", user, "-i", user]
    if password:
        cmd += ["-P", password]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10)


def test_timescaledb_extension_and_hypertables(stack: Stack, dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                           ).fetchone()
        assert ext is not None and ext[0].startswith("2.")
        tables = {r[0] for r in conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables")}
        assert {"detector_readings", "meter_readings", "device_events", "rejects"} <= tables
        # the build is the Apache one: retention is ours, by drop_chunks
        assert conn.execute("SHOW timescaledb.license").fetchone()[0] == "apache"


def test_psql_into_the_private_cluster(stack: Stack, runtime) -> None:
    out = subprocess.run(["psql", runtime.dsn, "-Atc", r"\dx timescaledb"], capture_output=True,
                         text=True, check=True).stdout
    assert "timescaledb" in out


def test_status_reports_both_healthy(stack: Stack) -> None:
    st = stack.status()
    assert st["postgres"]["healthy"] and st["mosquitto"]["healthy"]  # type: ignore[index]


def test_stack_up_again_is_idempotent_and_migrations_apply_once(stack: Stack, dsn: str) -> None:
    rt_before = stack.runtime()
    stack.up()
    assert stack.runtime() == rt_before
    assert schema.migrate(dsn) == []
    with psycopg.connect(dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == sorted(set(versions)) and "0001_init" in versions


def test_device_accepted_on_own_topic_refused_elsewhere(stack: Stack, runtime, fleet) -> None:
    hh = fleet(1)[0]
    meter = hh.meter.id
    other = hh.detectors[0].id
    pw = credentials.derive_password(runtime.fleet_key, meter)
    own = _pub(runtime.mqtt_port, meter, pw, f"gas/v1/{meter}/telemetry")
    assert own.returncode == 0, own.stderr
    assert "RC:135" not in own.stdout  # MQTT 5 PUBACK 135 = not authorised
    foreign = _pub(runtime.mqtt_port, meter, pw, f"gas/v1/{other}/telemetry")
    assert "RC:135" in foreign.stdout
    cmd_topic = _pub(runtime.mqtt_port, meter, pw, f"gas/v1/{meter}/cmd")
    assert "RC:135" in cmd_topic.stdout  # only the platform sends commands
    anonymous = _pub(runtime.mqtt_port, None, None, f"gas/v1/{meter}/telemetry")
    assert anonymous.returncode != 0 and "not authori" in anonymous.stderr.lower()
    wrong = _pub(runtime.mqtt_port, meter, "not-the-password", f"gas/v1/{meter}/telemetry")
    assert wrong.returncode != 0


def test_command_account_may_send_commands_and_nothing_else(runtime, fleet) -> None:
    """The gateway's command connection (`gateway-cmd`) writes commands only."""
    meter = fleet(1)[0].meter.id
    user = credentials.COMMANDS
    pw = credentials.service_password(runtime, user)
    cmd = _pub(runtime.mqtt_port, user, pw, f"gas/v1/{meter}/cmd")
    assert cmd.returncode == 0 and "RC:135" not in cmd.stdout, cmd.stdout + cmd.stderr
    forged = _pub(runtime.mqtt_port, user, pw, f"gas/v1/{meter}/telemetry")
    assert "RC:135" in forged.stdout  # cannot pose as a device


def test_device_cannot_read_other_devices_commands(runtime, fleet, devices) -> None:
    """Mosquitto grants a subscription to `#` but delivers only what the ACL lets it read."""
    hh = fleet(2)
    me, other = hh[0].meter.id, hh[1].meter.id
    spy = devices(me, subscribe_cmd=False)
    spy.client.subscribe([("#", 1), ("gas/v1/+/cmd", 1), (f"gas/v1/{other}/cmd", 1)])
    victim = devices(other)
    ops = devices(credentials.COMMANDS,
                  password=credentials.service_password(runtime, credentials.COMMANDS),
                  subscribe_cmd=False)
    ops.client.publish(f"gas/v1/{other}/cmd", b'{"cmd_id": "x1", "action": "self_test",'
                       b' "reason": "t", "ts": 0}', qos=1).wait_for_publish(5)
    ops.client.publish(f"gas/v1/{me}/cmd", b'{"cmd_id": "x2", "action": "self_test",'
                       b' "reason": "t", "ts": 0}', qos=1).wait_for_publish(5)
    _, got = victim.commands.get(timeout=5)
    assert got["cmd_id"] == "x1"
    _, mine = spy.commands.get(timeout=5)
    assert mine["cmd_id"] == "x2"  # its own command, delivered once
    time.sleep(0.3)
    assert spy.commands.empty()  # and nothing of the other device's


def test_provisioning_is_idempotent(stack: Stack, runtime, prefix: str) -> None:
    from gateway.ops import provision

    city = provision.generate_city(5, seed=3, prefix=prefix)
    first = provision.provision(runtime.dsn, city, str(stack.passwd_file), runtime.fleet_key)
    again = provision.provision(runtime.dsn, city, str(stack.passwd_file), runtime.fleet_key)
    assert first["households"] == 5 and first["devices"] == first["credentials"] >= 5
    assert again == {"households": 0, "devices": 0, "credentials": 0}
    lines = [ln.split(":")[0] for ln in stack.passwd_file.read_text().splitlines()]
    assert len(lines) == len(set(lines))  # nobody listed twice
    assert all(ln.split(":")[1].startswith("$7$") for ln in
               stack.passwd_file.read_text().splitlines())  # hashed, never plaintext


def test_retention_drops_old_chunks_only(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO rejects VALUES (now() - interval '400 days', %s, 't', 'x', 'old',"
                     " ''), (now(), %s, 't', 'x', 'new', '')", (prefix, prefix))
        conn.commit()
    dropped = schema.drop_old_chunks(dsn, 365)
    assert dropped["rejects"] >= 1
    with psycopg.connect(dsn) as conn:
        left = [r[0] for r in conn.execute("SELECT detail FROM rejects WHERE device_id = %s",
                                           (prefix,))]
    assert left == ["new"]


def test_stack_recovers_from_stale_pid_and_refuses_busy_port() -> None:
    home = Path(tempfile.mkdtemp(prefix="gas-safety-stack-"))
    os.chmod(home, 0o755)  # the postgres system user must reach it
    st = Stack(home)
    try:
        rt = st.up()
        # a crash of the broker leaves its pid file behind
        pid = int(st.mq_pid.read_text())
        os.kill(pid, 9)
        time.sleep(0.2)
        st.mq_pid.write_text(str(pid))
        assert not st.mq_running()
        st.up()
        assert st.status()["mosquitto"]["healthy"]  # type: ignore[index]
        st.down()
        # another program took the broker's port: a clear message, nothing started
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", rt.mqtt_port))
            squatter.listen()
            with pytest.raises(StackError, match=f"port {rt.mqtt_port}"):
                st.up()
        # a half-initialised data folder is moved aside, not deleted, and the cluster recreated
        st.down()
        for p in st.pg_data.iterdir():
            if p.name == "PG_VERSION":
                p.unlink()
        st.up()
        assert any(p.name.startswith("data.incomplete-") for p in st.pg_dir.iterdir())
        assert st.status()["postgres"]["healthy"]  # type: ignore[index]
    finally:
        st.down()
        shutil.rmtree(home, ignore_errors=True)


def test_cli_stack_status_reports_json(stack: Stack) -> None:
    env = {**os.environ, "GAS_SAFETY_HOME": str(stack.home)}
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "stack",
                        "status"], capture_output=True, text=True, env=env)
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["mosquitto"]["healthy"] and doc["postgres"]["healthy"]


def test_tls_listener_verifies_and_confines_devices(stack: Stack, runtime, fleet) -> None:
    import ssl

    import paho.mqtt.client as mqtt

    hh = fleet(1)[0]
    meter = hh.meter.id
    assert runtime.mqtt_tls_port
    ca = stack.home / "tls" / "ca.crt"

    def attempt(verify: bool, password: str) -> int:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=meter)
        c.username_pw_set(meter, password)
        if verify:
            c.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        else:
            c.tls_set(cert_reqs=ssl.CERT_REQUIRED)  # system CAs only: our CA is unknown
        codes: list[int] = []
        c.on_connect = lambda cl, u, f, rc, p=None: codes.append(rc.value)
        try:
            c.connect("127.0.0.1", runtime.mqtt_tls_port)
        except ssl.SSLError:
            return -1
        c.loop_start()
        deadline = time.monotonic() + 5
        while not codes and time.monotonic() < deadline:
            time.sleep(0.02)
        c.loop_stop()
        c.disconnect()
        return codes[0] if codes else -2

    good = credentials.derive_password(runtime.fleet_key, meter)
    assert attempt(True, good) == 0
    assert attempt(True, "wrong") != 0  # TLS does not replace the password check
    assert attempt(False, good) == -1  # a client that cannot verify the broker gets nowhere


def test_broker_runs_ahead_of_bulk_work(stack: Stack) -> None:
    """Mosquitto is on every leak's path twice: real-time (SCHED_RR) when permitted."""
    from gateway.ops.stack import BROKER_RT_PRIORITY

    pid = stack._mq_pid()
    assert pid is not None
    if os.geteuid() == 0:
        assert os.sched_getscheduler(pid) == os.SCHED_RR
        assert os.sched_getparam(pid).sched_priority == BROKER_RT_PRIORITY
