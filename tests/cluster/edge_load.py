"""Helpers of the cluster tests: the cluster itself, devices on an edge, a load that fails
over between edges as device firmware does, and reading the log back."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.accounts import derive_password, service_password_from_key
from gateway.ops.cluster_stack import ClusterStack, Edge
from gateway.ops.stack import Runtime
from gateway.protocol.log_subjects import HEADER_TOPIC, STREAM
from gateway.service.mqtt_client import ClientConfig, MqttClient


def relay_metric(edge: Edge, name: str) -> float:
    """One sample of a relay's /metrics (0 when absent), e.g. `gas_relay_rejects_total{...}`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.metrics_port}/metrics", timeout=3) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


class EdgeDevice:
    """A provisioned device on one edge broker (paho-mqtt, as firmware would)."""

    def __init__(self, rt: Runtime, edge: Edge, device_id: str, subscribe_cmd: bool = True):
        import queue

        import paho.mqtt.client as mqtt
        from support import wait_until

        self.id = device_id
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.username_pw_set(device_id, derive_password(rt.fleet_key, device_id))
        self.client.on_message = lambda c, u, m: self.commands.put(json.loads(m.payload))
        subacked: set[int] = set()
        self.client.on_subscribe = lambda c, u, mid, codes, props: subacked.add(mid)
        self.client.connect("127.0.0.1", edge.mqtt_port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, what=f"{device_id} connected to {edge.name}")
        if subscribe_cmd:
            _, mid = self.client.subscribe(f"gas/v1/{device_id}/cmd", qos=1)
            wait_until(lambda: mid in subacked, 10, what=f"{device_id} subscribed")

    def publish(self, topic: str, payload: dict[str, Any] | bytes) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=1).wait_for_publish(10)

    def reading(self, seq: int) -> None:
        self.publish(f"gas/v1/{self.id}/telemetry", meter_reading(seq))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def meter_reading(seq: int) -> dict[str, Any]:
    return {"seq": seq, "ts": round(time.time(), 3), "vol": 100 + seq * 0.01, "flow": 0.4,
            "valve": "open"}


# ---------------------------------------------------------------- the log, read back


@dataclass
class LogCopy:
    """The stream's messages of some devices: (subject, headers, payload)."""

    messages: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)

    def keys(self) -> Counter[tuple[str, int]]:
        return Counter(
            (h[HEADER_TOPIC], int(p["seq"])) for _, h, p in self.messages if "seq" in p
        )  # readings; a meter's ack has none


async def read_log(urls: list[str], topic_prefix: str) -> LogCopy:
    """Every message in the stream whose MQTT topic starts with `topic_prefix`."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(servers=urls, connect_timeout=5)
    out = LogCopy()
    try:
        js = nc.jetstream(timeout=10)
        sub = await js.pull_subscribe(
            "gas.in.>", stream=STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        info = await js.stream_info(STREAM)
        left = info.state.messages
        timeouts = 0
        while left > 0:
            try:
                msgs = await sub.fetch(min(left, 2000), timeout=3)
            except TimeoutError:
                # a loaded machine can take longer than one fetch: a count that stopped
                # early would report readings as lost that the log has
                timeouts += 1
                if timeouts == 5:
                    break
                continue
            left -= len(msgs)
            for m in msgs:
                headers = dict(m.headers or {})
                if headers.get(HEADER_TOPIC, "").startswith(topic_prefix):
                    out.messages.append((m.subject, headers, json.loads(m.data)))
        await sub.unsubscribe()
    finally:
        await nc.close()
    return out


def log_copy(cluster: ClusterStack, topic_prefix: str) -> LogCopy:
    """The log read back; again (up to 3 times) while the cluster is electing a leader."""
    import nats.errors

    for attempt in range(3):
        try:
            return asyncio.run(read_log(cluster.nats.urls, topic_prefix))
        except (nats.errors.Error, TimeoutError):
            if attempt == 2:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- load with failover


@dataclass
class LoadResult:
    sent: set[tuple[str, int]] = field(default_factory=set)  # every (topic, seq) published
    broker_acked: set[tuple[str, int]] = field(default_factory=set)
    resent: int = 0
    switches: list[str] = field(default_factory=list)


async def run_load(
    rt: Runtime,
    edges: list[Edge],
    account: str,
    devices: list[str],
    rate: float,
    duration_s: float,
    faults: list[tuple[float, Callable[[], None]]],
) -> LoadResult:
    """Readings of `devices` at `rate`/s through `account` (a trusted bridge), QoS 1, on
    edges[0]; when its broker goes, reconnect to the next edge and send again every reading
    that was not acknowledged (as firmware does). `faults` run at their second."""
    res = LoadResult()
    outstanding: dict[tuple[str, int], bytes] = {}
    password = service_password_from_key(rt.fleet_key, account)
    edge_i = 0
    client: MqttClient | None = None

    async def connect() -> MqttClient:
        nonlocal edge_i
        while True:
            e = edges[edge_i % len(edges)]
            try:
                c = await MqttClient.connect(
                    ClientConfig("127.0.0.1", e.mqtt_port, account, account, password,
                                 clean_session=False), lambda batch: None)
                res.switches.append(e.name)
                return c
            except (OSError, TimeoutError, Exception):
                edge_i += 1
                await asyncio.sleep(0.2)

    def send(c: MqttClient, key: tuple[str, int], payload: bytes) -> None:
        fut = c.publish(key[0], payload, qos=1)

        def done(f: asyncio.Future[None], key: tuple[str, int] = key) -> None:
            if not f.cancelled() and f.exception() is None:
                res.broker_acked.add(key)
                outstanding.pop(key, None)

        fut.add_done_callback(done)

    client = await connect()
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending_faults = sorted(faults, key=lambda f: f[0])
    fault_tasks = []
    n = 0
    while (now := loop.time() - start) < duration_s:
        while pending_faults and pending_faults[0][0] <= now:
            fault_tasks.append(asyncio.create_task(asyncio.to_thread(pending_faults.pop(0)[1])))
        if client is None or not client.connected:
            edge_i += 1
            client = await connect()
            for key, payload in list(outstanding.items()):
                res.resent += 1
                send(client, key, payload)
        due = int(now * rate)
        while n < due:
            dev = devices[n % len(devices)]
            key = (f"gas/v1/{dev}/telemetry", n // len(devices))
            payload = json.dumps(meter_reading(key[1])).encode()
            res.sent.add(key)
            outstanding[key] = payload
            send(client, key, payload)
            n += 1
        await asyncio.sleep(0.01)
    deadline = loop.time() + 20
    while outstanding and loop.time() < deadline:
        if client is None or not client.connected:
            edge_i += 1
            client = await connect()
            for key, payload in list(outstanding.items()):
                res.resent += 1
                send(client, key, payload)
        await asyncio.sleep(0.1)
    await asyncio.gather(*fault_tasks)
    if client is not None:
        client.close()
    return res


def settle(cluster: ClusterStack, edges: list[Edge], timeout_s: float = 30) -> None:
    """Until every relay has acknowledged all it received (nothing left in flight)."""
    from support import wait_until

    for e in edges:
        wait_until(lambda e=e: cluster.relay_pid(e) is not None
                   and relay_metric(e, "gas_relay_unacked") == 0,
                   timeout_s, what=f"relay {e.name} settled")


def tally(res: LoadResult, log: LogCopy) -> dict[str, int]:
    """sent / in the log / lost / duplicates stored, for the report and the assertions."""
    stored = log.keys()
    return {
        "sent": len(res.sent),
        "broker_acked": len(res.broker_acked),
        "in_log": len(res.sent & stored.keys()),
        "lost": len(res.sent - stored.keys()),
        "duplicates_in_log": sum(c - 1 for k, c in stored.items() if k in res.sent),
        "device_resends": res.resent,
    }


def iter_fleet_devices(city: list[Any]) -> Iterator[str]:
    for h in city:
        yield h.meter.id
