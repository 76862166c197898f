"""The edge relay's cost: CPU per reading of the relay, its broker and the three NATS nodes,
the relay's throughput and memory, in a private cluster stack of its own.

`python bench/bench_edge_relay.py [--households 20000] [--rate 1000 3000 6000] [--duration 12]`

A publisher (one bridge account, QoS 1, a window of 2,000 in flight) offers readings of the
provisioned meters at each rate through edge A; the relay maps each to its building
partition and publishes it to JetStream R3, acknowledging the broker after the stream's
confirm. Writes bench/results/edge_relay.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from gateway.accounts import BRIDGE_PREFIX, service_password_from_key  # noqa: E402
from gateway.ops import provision  # noqa: E402
from gateway.ops.cluster_stack import ClusterStack, Edge  # noqa: E402
from gateway.ops.stack import Stack  # noqa: E402
from gateway.service.mqtt_client import ClientConfig, MqttClient  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WINDOW = 2000


def metric(edge: Edge, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.metrics_port}/metrics", timeout=3) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def cpu_s(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        t = psutil.Process(pid).cpu_times()
        out[name] = t.user + t.system
    return out


async def offer(port: int, password: str, meters: list[str], rate: float, seconds: float) -> int:
    account = f"{BRIDGE_PREFIX}6"
    client = await MqttClient.connect(
        ClientConfig("127.0.0.1", port, account, account, password, clean_session=True),
        lambda batch: None,
    )
    loop = asyncio.get_running_loop()
    inflight: set[asyncio.Future[None]] = set()
    sent = 0
    start = loop.time()
    while (now := loop.time() - start) < seconds:
        due = int(now * rate)
        while sent < due and len(inflight) < WINDOW:
            m = meters[sent % len(meters)]
            body = json.dumps(
                {"seq": sent // len(meters), "ts": time.time(), "vol": 1.0, "flow": 0.1,
                 "valve": "open"}
            ).encode()
            fut = client.publish(f"gas/v1/{m}/telemetry", body, qos=1)
            inflight.add(fut)
            fut.add_done_callback(inflight.discard)
            sent += 1
        await asyncio.sleep(0.005)
    while inflight:
        await asyncio.sleep(0.05)
    client.close()
    return sent


def run(households: int, rates: list[float], duration: float) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="gs-edge-bench-"))
    os.chmod(home, 0o755)
    os.environ["GAS_SAFETY_HOME"] = str(home)
    stack = Stack(home)
    cluster = ClusterStack(stack)
    try:
        cluster.up()
        rt = stack.runtime()
        assert rt is not None
        city = provision.generate_city(households, seed=5)
        provision.provision(rt.dsn, city, str(stack.passwd_file), rt.fleet_key)
        cluster.reload_brokers()
        devices = sum(len(h.devices) for h in city)
        a = cluster.edges[0]
        deadline = time.monotonic() + 120
        while metric(a, "gas_relay_registry_devices") < devices:
            if time.monotonic() > deadline:
                raise TimeoutError("the relay did not load the registry")
            time.sleep(0.5)
        meters = [h.meter.id for h in city]
        password = service_password_from_key(rt.fleet_key, f"{BRIDGE_PREFIX}6")
        relay_pid, broker_pid = cluster.relay_pid(a), cluster.broker_pid(a)
        assert relay_pid and broker_pid
        pids = {"relay": relay_pid, "broker": broker_pid}
        for n in cluster.nats.nodes:
            pid = cluster.nats.pid(n)
            assert pid
            pids[f"nats-{n.name}"] = pid
        runs = []
        for rate in rates:
            before, relayed0 = cpu_s(pids), metric(a, "gas_relay_acked_total")
            t0 = time.monotonic()
            sent = asyncio.run(offer(a.mqtt_port, password, meters, rate, duration))
            while metric(a, "gas_relay_unacked") > 0 and time.monotonic() - t0 < duration + 60:
                time.sleep(0.1)
            wall = time.monotonic() - t0
            after, relayed = cpu_s(pids), metric(a, "gas_relay_acked_total") - relayed0
            per = {k: (after[k] - before[k]) / max(relayed, 1) * 1e6 for k in pids}
            runs.append({
                "offered_per_s": rate,
                "sent": sent,
                "relayed": int(relayed),
                "relayed_per_s": relayed / wall,
                "cpu_us_per_reading": {k: round(v, 1) for k, v in per.items()},
                "nats_cpu_us_per_reading": round(
                    sum(v for k, v in per.items() if k.startswith("nats")), 1),
            })
        rss = psutil.Process(relay_pid).memory_info().rss
        return {"households": households, "devices": devices, "duration_s": duration,
                "relay_rss_mb": round(rss / 2**20, 1), "runs": runs}
    finally:
        cluster.down()
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--households", type=int, default=20_000)
    ap.add_argument("--rate", type=float, nargs="+", default=[1000, 3000, 6000])
    ap.add_argument("--duration", type=float, default=12.0)
    args = ap.parse_args()
    doc = {"date": dt.date.today().isoformat(), "cpus": psutil.cpu_count(),
           **run(args.households, args.rate, args.duration)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "edge_relay.json").write_text(json.dumps(doc, indent=2))
    print(f"relay RSS {doc['relay_rss_mb']} MB with {doc['devices']:,} devices in its map")
    for r in doc["runs"]:
        cpu = r["cpu_us_per_reading"]
        print(f"offered {r['offered_per_s']:,.0f}/s: relayed {r['relayed_per_s']:,.0f}/s "
              f"({r['relayed']:,} of {r['sent']:,}); CPU per reading: relay {cpu['relay']} µs, "
              f"broker {cpu['broker']} µs, NATS (3 nodes) {r['nats_cpu_us_per_reading']} µs")


if __name__ == "__main__":
    main()
