"""The edge relays against real services: readings from either edge broker land in JetStream
on their building's partition subject with the headers of the contract; forged, unknown and
oversized messages never reach the log; a command reaches a meter on either edge."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from edge_load import EdgeDevice, log_copy, meter_reading, relay_metric
from support import wait_until

from gateway.accounts import BRIDGE_PREFIX, service_password_from_key
from gateway.core.partitions import partition_of
from gateway.ops.cluster_stack import ClusterStack
from gateway.ops.stack import Runtime
from gateway.protocol.log_subjects import (
    HEADER_EDGE,
    HEADER_MSG_ID,
    HEADER_RECEIVED,
    HEADER_TOPIC,
    command_subject,
    inbound_subject,
)

pytestmark = [pytest.mark.services, pytest.mark.cluster]


def test_readings_from_both_edges_land_on_their_partition(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, prefix: str
) -> None:
    city = edge_fleet(4)
    devices = []
    for i, h in enumerate(city):
        edge = cluster.edges[i % 2]
        d = EdgeDevice(runtime, edge, h.meter.id, subscribe_cmd=False)
        devices.append((d, edge, h))
        d.reading(1)
        d.reading(2)
    wait_until(lambda: len(log_copy(cluster, f"gas/v1/{prefix}").messages) == 8, 15,
               what="8 readings in the log")
    log = log_copy(cluster, f"gas/v1/{prefix}")
    for d, edge, h in devices:
        d.close()
        mine = [(s, hd, p) for s, hd, p in log.messages
                if hd[HEADER_TOPIC] == f"gas/v1/{h.meter.id}/telemetry"]
        assert [p["seq"] for _, _, p in mine] == [1, 2], "in order, once each"
        for subject, headers, _ in mine:
            assert subject == inbound_subject(partition_of(h.community, h.building))
            assert headers[HEADER_EDGE] == edge.name
            assert headers[HEADER_MSG_ID].startswith(headers[HEADER_TOPIC] + ":")
            assert float(headers[HEADER_RECEIVED]) > 0


def test_a_forged_reading_is_refused_by_the_broker(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, prefix: str
) -> None:
    a, b = (h.meter.id for h in edge_fleet(2))
    dev = EdgeDevice(runtime, cluster.edges[0], a, subscribe_cmd=False)
    received = relay_metric(cluster.edges[0], "gas_relay_received_total")
    dev.publish(f"gas/v1/{b}/telemetry", meter_reading(7))  # on another device's topic
    dev.reading(8)  # then its own: once that is in the log, the forged one had its chance
    wait_until(lambda: log_copy(cluster, f"gas/v1/{prefix}").messages, 15,
               what="its own reading in the log")
    topics = [h[HEADER_TOPIC] for _, h, _ in log_copy(cluster, f"gas/v1/{prefix}").messages]
    dev.close()
    assert topics == [f"gas/v1/{a}/telemetry"]
    assert relay_metric(cluster.edges[0], "gas_relay_received_total") == received + 1


def test_unknown_and_oversized_messages_are_counted_and_dropped(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, prefix: str
) -> None:
    (h,) = edge_fleet(1)
    edge = cluster.edges[1]
    unknown = relay_metric(edge, 'gas_relay_rejects_total{reason="unknown_device"}')
    oversized = relay_metric(edge, 'gas_relay_rejects_total{reason="oversized"}')
    bridge = EdgeBridge(runtime, edge)
    bridge.publish(f"gas/v1/{prefix}nobody/telemetry", json.dumps(meter_reading(1)).encode())
    dev = EdgeDevice(runtime, edge, h.meter.id, subscribe_cmd=False)
    dev.publish(f"gas/v1/{h.meter.id}/telemetry", b"x" * 5000)
    wait_until(lambda: relay_metric(edge, 'gas_relay_rejects_total{reason="oversized"}')
               == oversized + 1, 10, what="the oversized message counted")
    assert relay_metric(edge, 'gas_relay_rejects_total{reason="unknown_device"}') == unknown + 1
    dev.close()
    bridge.close()
    assert log_copy(cluster, f"gas/v1/{prefix}").messages == []
    log_text = cluster.relay_file(edge, "log").read_text()
    assert f"gas/v1/{prefix}nobody/telemetry: unknown_device:" in log_text
    assert "Traceback" not in log_text


class EdgeBridge(EdgeDevice):
    """A trusted network server's account (publishes for many device ids)."""

    def __init__(self, rt: Runtime, edge: Any) -> None:
        import paho.mqtt.client as mqtt

        name = f"{BRIDGE_PREFIX}5"
        self.id = name
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.client.username_pw_set(name, service_password_from_key(rt.fleet_key, name))
        self.client.connect("127.0.0.1", edge.mqtt_port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, what="bridge connected")


@pytest.mark.parametrize("edge_index", [0, 1])
def test_a_command_reaches_a_meter_on_either_edge(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, edge_index: int
) -> None:
    (h,) = edge_fleet(1)
    meter = EdgeDevice(runtime, cluster.edges[edge_index], h.meter.id)
    cmd = {"cmd_id": f"c-{h.meter.id}", "action": "valve_close", "reason": "test", "ts": 1.0}

    async def send() -> bytes:
        import nats

        nc = await nats.connect(servers=cluster.nats.urls)
        try:
            reply = await nc.request(command_subject(h.meter.id), json.dumps(cmd).encode(),
                                     timeout=5)
            return bytes(reply.data)
        finally:
            await nc.close()

    answered_by = asyncio.run(send())
    got = meter.commands.get(timeout=5)
    meter.close()
    assert got == cmd
    # every relay publishes it; both brokers accept, only the meter's delivers
    assert answered_by.decode() in {e.name for e in cluster.edges}


def test_stack_status_shows_every_part_of_the_cluster(cluster: ClusterStack) -> None:
    import os
    import subprocess
    import sys

    from gateway.ops.stack import ROOT

    env = {**os.environ, "GAS_SAFETY_HOME": str(cluster.stack.home), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "stack", "status"],
                       capture_output=True, text=True, env=env, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    parts = {"postgres", "nats-n1", "nats-n2", "nats-n3", "broker-edge-a", "broker-edge-b",
             "relay-edge-a", "relay-edge-b"}
    assert parts <= doc.keys()
    assert all(doc[p]["healthy"] for p in parts)
    urls = json.loads((cluster.home / "cluster.json").read_text())["nats_urls"]
    assert urls == cluster.nats.urls  # what the workers' command reads
