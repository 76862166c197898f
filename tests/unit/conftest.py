"""Unit tests build settings from defaults and what each test sets, never from the machine.

`Settings()` reads, besides its arguments, GAS_SAFETY_ variables, `gas-safety.toml` in the
working directory (or the file GAS_SAFETY_CONFIG names) and the private stack's
`runtime.json` under GAS_SAFETY_HOME (by default the checkout's `.stack`). Each unit test
runs in an empty folder with none of them, so a developer's file, running stack or shell
(or the session stack of tests/conftest.py, which sets GAS_SAFETY_HOME) changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.settings import ENV_PREFIX


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, no GAS_SAFETY_ variable, and an empty stack home."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    home = tmp_path / "stack-home"
    work.mkdir()
    home.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("GAS_SAFETY_HOME", str(home))
    return work
