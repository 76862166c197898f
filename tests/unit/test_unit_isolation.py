"""The unit tests' settings come from defaults only: tests/unit/conftest.py hides the
developer's gas-safety.toml, running stack and GAS_SAFETY_ variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gateway import settings
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DSN = "host=127.0.0.1 port=5432 dbname=gas_safety user=gas_safety"


def test_settings_here_are_the_defaults() -> None:
    s = Settings()
    assert s.db.retention_days == 365 and s.detection.thresholds.leak_lel == 20.0
    assert s.db.dsn == DEFAULT_DSN and s.mqtt.port == Settings.model_fields["mqtt"].default.port
    found = settings.sources()
    assert found.env == [] and found.file is None and found.stack is None


def _developer_machine(folder: Path) -> dict[str, str]:
    """A folder as a developer's checkout looks: a gas-safety.toml, a running stack's
    runtime.json and a setting in the environment. Returns that environment."""
    (folder / "gas-safety.toml").write_text("[db]\nretention_days = 7\n")
    home = folder / "stack"
    home.mkdir()
    (home / "runtime.json").write_text(json.dumps({
        "mqtt_port": 18830, "gateway_password": "gw", "fleet_key": "ab" * 16,
        "dsn": "host=127.0.0.1 port=15432 dbname=dev user=dev"}))
    return {**os.environ, "GAS_SAFETY_HOME": str(home), "PYTHONPATH": str(REPO),
            "GAS_SAFETY_DETECTION__THRESHOLDS__LEAK_LEL": "33"}


def test_a_developers_file_stack_and_variables_do_not_reach_unit_tests(tmp_path: Path) -> None:
    env = _developer_machine(tmp_path)
    # outside the unit tests all three apply (else the check below would prove nothing)
    seen = subprocess.run(
        [sys.executable, "-c", ("from gateway.settings import Settings; s = Settings(); print("
                                "s.db.retention_days, s.detection.thresholds.leak_lel,"
                                " s.mqtt.port, s.db.dsn)")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True)
    dev_dsn = "host=127.0.0.1 port=15432 dbname=dev user=dev"
    assert seen.stdout.split(maxsplit=3) == ["7", "33.0", "18830", dev_dsn + "\n"]
    # a unit test run from that folder sees none of them
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{__file__}::test_settings_here_are_the_defaults"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr
