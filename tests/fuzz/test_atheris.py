"""A bounded atheris run in the suite: the hot path survives coverage-guided inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_atheris_finds_no_crash_in_the_decoder_and_hot_path(tmp_path: Path) -> None:
    script = Path(__file__).with_name("fuzz_gateway.py")
    r = subprocess.run([sys.executable, str(script), "-atheris_runs=100000", "-max_len=600",
                        f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True,
                       timeout=300, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 100000" in r.stderr  # every run finished, no crash
