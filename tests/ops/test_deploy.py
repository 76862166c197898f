"""The production files in deploy/ are what the tools that read them accept: systemd units
pass `systemd-analyze verify`, the alert rules `promtool check rules` and their own unit
tests, the example settings load as they are, and the Grafana dashboard asks only for
metrics the gateway and the API export."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ops_support import REPO, SCRIPT, asked_for, clean_env

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
PROMTOOL = REPO / ".stack" / "tools" / "prometheus" / "usr" / "bin" / "promtool"
INSTALLED_AT = "/opt/gas-safety/venv/bin/gas-safety"  # where the units expect the venv


def _promtool() -> str:
    found = shutil.which("promtool") or (str(PROMTOOL) if PROMTOOL.exists() else None)
    assert found, f"promtool is missing: scripts/bootstrap.sh unpacks it into {PROMTOOL.parent}"
    return found


# ------------------------------------------------------------------ systemd


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert [u.name for u in UNITS] == [
        "gas-safety-api.service", "gas-safety-gateway.service", "gas-safety-relay.service"]
    for unit in UNITS:  # ExecStart must exist to verify: this checkout's console script
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_AT, SCRIPT))
    r = subprocess.run(["systemd-analyze", "verify", *map(str, sorted(tmp_path.iterdir()))],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def _directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_units_restart_harden_and_let_the_gateway_run_real_time() -> None:
    gw = _directives(DEPLOY / "systemd" / "gas-safety-gateway.service")
    api = _directives(DEPLOY / "systemd" / "gas-safety-api.service")
    assert gw["AmbientCapabilities"] == ["CAP_SYS_NICE"]
    assert gw["CapabilityBoundingSet"] == ["CAP_SYS_NICE"]
    assert api["AmbientCapabilities"] == [""] and api["CapabilityBoundingSet"] == [""]
    for d in (gw, api):
        assert d["Restart"] == ["always"] and d["RestartSec"] == ["2"]
        # a setting refused (2) or a port in use (3) is not retried in a loop
        assert d["RestartPreventExitStatus"] == ["2 3"]
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                    "RestrictSUIDSGID", "LockPersonality"):
            assert d[key] == ["yes"], key
        assert d["ProtectSystem"] == ["strict"]
        assert d["User"] == ["gas-safety"]
        assert d["ExecStart"][0].startswith(INSTALLED_AT + " ")
        assert "--config /etc/gas-safety/gas-safety.toml" in d["ExecStart"][0]


# ------------------------------------------------------------------ Prometheus


def test_alert_rules_pass_promtool() -> None:
    rules = DEPLOY / "prometheus" / "gas-safety.rules.yml"
    r = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0 and "SUCCESS: 14 rules found" in r.stdout, r.stdout + r.stderr


def test_alert_rules_fire_on_their_series() -> None:
    tests = DEPLOY / "prometheus" / "gas-safety.rules.test.yml"
    r = subprocess.run([_promtool(), "test", "rules", str(tests)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_scrape_configuration_passes_promtool(tmp_path: Path) -> None:
    key = tmp_path / "api.key"
    key.write_text("gs_example\n")
    for name in ("prometheus.yml", "gas-safety.rules.yml"):
        text = (DEPLOY / "prometheus" / name).read_text()
        (tmp_path / name).write_text(text.replace("/etc/prometheus/gas-safety-api.key", str(key)))
    r = subprocess.run([_promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def _rule_alerts() -> set[str]:
    return set(re.findall(r"alert: (\w+)", (DEPLOY / "prometheus" / "gas-safety.rules.yml")
                          .read_text()))


def test_rules_cover_what_the_operators_asked_for() -> None:
    assert {"GasSafetyGatewayDown", "GasSafetyIngestLag", "GasSafetySpoolGrowing",
            "GasSafetyWriterRestarts", "GasSafetyCommandsEscalated",
            "GasSafetyOverdueWorkOrders", "GasSafetyActiveCriticalAlarms"} <= _rule_alerts()


# ------------------------------------------------------------------ exported metric names


def exported(registry: Any) -> set[str]:
    """Every series name a registry can expose, from its metric families' types."""
    names = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                  "_created"),
                "gauge": ("",), "summary": ("_sum", "_count"), "info": ("_info",)}
    for family in registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def metrics_exported() -> set[str]:
    from dashboard_api.metrics import Metrics as ApiMetrics
    from gateway.pipeline.metrics import Metrics as GatewayMetrics

    return exported(GatewayMetrics().registry) | exported(ApiMetrics().registry) | {"up"}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEPLOY / "grafana" / "gas-safety.json").read_text())
    return doc


def _exprs(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


def test_dashboard_is_a_valid_grafana_document() -> None:
    doc = _dashboard()
    assert doc["uid"] and doc["title"] == "gas-safety" and doc["schemaVersion"] >= 30
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        assert p["type"] in ("row", "stat", "timeseries"), p["type"]
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
    names = {v["name"] for v in doc["templating"]["list"]}
    assert names == {"datasource", "gateway"}


def test_dashboard_and_rules_read_only_exported_metrics() -> None:
    known = metrics_exported()
    rules = (DEPLOY / "prometheus" / "gas-safety.rules.yml").read_text()
    exprs = _exprs(_dashboard()) + [("rules", e) for e in re.findall(r"expr: (.+(?:\n\s{10}.+)*)",
                                                                    rules)]
    unknown = {(title, n) for title, e in exprs for n in asked_for(e) if n not in known}
    assert unknown == set()
    shown = {n for _, e in _exprs(_dashboard()) for n in asked_for(e)}
    # the dashboard shows what the alerts are about
    for name in ("gas_api_active_critical_alarms", "gas_api_overdue_work_orders",
                 "gas_spool_batches", "gas_writer_restarts", "gas_ingest_lag_seconds_bucket",
                 "gas_valve_commands_total", "gas_mqtt_connected"):
        assert name in shown, name


# ------------------------------------------------------------------ the example settings


def _leaf_keys(tp: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    from gateway.settings import table_fields

    fields = table_fields(tp)
    if fields is None:
        return [prefix]
    out = []
    for name, sub in fields.items():
        if name == "models":
            continue  # free per-model tables: shown as an example
        out += _leaf_keys(sub, (*prefix, name))
    return out


def test_example_settings_load_and_show_every_key(tmp_path: Path) -> None:
    from gateway.settings import Settings

    example = DEPLOY / "gas-safety.toml"
    r = subprocess.run([SCRIPT, "config", "show", "--json", "--config", str(example)],
                       cwd=tmp_path, env=clean_env(tmp_path), capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["valid"] and doc["settings"]["environment"]["value"] == "production"
    text = example.read_text()
    tables = set(re.findall(r"^#? ?\[([a-z.\"A-Z0-9-]+)\]", text, re.M))
    assert {"mqtt", "db", "detection", "detection.thresholds", "response", "api",
            "priority"} <= tables
    missing = []
    for key in _leaf_keys(Settings):
        if not re.search(rf"^#? ?{re.escape(key[-1])} =", text, re.M):
            missing.append(".".join(key))
    assert missing == []
    # each key shown commented carries its default
    from gateway.core.thresholds import Thresholds

    for f in dataclasses.fields(Thresholds):
        assert re.search(rf"^# {f.name} = {re.escape(repr(f.default))}$", text, re.M), f.name


def test_docs_walk_through_the_production_files() -> None:
    ops = (REPO / "docs" / "operations.md").read_text()
    for needle in ("gas-safety-gateway.service", "gas-safety-api.service", "gas-safety.toml",
                   "secrets.env", "gas-safety.rules.yml", "grafana/gas-safety.json",
                   "shared_preload_libraries", "include_dir", "gas-safety status",
                   "gas-safety watch", "systemd-analyze verify", "promtool check rules"):
        assert needle in ops, needle
    assert "docs/operations.md" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_units_name_the_commands_that_exist(unit: Path) -> None:
    command = _directives(unit)["ExecStart"][0].split()[1]
    r = subprocess.run([SCRIPT, command, "--help"], capture_output=True, text=True, timeout=60,
                       env=clean_env(Path(os.environ.get("TMPDIR", "/tmp"))), check=False)
    assert r.returncode == 0 and "--config" in r.stdout, r.stderr
    assert sys.executable  # the same interpreter runs the console script
