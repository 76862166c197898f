"""Every command finds the private stack's parts with no configuration: the broker and the
database from runtime.json, the read replica from replica.json, and the cluster's log from
cluster/cluster.json (what `gas-safety worker` joins)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.settings import read_stack

RUNTIME = {"mqtt_port": 1884, "gateway_password": "p", "fleet_key": "00" * 32,
           "dsn": "host=127.0.0.1 port=5999 dbname=gas_safety user=gas_safety password=x"}


def test_stack_files_become_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAS_SAFETY_HOME", str(tmp_path))
    (tmp_path / "runtime.json").write_text(json.dumps(RUNTIME))
    _, values = read_stack()
    assert values["db"] == {"dsn": RUNTIME["dsn"]} and "cluster" not in values
    (tmp_path / "replica.json").write_text(json.dumps({"port": 6000, "dsn": "port=6000"}))
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "cluster.json").write_text(
        json.dumps({"nats_urls": ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]}))
    _, values = read_stack()
    assert values["db"]["read_dsn"] == "port=6000"
    assert values["cluster"] == {"nats_servers": "nats://127.0.0.1:1,nats://127.0.0.1:2"}
