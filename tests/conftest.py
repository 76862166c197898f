"""Shared fixtures: one private Mosquitto + TimescaleDB stack per test run, torn down after.

Tests isolate themselves by their own device ids (a unique provisioning prefix), never
by sharing rows. The stack lives in a temporary GAS_SAFETY_HOME, so a developer's own
`.stack` (and the machine's system services) are never touched.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.stack import Runtime, Stack

_prefix_counter = itertools.count()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="gas-safety-test-"))
    os.chmod(home, 0o755)  # the postgres system user must reach its data folder
    os.environ["GAS_SAFETY_HOME"] = str(home)
    st = Stack(home)
    try:
        st.up()
        yield st
    finally:
        st.down()


@pytest.fixture(scope="session")
def runtime(stack: Stack) -> Runtime:
    rt = stack.runtime()
    assert rt is not None
    return rt


@pytest.fixture(scope="session")
def dsn(runtime: Runtime) -> str:
    return runtime.dsn


@pytest.fixture
def prefix() -> str:
    """A unique id prefix for one test's households and devices."""
    return f"t{os.getpid() % 1000:03d}x{next(_prefix_counter):03d}"
