"""Shared fixtures: one private Mosquitto + TimescaleDB stack per test run, torn down after.

Tests isolate themselves by their own device ids (a unique provisioning prefix), never
by sharing rows. The stack lives in a temporary GAS_SAFETY_HOME, so a developer's own
`.stack` (and the machine's system services) are never touched.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Device, GatewayProcess, reload_broker

from gateway.ops.stack import Runtime, Stack

# the operator API under test, for tests/api and tests/security
pytest_plugins = ["api_fixtures"]

_prefix_counter = itertools.count()

# fixtures that start or reach the private Mosquitto and TimescaleDB; every fixture built on
# them (gateway, fleet, devices, client, city, ...) reaches them through these
SERVICE_FIXTURES = frozenset({"stack", "runtime", "dsn", "api"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that needs the services without `pytest.mark.services`, so that
    `-m "not services"` runs exactly the tests that start nothing."""
    unmarked = [item.nodeid for item in items
                if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("services") is None]
    if unmarked:
        raise pytest.UsageError(
            "these tests use the private stack (fixtures " + ", ".join(sorted(SERVICE_FIXTURES))
            + ", directly or through others) but are not marked pytest.mark.services:\n  "
            + "\n  ".join(unmarked))


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
        if not os.environ.get("GAS_SAFETY_KEEP_TEST_HOME"):
            shutil.rmtree(home, ignore_errors=True)


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


# ---------------------------------------------------------------- devices and the gateway

@pytest.fixture(scope="session")
def gateway(stack: Stack) -> Iterator[GatewayProcess]:
    """The shared gateway of the run (tests that kill it start their own afterwards)."""
    gw = GatewayProcess(stack).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def fleet(stack: Stack, runtime: Runtime, prefix: str) -> Any:
    """Provision a small fleet with this test's own ids; returns its households."""
    from gateway.ops import provision

    def make(households: int = 3, seed: int = 1) -> list[provision.Household]:
        city = provision.generate_city(households, seed=seed, prefix=prefix)
        provision.provision(runtime.dsn, city, str(stack.passwd_file), runtime.fleet_key)
        reload_broker(stack, runtime, city[-1].devices[-1].id)
        return city

    return make


@pytest.fixture
def devices(runtime: Runtime) -> Iterator[Any]:
    made: list[Device] = []

    def connect(device_id: str, **kw: Any) -> Device:
        d = Device(runtime, device_id, **kw)
        made.append(d)
        return d

    yield connect
    for d in made:
        d.close()
