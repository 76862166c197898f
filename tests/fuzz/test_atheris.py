"""A bounded atheris run in the suite: the hot path survives coverage-guided inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_atheris_finds_no_crash_in_the_decoder_and_hot_path(tmp_path: Path) -> None:
    script = Path(__file__).with_name("fuzz_gateway.py")
    # default settings: not the developer's gas-safety.toml, stack or GAS_SAFETY_ variables
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GAS_SAFETY_")}
    env.update(GAS_SAFETY_HOME=str(tmp_path / "home"), PYTHONPATH=str(Path(__file__).parents[2]))
    r = subprocess.run([sys.executable, str(script), "-atheris_runs=100000", "-max_len=600",
                        f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 100000" in r.stderr  # every run finished, no crash
