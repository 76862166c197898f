"""Fixtures of tests/ops: `cli`, the console script in an empty folder (ops_support)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ops_support import SCRIPT, Cli, clean_env


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    def run(*args: str, env: dict[str, str] | None = None, config: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if config is not None:
            (tmp_path / "gas-safety.toml").write_text(config)
        return subprocess.run([SCRIPT, *args], cwd=tmp_path, env=clean_env(tmp_path, env),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    return run
