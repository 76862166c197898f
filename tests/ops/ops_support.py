"""Helpers of tests/ops: the real `gas-safety` console script, as an operator runs it: in
an empty folder, with no GAS_SAFETY_ variable but the test's own and no private stack
(unless the test gives one); the metric names a PromQL expression reads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SCRIPT = str(Path(sys.executable).with_name("gas-safety"))
REPO = Path(__file__).resolve().parents[2]

Cli = Callable[..., subprocess.CompletedProcess[str]]


def clean_env(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GAS_SAFETY_")}
    env["GAS_SAFETY_HOME"] = str(tmp_path / "home")  # no private stack there
    return {**env, **(extra or {})}


def one_line(r: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed with `code` and said why in exactly one line, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def asked_for(expr: str) -> set[str]:
    """The series names a PromQL expression reads (ours all start with gas_)."""
    return set(re.findall(r"\b(gas_[a-z0-9_]+|up)\b(?=\s*[{\[)])", expr))
