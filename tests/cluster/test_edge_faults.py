"""Kill -9 at load: a relay, a NATS node, an edge broker. Each test prints its count
(sent / broker-acked / in the log / lost / duplicates stored) and asserts the bound it holds.

Readings come from a trusted bridge account at `RATE`/s over many device ids, QoS 1, as
firmware does: an unacknowledged reading is sent again, on the other edge when its broker
is gone. Duplicates that reach the relay again within the stream's window carry the same
Nats-Msg-Id and are confirmed without being stored twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from edge_load import log_copy, relay_metric, run_load, settle, tally
from support import wait_until

from gateway.accounts import BRIDGE_PREFIX
from gateway.ops.cluster_stack import ClusterStack
from gateway.ops.stack import Runtime

pytestmark = [pytest.mark.services, pytest.mark.cluster, pytest.mark.faults]

RATE = 400  # readings/s: a 2-core machine runs the brokers, 3 NATS nodes and 2 relays
DURATION_S = 8.0
KILL_AT_S = 2.5


def report(what: str, counts: dict[str, Any]) -> None:
    print(f"\n{what}: " + " ".join(f"{k}={v}" for k, v in counts.items()))


def _devices(edge_fleet: Any, households: int = 100) -> list[str]:
    return [h.meter.id for h in edge_fleet(households)]


def test_relay_kill_loses_nothing(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, prefix: str
) -> None:
    devices = _devices(edge_fleet)
    edge = cluster.edges[0]

    def kill_and_restart() -> None:
        cluster.kill_relay(edge)
        time.sleep(1.0)
        cluster.start_relay(edge)

    res = asyncio.run(run_load(runtime, [edge], f"{BRIDGE_PREFIX}1", devices, RATE,
                               DURATION_S, [(KILL_AT_S, kill_and_restart)]))
    settle(cluster, [edge])
    counts = tally(res, log_copy(cluster, f"gas/v1/{prefix}"))
    # the restarted relay's counters start at 0: what its broker redelivered and the log had
    counts["relay_duplicates_absorbed"] = int(relay_metric(edge, "gas_relay_duplicates_total"))
    report("relay kill -9", counts)
    assert counts["lost"] == 0
    assert counts["duplicates_in_log"] == 0


def test_nats_node_kill_loses_nothing(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, prefix: str
) -> None:
    devices = _devices(edge_fleet)
    edge = cluster.edges[1]
    leader = cluster.nats.stream_leader()
    resent = relay_metric(edge, "gas_relay_resent_total")
    res = asyncio.run(run_load(runtime, [edge], f"{BRIDGE_PREFIX}2", devices, RATE,
                               DURATION_S, [(KILL_AT_S, lambda: cluster.nats.kill(leader))]))
    settle(cluster, [edge], timeout_s=60)
    resends = int(relay_metric(edge, "gas_relay_resent_total") - resent)
    cluster.nats.restart(leader)  # the log is read back with all three nodes up
    wait_until(lambda: cluster.nats.healthy(leader), 30, what=f"{leader.name} back")
    counts = tally(res, log_copy(cluster, f"gas/v1/{prefix}"))
    counts["relay_resends"] = resends
    counts["killed"] = leader.name  # type: ignore[assignment]
    report("NATS stream leader kill -9", counts)
    assert counts["lost"] == 0
    assert counts["duplicates_in_log"] == 0


def test_edge_broker_kill_devices_move_to_the_other_edge(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, prefix: str
) -> None:
    """The honest figure: what the killed broker had acknowledged to a device but not yet
    handed to its relay is lost (Mosquitto persists every autosave_interval); the test
    bounds it by what was in flight, and prints it."""
    devices = _devices(edge_fleet)
    a, b = cluster.edges
    res = asyncio.run(run_load(runtime, [a, b], f"{BRIDGE_PREFIX}3", devices, RATE,
                               DURATION_S, [(KILL_AT_S, lambda: cluster.kill_broker(a))]))
    settle(cluster, [b])
    counts = tally(res, log_copy(cluster, f"gas/v1/{prefix}"))
    counts["moved_to"] = ",".join(res.switches)  # type: ignore[assignment]
    report("edge broker kill -9 (before it restarts)", counts)
    assert res.switches[:2] == [a.name, b.name], "the devices reconnected to the other edge"
    # what the killed broker held: at most what arrived in its last moments
    assert counts["lost"] <= RATE * 1.0, counts
    cluster.start_broker(a)
    wait_until(lambda: relay_metric(a, "gas_relay_broker_up") == 1, 20,
               what="relay a reconnected to its restarted broker")
    settle(cluster, [a])
    after = tally(res, log_copy(cluster, f"gas/v1/{prefix}"))
    report("edge broker kill -9 (after it restarted)", after)
    assert after["duplicates_in_log"] == 0
    assert after["lost"] <= counts["lost"]


def test_oversized_burst_does_not_stall_the_relay(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, prefix: str
) -> None:
    """Dropped messages are acknowledged in order with the rest: nothing waits behind them."""
    devices = _devices(edge_fleet, 5)
    from edge_load import EdgeDevice

    dev = EdgeDevice(runtime, cluster.edges[0], devices[0], subscribe_cmd=False)
    for i in range(50):
        dev.publish(f"gas/v1/{devices[0]}/telemetry", b"y" * 5000 if i % 2 else
                    json.dumps({"seq": i, "ts": 1.0, "vol": 1, "flow": 0,
                                "valve": "open"}).encode())
    wait_until(lambda: len(log_copy(cluster, f"gas/v1/{prefix}").messages) == 25, 15,
               what="the 25 valid readings in the log")
    dev.close()
    settle(cluster, [cluster.edges[0]])


def test_edge_broker_kill_while_its_relay_is_down_shows_the_loss_window(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, prefix: str
) -> None:
    """The edge's loss window, measured: its relay is down for RELAY_DOWN_S, so the broker
    queues readings (for the relay's persistent session) that it has already acknowledged
    to the devices; then the broker is killed -9. What it had not yet saved to disk
    (autosave_interval 5 s) is lost; what it had saved comes back when it restarts.

    With the relay up, the same kill lost nothing (the test above): what the broker had
    sent on is in the relay's socket, and the relay confirms it with the log."""
    devices = _devices(edge_fleet)
    a, b = cluster.edges
    relay_down_s = 3.0

    def relay_down_then_broker_kill() -> None:
        cluster.kill_relay(a)
        time.sleep(relay_down_s)
        cluster.kill_broker(a)

    res = asyncio.run(run_load(runtime, [a, b], f"{BRIDGE_PREFIX}4", devices, RATE,
                               DURATION_S, [(KILL_AT_S, relay_down_then_broker_kill)]))
    settle(cluster, [b])
    before = tally(res, log_copy(cluster, f"gas/v1/{prefix}"))
    report(f"edge relay down {relay_down_s:.0f} s, then its broker kill -9", before)
    cluster.start_broker(a)
    cluster.start_relay(a)
    wait_until(lambda: relay_metric(a, "gas_relay_broker_up") == 1, 20,
               what="relay a connected to its restarted broker")
    settle(cluster, [a])
    after = tally(res, log_copy(cluster, f"gas/v1/{prefix}"))
    report("... after the broker and relay restarted (its saved queue delivered)", after)
    # bounded by what the broker acknowledged while its relay was down
    assert after["lost"] <= RATE * (relay_down_s + 0.5), after
    assert after["duplicates_in_log"] == 0


def test_a_standby_relay_closes_that_window(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, prefix: str
) -> None:
    """The mitigation of the test above, measured: a second relay on the same broker (its own
    account and session) relays everything too; the primary's outage leaves nothing queued,
    and the doubles it publishes are absorbed by the message ids."""
    from gateway.accounts import RELAY_PREFIX
    from gateway.ops.cluster_stack import Edge
    from gateway.ops.stack import free_port

    devices = _devices(edge_fleet)
    a, b = cluster.edges
    standby = Edge(a.name, a.mqtt_port, free_port(), relay_account=f"{RELAY_PREFIX}1")
    cluster.start_relay(standby)
    try:
        wait_until(lambda: relay_metric(standby, "gas_relay_broker_up") == 1
                   and relay_metric(standby, "gas_relay_registry_devices")
                   == relay_metric(a, "gas_relay_registry_devices"), 20,
                   what="the standby relay connected, with the registry")

        def primary_down_then_broker_kill() -> None:
            cluster.kill_relay(a)
            time.sleep(3.0)
            cluster.kill_broker(a)

        res = asyncio.run(run_load(runtime, [a, b], f"{BRIDGE_PREFIX}0", devices, RATE,
                                   DURATION_S, [(KILL_AT_S, primary_down_then_broker_kill)]))
        settle(cluster, [b])
        counts = tally(res, log_copy(cluster, f"gas/v1/{prefix}"))
        report("edge primary relay down 3 s, standby up, then the broker kill -9", counts)
        assert counts["lost"] == 0
        assert counts["duplicates_in_log"] == 0
    finally:
        cluster.stop_relay(standby)
        cluster.start_broker(a)
        cluster.start_relay(a)
        wait_until(lambda: relay_metric(a, "gas_relay_broker_up") == 1, 20,
                   what="relay a connected to its restarted broker")
        settle(cluster, [a])
