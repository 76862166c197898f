"""The multi-node topology of the cluster tests: `stack up --cluster` in the test run's own
stack home (its PostgreSQL, free ports), started once and stopped after the run."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import broker_accepts, reload_broker, wait_until

from gateway.ops.cluster_stack import ClusterStack
from gateway.ops.stack import Runtime, Stack


@pytest.fixture(scope="session")
def cluster(stack: Stack) -> Iterator[ClusterStack]:
    cs = ClusterStack(stack)
    try:
        cs.up()
        yield cs
    finally:
        cs.down()
        if not os.environ.get("GAS_SAFETY_KEEP_TEST_HOME"):
            shutil.rmtree(cs.home, ignore_errors=True)


def _connected_for(edge: Any, seconds: float) -> bool:
    from edge_load import relay_metric

    if relay_metric(edge, "gas_relay_broker_up") != 1:
        return False
    time.sleep(seconds)
    return relay_metric(edge, "gas_relay_broker_up") == 1


@pytest.fixture
def edge_fleet(cluster: ClusterStack, stack: Stack, runtime: Runtime, prefix: str) -> Any:
    """Provision households with this test's ids; every edge broker and relay knows them."""
    import dataclasses

    import psycopg
    from edge_load import relay_metric

    from gateway.ops import provision

    def make(households: int = 3) -> list[provision.Household]:
        city = provision.generate_city(households, seed=3, prefix=prefix)
        provision.provision(runtime.dsn, city, str(stack.passwd_file), runtime.fleet_key)
        reload_broker(stack, runtime, city[-1].devices[-1].id)
        cluster.reload_brokers()
        last = city[-1].devices[-1].id
        with psycopg.connect(runtime.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM devices").fetchone()
        assert row is not None
        for e in cluster.edges:
            at_edge = dataclasses.replace(runtime, mqtt_port=e.mqtt_port)
            wait_until(lambda rt=at_edge: broker_accepts(rt, last), 10,
                       what=f"edge broker {e.name} accepts {last}")
            wait_until(lambda e=e: relay_metric(e, "gas_relay_registry_devices") == row[0], 20,
                       what=f"relay {e.name} knows the new devices")
            # a reload can drop the relay's connection (Mosquitto 2.0 re-checks connected
            # clients): the test's load starts once the relay is subscribed again
            wait_until(lambda e=e: _connected_for(e, 0.5), 20,
                       what=f"relay {e.name} connected to its broker after the reload")
        return city

    return make
