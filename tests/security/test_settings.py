"""The real `gas-safety` console script refuses a configuration it does not fully understand.

A misspelt threshold, section or variable, or a config file that is not there, would
otherwise run the gateway with the defaults the operator meant to change. Every command
must stop before doing anything, with exit status 2 and one line naming the key, where it
was set and the closest valid name; `config check` shows what is used and from where,
with every secret masked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = str(Path(sys.executable).with_name("gas-safety"))
LEAK_LELL = ("gas-safety: gas-safety.toml: unknown key detection.thresholds.leak_lell "
             "(did you mean leak_lel?)")


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
         config: str | None = None) -> subprocess.CompletedProcess[str]:
    """The console script in an empty folder, with no GAS_SAFETY_ variable but ours."""
    if config is not None:
        (tmp_path / "gas-safety.toml").write_text(config)
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("GAS_SAFETY_")}
    clean["GAS_SAFETY_HOME"] = str(tmp_path / "home")  # no private stack there
    return subprocess.run([SCRIPT, *args], cwd=tmp_path, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=False)


def _refused(r: subprocess.CompletedProcess[str], line: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.splitlines() == [line]
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("command", [
    ["gateway"], ["api"], ["simulate", "demo"], ["db", "migrate"], ["db", "retain", "--yes"],
    ["stack", "status"], ["fleet", "provision", "--households", "1"],
    ["user", "create", "x", "--role", "viewer"],
    ["config", "check"],
])
def test_misspelt_threshold_stops_every_command(tmp_path: Path, command: list[str]) -> None:
    r = _cli(tmp_path, *command, config="[detection.thresholds]\nleak_lell = 5.0\n")
    _refused(r, LEAK_LELL)


@pytest.mark.parametrize("command", [["gateway"], ["config", "check"]])
def test_unknown_section_refused(tmp_path: Path, command: list[str]) -> None:
    r = _cli(tmp_path, *command, config='[mqqt]\nhost = "broker.internal"\n')
    _refused(r, "gas-safety: gas-safety.toml: unknown section mqqt (did you mean mqtt?)")


def test_unknown_model_override_refused(tmp_path: Path) -> None:
    r = _cli(tmp_path, "gateway", config='[detection.models."LD-200"]\nleak_lell = 15.0\n')
    _refused(r, "gas-safety: gas-safety.toml: unknown key detection.models.LD-200.leak_lell "
                "(did you mean leak_lel?)")


@pytest.mark.parametrize("command", [["gateway"], ["api"], ["config", "check"]])
def test_misspelt_variable_refused(tmp_path: Path, command: list[str]) -> None:
    r = _cli(tmp_path, *command, env={"GAS_SAFETY_DB__DNS": "host=db.internal"})
    _refused(r, "gas-safety: GAS_SAFETY_DB__DNS: unknown setting db.dns "
                "(did you mean GAS_SAFETY_DB__DSN?)")


@pytest.mark.parametrize("command", [["gateway"], ["db", "migrate"], ["config", "check"]])
def test_missing_config_file_refused(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "gas-safety.toml").write_text("")
    missing = tmp_path / "gas-safty.toml"
    r = _cli(tmp_path, *command, env={"GAS_SAFETY_CONFIG": str(missing)})
    _refused(r, f"gas-safety: GAS_SAFETY_CONFIG={missing}: no such file "
                f"(did you mean {tmp_path / 'gas-safety.toml'}?)")


def test_config_check_json_refusal(tmp_path: Path) -> None:
    r = _cli(tmp_path, "config", "check", "--json",
             config="[detection.thresholds]\nleak_lell = 5.0\n")
    _refused(r, LEAK_LELL)
    assert json.loads(r.stdout) == {"valid": False, "error": LEAK_LELL.removeprefix("gas-safety: ")}


SECRETS = ("mqtt-pw-1", "db-pw-2", "hook-pw-3", "stack-pw-4", "jwt-secret-5", "voice-pw-6")
CONFIG = ('[mqtt]\nhost = "broker.internal"\npassword = "mqtt-pw-1"\n'
          '[db]\ndsn = "host=db.internal dbname=gas user=gw password=db-pw-2"\n'
          '[detection.thresholds]\nleak_lel = 25.0\n'
          '[response]\nnotify_channel = "webhook"\n'
          'notify_webhook_url = "https://bot:hook-pw-3@sms.internal/send"\n'
          'notify_voice_url = "https://bot:voice-pw-6@voice.internal/call"\n')


def _with_stack(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "runtime.json").write_text(json.dumps({
        "mqtt_port": 18830, "gateway_password": "stack-pw-4", "fleet_key": "ab" * 32,
        "dsn": "host=127.0.0.1 dbname=gas_safety password=stack-pw-4"}))


def test_config_check_shows_sources_and_masks_secrets(tmp_path: Path) -> None:
    _with_stack(tmp_path)
    r = _cli(tmp_path, "config", "check", config=CONFIG,
             env={"GAS_SAFETY_API__JWT_SECRET": "jwt-secret-5", "GAS_SAFETY_API__PORT": "8181"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert not any(s in out + r.stderr for s in SECRETS)
    lines = {line.split(" = ")[0].strip(): line for line in out.splitlines() if " = " in line}
    assert lines["detection.thresholds.leak_lel"].endswith("# file gas-safety.toml")
    assert '"host=db.internal dbname=gas user=gw password=********"' in lines["db.dsn"]
    assert lines["mqtt.password"].split("#")[0].strip().endswith('"********"')
    assert lines["mqtt.port"].endswith(f"# stack runtime {tmp_path / 'home' / 'runtime.json'}")
    assert lines["api.port"].endswith("# env GAS_SAFETY_API__PORT")
    assert lines["api.jwt_secret"].endswith("# env GAS_SAFETY_API__JWT_SECRET")
    assert lines["db.retention_days"].endswith("# default")
    assert "https://bot:********@sms.internal/send" in lines["response.notify_webhook_url"]
    assert "https://bot:********@voice.internal/call" in lines["response.notify_voice_url"]


def test_config_check_json(tmp_path: Path) -> None:
    _with_stack(tmp_path)
    r = _cli(tmp_path, "config", "check", "--json", config=CONFIG,
             env={"GAS_SAFETY_API__JWT_SECRET": "jwt-secret-5"})
    assert r.returncode == 0, r.stderr
    assert not any(s in r.stdout for s in SECRETS)
    doc = json.loads(r.stdout)
    assert doc["valid"] is True
    assert doc["sources"] == {"file": "gas-safety.toml",
                              "stack_runtime": str(tmp_path / "home" / "runtime.json"),
                              "env": ["GAS_SAFETY_API__JWT_SECRET"]}
    got = doc["settings"]
    assert got["detection.thresholds.leak_lel"] == {"value": 25.0, "source": "file",
                                                    "from": "gas-safety.toml"}
    assert got["mqtt.command_password"] == {"value": "********", "source": "stack runtime",
                                            "from": str(tmp_path / "home" / "runtime.json")}
    assert got["api.jwt_secret"]["value"] == "********"
    assert got["api.jwt_secret"]["from"] == "GAS_SAFETY_API__JWT_SECRET"
    assert got["db.retention_days"] == {"value": 365, "source": "default", "from": None}
