"""Quality gates of `./dev.sh test`: import contracts, lint, format and types.

The architecture (a pure core, one-way imports, no cycles) is written down as import-linter
contracts in pyproject.toml; these tests make a change that breaks one, or that ruff or mypy
would refuse, fail the suite with the tool's own report, as CI runs nothing else.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGES = ["gateway", "dashboard_api", "simulator"]


def _run(tool: str, *args: str) -> None:
    """Run a tool of the virtual environment from the project root; fail with its output."""
    exe = BIN / tool
    if not exe.exists():
        pytest.fail(f"{exe} is missing: install the test extras (scripts/bootstrap.sh)")
    r = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    if r.returncode != 0:
        pytest.fail(f"`{tool} {' '.join(args)}` exited {r.returncode}:\n{r.stdout}{r.stderr}",
                    pytrace=False)


def test_import_contracts_hold() -> None:
    _run("lint-imports")


def test_ruff_finds_nothing() -> None:
    _run("ruff", "check", *PACKAGES)


def test_code_is_formatted() -> None:
    _run("ruff", "format", "--check", *PACKAGES)


def test_mypy_finds_nothing() -> None:
    _run("mypy", *PACKAGES)


def test_every_package_registers_its_commands() -> None:
    """A fresh install lists the three registrations; without them `gas-safety` would offer
    only the gateway's own commands, silently."""
    from gateway.cli import command_entry_points

    assert [ep.name for ep in command_entry_points()] == ["gateway", "dashboard_api",
                                                          "simulator"]
    r = subprocess.run([str(BIN / "gas-safety"), "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "{stack,db,config,fleet,gateway,worker,watch,relay,status,api,user,simulate}" in r.stdout
