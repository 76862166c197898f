"""Devices behind the example HAProxy (deploy/haproxy/gas-safety-edge.cfg, on private ports):
when the broker a device is on is killed, it reconnects through the balancer to the other
edge; its readings and its commands keep flowing."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edge_load import log_copy, meter_reading
from support import wait_until

from gateway.accounts import derive_password
from gateway.ops.cluster_stack import ClusterStack
from gateway.ops.stack import ROOT, Runtime, free_port
from gateway.protocol.log_subjects import HEADER_EDGE, HEADER_TOPIC, command_subject

pytestmark = [pytest.mark.services, pytest.mark.cluster, pytest.mark.faults]

EXAMPLE = ROOT / "deploy" / "haproxy" / "gas-safety-edge.cfg"


def balancer_config(cluster: ClusterStack, port: int) -> str:
    """The example, on 127.0.0.1:port in front of the cluster's edge brokers (no TLS, no
    syslog: nothing of the machine's is used)."""
    text = EXAMPLE.read_text()
    text = text.replace("    log /dev/log local0\n", "").replace("    log global\n", "")
    text = text.replace("bind :1883", f"bind 127.0.0.1:{port}")
    text = re.sub(r"\nfrontend mqtts\n.*?\n\n", "\n", text, flags=re.S)
    text = re.sub(r"\nbackend edge_brokers_tls\n.*\Z", "\n", text, flags=re.S)
    for edge, addr in zip(cluster.edges, ("10.0.0.11", "10.0.0.12"), strict=True):
        text = text.replace(f"{addr}:1883", f"127.0.0.1:{edge.mqtt_port}")
    return text.replace("maxconn 400000", "maxconn 1000")


@pytest.fixture
def balancer(cluster: ClusterStack, tmp_path: Path) -> Iterator[int]:
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        pytest.fail("haproxy is missing: scripts/bootstrap.sh installs it (Debian's haproxy)")
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(balancer_config(cluster, port))
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (tmp_path / "haproxy.log").open("wb")
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_the_example_balancer_config_is_valid() -> None:
    r = subprocess.run(["haproxy", "-c", "-f", str(EXAMPLE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_device_moves_to_the_other_edge_when_its_broker_dies(
    cluster: ClusterStack, runtime: Runtime, edge_fleet: Any, balancer: int, prefix: str
) -> None:
    import queue

    import paho.mqtt.client as mqtt

    (h,) = edge_fleet(1)
    meter = h.meter.id
    connects: list[float] = []
    commands: queue.Queue[dict[str, Any]] = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=meter)
    c.username_pw_set(meter, derive_password(runtime.fleet_key, meter))
    c.reconnect_delay_set(0.2, 1)

    def on_connect(cl: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            connects.append(time.monotonic())
            cl.subscribe(f"gas/v1/{meter}/cmd", qos=1)

    c.on_connect = on_connect
    c.on_message = lambda cl, u, m: commands.put(json.loads(m.payload))
    c.connect("127.0.0.1", balancer)
    c.loop_start()
    on = None
    try:
        wait_until(lambda: connects, 10, what="connected through the balancer")
        c.publish(f"gas/v1/{meter}/telemetry", json.dumps(meter_reading(1)), qos=1)
        first = wait_until(lambda: log_copy(cluster, f"gas/v1/{meter}/").messages, 15,
                           what="the first reading in the log")
        on = cluster.edge(first[0][1][HEADER_EDGE])
        other = next(e for e in cluster.edges if e is not on)
        killed_at = time.monotonic()
        cluster.kill_broker(on)
        wait_until(lambda: len(connects) >= 2, 20, what="reconnected through the balancer")
        moved_s = connects[1] - killed_at
        time.sleep(0.3)  # its SUBSCRIBE on the new broker
        c.publish(f"gas/v1/{meter}/telemetry", json.dumps(meter_reading(2)), qos=1)
        wait_until(lambda: len(log_copy(cluster, f"gas/v1/{meter}/").messages) == 2, 15,
                   what="the second reading in the log")
        second = log_copy(cluster, f"gas/v1/{meter}/").messages[1]
        assert second[1][HEADER_EDGE] == other.name
        assert second[1][HEADER_TOPIC] == f"gas/v1/{meter}/telemetry"
        cmd = {"cmd_id": f"lb-{meter}", "action": "valve_close", "reason": "t", "ts": 1.0}

        async def send() -> None:
            import nats

            nc = await nats.connect(servers=cluster.nats.urls)
            await nc.publish(command_subject(meter), json.dumps(cmd).encode())
            await nc.flush()
            await nc.close()

        asyncio.run(send())
        assert commands.get(timeout=5) == cmd
        assert on is not None
        print(f"\nbalancer: the device was on {on.name}, reconnected to {other.name}"
              f" {moved_s:.2f} s after the kill")
        assert prefix in meter
    finally:
        c.disconnect()
        c.loop_stop()
        if on is not None:
            cluster.start_broker(on)
