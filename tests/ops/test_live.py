"""Running it like a service, against the real stack: `gas-safety status` reports every
component, the gateway's /healthz and the API's say what they see, the API's gauges count
the critical alarms and overdue orders, users are managed from the shell, `watch` shows the
live events, and the gateway's logs name the broker it cannot reach."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from ops_support import SCRIPT, asked_for
from support import GatewayProcess, wait_until

from gateway.ops.stack import Stack, free_port

pytestmark = pytest.mark.services


def _env(stack: Stack, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GAS_SAFETY_")}
    return {**env, "GAS_SAFETY_HOME": str(stack.home), **extra}


def _run(stack: Stack, *args: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], env=env or _env(stack), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def _healthz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            doc: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as err:
        doc = json.loads(err.read())
    return doc


def test_status_reports_every_component_of_a_running_stack(stack: Stack, gateway: Any,
                                                           tmp_path: Path) -> None:
    api_port = free_port()
    env = _env(stack, GAS_SAFETY_METRICS_PORT=str(gateway.metrics_port),
               GAS_SAFETY_API__PORT=str(api_port), GAS_SAFETY_ENVIRONMENT="test",
               GAS_SAFETY_API__JWT_SECRET="status-test-" + "x" * 32)
    with (tmp_path / "api.log").open("wb") as log:
        api = subprocess.Popen([SCRIPT, "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _run(stack, "status", env=env).returncode == 0, 60,
                   what="every component healthy")
        r = _run(stack, "status", env=env)
        lines = r.stdout.splitlines()
        assert [line.split()[:2] for line in lines] == [
            ["database", "ok"], ["broker", "ok"], ["gateway", "ok"], ["api", "ok"]], r.stdout
        assert f"127.0.0.1:{stack.runtime().mqtt_port} (private stack)" in lines[1]
        assert "broker connected" in lines[2] and "spool 0" in lines[2]
        assert lines[3].endswith("database up, events listener up, gateway ok"), lines[3]
        doc = json.loads(_run(stack, "status", "--json", env=env).stdout)
        assert doc["healthy"] is True and set(doc["components"]) == {
            "database", "broker", "gateway", "api"}
    finally:
        api.terminate()
        api.wait(20)
    r = _run(stack, "status", env=env)
    assert r.returncode == 1
    assert re.search(rf"^api\s+FAIL\s+http://127.0.0.1:{api_port}/healthz\s+not answering",
                     r.stdout, re.M), r.stdout


def test_gateway_healthz_says_what_it_is_connected_to(stack: Stack, gateway: Any) -> None:
    doc = _healthz(gateway.metrics_port)
    rt = stack.runtime()
    assert rt is not None
    assert doc["status"] == "ok", doc
    assert doc["mqtt"] == {"broker": f"127.0.0.1:{rt.mqtt_port}", "connected": True,
                           "command_link": True, "failed_attempts": 0}
    assert doc["writer"]["kind"] == "process" and doc["writer"]["restarts"] == 0
    assert doc["spool_batches"] == 0 and doc["uptime_s"] > 0


def test_live_scrape_has_every_gateway_metric_the_dashboard_reads(gateway: Any) -> None:
    doc = json.loads((Path(__file__).parents[2] / "deploy/grafana/gas-safety.json").read_text())
    wanted = {n for p in doc["panels"] for t in p.get("targets", []) for n in asked_for(t["expr"])
              if not n.startswith("gas_api_") and n != "up"}
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics",
                                timeout=5) as r:
        text = r.read().decode()
    live = {line.split("{")[0].split()[0] for line in text.splitlines()
            if line and not line.startswith("#")}
    # a family with labels has no sample before its first label value: its TYPE line counts
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        live |= {name} | {name.removesuffix("_total") + s for s in suffixes.get(kind, ("",))}
    assert wanted and wanted - live == set()


async def test_api_gauges_count_critical_alarms_and_overdue_orders(
        api: Any, as_role: dict[str, dict[str, str]], city: Any, raise_alarm: Any) -> None:
    async def gauges() -> dict[str, float]:
        async with httpx.AsyncClient(base_url=api.base_url) as c:
            r = await c.get("/metrics", headers=as_role["viewer"])
        assert r.status_code == 200
        return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
                for line in r.text.splitlines() if line.startswith("gas_api_")}

    before = await gauges()
    await raise_alarm(city[0], arrive_in=dt.timedelta(minutes=-5))  # crew late already
    await raise_alarm(city[1], kind="prealarm", severity="warning", cause=None)
    after = await gauges()
    assert after["gas_api_active_critical_alarms"] == before["gas_api_active_critical_alarms"] + 1
    assert (after["gas_api_unacknowledged_critical_alarms"]
            == before["gas_api_unacknowledged_critical_alarms"] + 1)
    key = 'gas_api_overdue_work_orders{clock="arrival"}'
    assert after[key] == before[key] + 1
    key = 'gas_api_open_work_orders{priority="urgent"}'
    assert after[key] == before[key] + 1


def test_users_from_the_shell(stack: Stack, dsn: str) -> None:
    name = f"ops.{os.getpid()}.{time.time_ns() % 10**6}"
    env = _env(stack, GAS_SAFETY_NEW_PASSWORD="a long enough passphrase 42")
    r = _run(stack, "user", "create", name, "--role", "operator", env=env)
    assert r.returncode == 0 and f"user {name} created" in r.stdout, r.stderr
    listed = json.loads(_run(stack, "user", "list", "--json").stdout)
    assert {"username": name, "role": "operator", "disabled": False,
            "api_keys": 0} == {k: v for u in listed if u["username"] == name
                               for k, v in u.items() if k != "created_at"}

    def version() -> tuple[bool, int]:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT disabled, token_version FROM users WHERE username = %s",
                               (name,)).fetchone()
        assert row is not None
        return bool(row[0]), int(row[1])

    disabled, v0 = version()
    assert not disabled
    r = _run(stack, "user", "disable", name, "--actor", "shift.lead")
    assert r.returncode == 0 and version() == (True, v0 + 1), r.stderr
    assert _run(stack, "user", "enable", name).returncode == 0 and version()[0] is False
    weak = _run(stack, "user", "reset-password", name,
                env=_env(stack, GAS_SAFETY_NEW_PASSWORD="short"))
    assert weak.returncode == 2 and weak.stderr.strip() == (
        "gas-safety: password: at least 12 characters")
    ok = _run(stack, "user", "reset-password", name,
              env=_env(stack, GAS_SAFETY_NEW_PASSWORD="another long passphrase 7"))
    assert ok.returncode == 0 and version()[1] == v0 + 3
    with psycopg.connect(dsn) as conn:
        audit = conn.execute("SELECT actor, action, details->>'disabled' FROM audit_log"
                             " WHERE entity = 'user' AND entity_id = %s ORDER BY id",
                             (name,)).fetchall()
    assert [a[1] for a in audit] == ["user.create", "user.update", "user.update", "user.update"]
    assert audit[1][0] == "shift.lead" and audit[1][2] == "true"
    missing = _run(stack, "user", "disable", "nobody.here")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "gas-safety: no user 'nobody.here' (see `gas-safety user list`)")


def test_watch_shows_the_live_events_of_a_leak(stack: Stack, gateway: Any, fleet: Any,
                                               devices: Any, dsn: str) -> None:
    home = fleet(1)[0]
    gateway.wait_devices(dsn)
    watch = subprocess.Popen([SCRIPT, "watch", "--json", "--events", "alarms", "--events",
                              "commands", "--count", "2", "--duration", "40"],
                             env=_env(stack), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert watch.stderr is not None
        header = watch.stderr.readline()
        assert header.startswith("watching live events (alarms, commands); now: "), header
        meter = devices(home.meter.id)
        det = devices(home.detectors[0].id)
        det.detector(45.0)  # an instant leak: an alarm and a valve close
        meter.commands.get(timeout=15)
        out, err = watch.communicate(timeout=45)
    finally:
        watch.kill()
    assert watch.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    kinds = {(e["feed"], e["type"]) for e in events}
    assert ("alarms", "alarm.raised") in kinds, events
    assert any(k == "commands" for k, _ in kinds), events
    raised = next(e for e in events if e["type"] == "alarm.raised")
    assert raised["device_id"] == det.id and raised["household_id"] == home.id


def test_gateway_logs_the_broker_it_cannot_reach_once_per_retry(stack: Stack) -> None:
    closed = free_port()
    gw = GatewayProcess(stack, {"GAS_SAFETY_MQTT__PORT": str(closed)}).start(wait=False)
    try:
        def lines() -> list[str]:
            return gw.log_path.read_text().splitlines()

        wait_until(lambda: sum("attempt 3," in line for line in lines()) >= 1, 60,
                   what="three connection attempts")
        failed = [line for line in lines() if "connect to" in line and "failed" in line]
        assert failed and all(" WARNING " in line for line in failed)
        assert all(f"mqtt ingest connect to 127.0.0.1:{closed} as gateway failed" in line
                   for line in failed), failed  # the command link's are at DEBUG meanwhile
        assert re.search(r"attempt 1, next in 0\.2s$", failed[0]), failed[0]
        assert re.search(r"attempt 2, next in 0\.4s$", failed[1]), failed[1]
        summary = [line for line in lines() if "gateway started" in line]
        assert len(summary) == 1
        for part in (f"broker=127.0.0.1:{closed}", "database=127.0.0.1:",
                     f"metrics=http://127.0.0.1:{gw.metrics_port}/metrics", "devices=",
                     "engine=", "priority="):
            assert part in summary[0], part
        doc = _healthz(gw.metrics_port)
        assert doc["status"] == "degraded" and doc["mqtt"]["connected"] is False
        assert doc["problems"][0] == f"broker 127.0.0.1:{closed} not connected"
    finally:
        gw.stop()
