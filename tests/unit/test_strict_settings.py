"""Settings are strict: every unknown key or variable is refused with its place and a hint.

Each test builds settings in an empty folder with only the variables it sets, so the
developer's own gas-safety.toml, .stack/runtime.json and environment never take part.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from gateway import settings
from gateway.ops import config_report
from gateway.settings import SettingsError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("GAS_SAFETY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GAS_SAFETY_HOME", str(tmp_path / "home"))
    return tmp_path


def _toml(tmp_path: Path, text: str, name: str = "gas-safety.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _refusal() -> str:
    with pytest.raises(SettingsError) as err:
        settings.load()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_defaults_without_file_or_stack() -> None:
    s = settings.load()
    assert s.db.retention_days == 365 and s.detection.thresholds.leak_lel == 20.0
    assert settings.sources().file is None and settings.sources().stack is None


def test_file_values_apply(tmp_path: Path) -> None:
    _toml(tmp_path, '[detection.thresholds]\nleak_lel = 25.0\n'
                    '[detection.models."LD-200"]\nleak_lel = 15.0\n')
    s = settings.load()
    assert s.detection.thresholds.leak_lel == 25.0
    assert s.detection.for_model("LD-200").leak_lel == 15.0
    assert s.detection.for_model("LD-200").prealarm_lel == 10.0  # the rest from thresholds
    assert s.detection.for_model("other").leak_lel == 25.0


@pytest.mark.parametrize(("text", "expected"), [
    ("[detection.thresholds]\nleak_lell = 5.0\n",
     "gas-safety.toml: unknown key detection.thresholds.leak_lell (did you mean leak_lel?)"),
    ('[mqqt]\nhost = "x"\n', "gas-safety.toml: unknown section mqqt (did you mean mqtt?)"),
    ("[db]\ndsnn = 'x'\n", "gas-safety.toml: unknown key db.dsnn (did you mean dsn?)"),
    ("log_levl = 'debug'\n", "gas-safety.toml: unknown key log_levl (did you mean log_level?)"),
    ('[detection.models."LD-200"]\nleak_lell = 15.0\n',
     'gas-safety.toml: unknown key detection.models.LD-200.leak_lell (did you mean leak_lel?)'),
    ("[detection]\nthreshold = {}\n",
     "gas-safety.toml: unknown section detection.threshold (did you mean thresholds?)"),
])
def test_unknown_file_keys_refused(tmp_path: Path, text: str, expected: str) -> None:
    _toml(tmp_path, text)
    assert _refusal() == expected


def test_invalid_value_names_file_and_key(tmp_path: Path) -> None:
    _toml(tmp_path, "[db]\nretention_days = 0\n")
    assert _refusal() == ("gas-safety.toml: db.retention_days: Input should be greater than or "
                          "equal to 1 (got 0)")


def test_inconsistent_model_override_refused_at_load(tmp_path: Path) -> None:
    _toml(tmp_path, '[detection.models."LD-200"]\nleak_lel = 3.0\n')  # below prealarm_lel
    message = _refusal()
    assert message.startswith("gas-safety.toml: detection: ") and "models.LD-200" in message


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("GAS_SAFETY_DB__DSNN", "x",
     "GAS_SAFETY_DB__DSNN: unknown setting db.dsnn (did you mean GAS_SAFETY_DB__DSN?)"),
    ("GAS_SAFETY_CONFG", "x",
     "GAS_SAFETY_CONFG: unknown setting confg (did you mean GAS_SAFETY_CONFIG?)"),
    ("GAS_SAFETY_LEAK_LEL", "15",
     ("GAS_SAFETY_LEAK_LEL: unknown setting leak_lel "
      "(did you mean GAS_SAFETY_DETECTION__THRESHOLDS__LEAK_LEL?)")),
    ("GAS_SAFETY_DETECTION__THRESHOLDS__LEAK_LELL", "15",
     ("GAS_SAFETY_DETECTION__THRESHOLDS__LEAK_LELL: unknown setting "
      "detection.thresholds.leak_lell (did you mean GAS_SAFETY_DETECTION__THRESHOLDS__LEAK_LEL?)")),
    ("GAS_SAFETY_DETECTION__MODELS", '{"LD-200": {"leak_lell": 15}}',
     ("GAS_SAFETY_DETECTION__MODELS: unknown key detection.models.LD-200.leak_lell "
      "(did you mean leak_lel?)")),
    ("GAS_SAFETY_MQTT__PORT", "abc",
     ("GAS_SAFETY_MQTT__PORT: mqtt.port: Input should be a valid integer, unable to parse "
      "string as an integer (got 'abc')")),
])
def test_environment_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                             expected: str) -> None:
    monkeypatch.setenv(name, value)
    assert _refusal() == expected


def test_environment_values_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAS_SAFETY_DB__RETENTION_DAYS", "30")
    monkeypatch.setenv("GAS_SAFETY_DETECTION__MODELS", '{"LD-200": {"leak_lel": 15}}')
    monkeypatch.setenv("GAS_SAFETY_KEEP_TEST_HOME", "1")  # the project's own, not a setting
    s = settings.load()
    assert s.db.retention_days == 30 and s.detection.for_model("LD-200").leak_lel == 15.0


def test_missing_named_config_file_refused(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _toml(tmp_path, "", name="gas-safety.toml")
    monkeypatch.setenv("GAS_SAFETY_CONFIG", str(tmp_path / "gas-safty.toml"))
    assert _refusal() == (f"GAS_SAFETY_CONFIG={tmp_path}/gas-safty.toml: no such file "
                          f"(did you mean {tmp_path}/gas-safety.toml?)")


def test_every_project_variable_is_a_setting_or_allowed() -> None:
    """A GAS_SAFETY_ name the project uses anywhere must not be refused at start."""
    typos_on_purpose = {"test_strict_settings.py", "test_settings.py"}  # tests of the typos
    files = [REPO / "dev.sh", REPO / "README.md"]
    for folder in ("gateway", "dashboard_api", "simulator", "tests", "bench", "scripts"):
        files += [p for p in (REPO / folder).rglob("*")
                  if p.suffix in (".py", ".sh", ".toml", ".md") and p.name not in typos_on_purpose]
    names = {name for path in files if path.is_file()
             for name in re.findall(r"GAS_SAFETY_[A-Z0-9_]*[A-Z0-9]", path.read_text())}
    assert {"GAS_SAFETY_HOME", "GAS_SAFETY_DB__DSN", "GAS_SAFETY_NEW_PASSWORD"} <= names
    for name in sorted(names):
        value = '{}' if name.endswith(("__MODELS", "__THRESHOLDS")) else "1"
        settings.check_environment({name: value})


def test_report_sources_and_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _toml(tmp_path, '[mqtt]\npassword = "mqtt-pw-1"\n[db]\n'
                    'dsn = "host=db user=u password=db-pw-2 dbname=x"\n'
                    '[response]\nnotify_webhook_url = "https://bot:hook-pw-3@sms.example/send"\n')
    home = tmp_path / "home"
    home.mkdir()
    (home / "runtime.json").write_text(json.dumps({
        "mqtt_port": 18830, "gateway_password": "stack-pw-4", "fleet_key": "ab" * 32,
        "dsn": "host=127.0.0.1 dbname=gas_safety password=stack-pw-5"}))
    monkeypatch.setenv("GAS_SAFETY_API__JWT_SECRET", "jwt-secret-6")
    s = settings.load()
    entries = {e.key: e for e in config_report.report(s, settings.sources())}
    assert (entries["db.dsn"].source, entries["db.dsn"].origin) == ("file", "gas-safety.toml")
    assert entries["db.dsn"].value == "host=db user=u password=******** dbname=x"
    assert entries["mqtt.password"].value == "********"
    assert entries["mqtt.port"].source == "stack runtime"
    assert entries["mqtt.port"].origin == str(home / "runtime.json")
    assert entries["mqtt.command_password"].value == "********"
    assert entries["api.jwt_secret"].origin == "GAS_SAFETY_API__JWT_SECRET"
    assert entries["response.notify_webhook_url"].value == "https://bot:********@sms.example/send"
    assert entries["db.retention_days"].source == "default"
    text = json.dumps([e.value for e in entries.values()])
    assert not re.search(r"pw-\d|secret-6", text)
