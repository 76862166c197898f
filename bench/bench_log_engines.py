"""The candidate log engines between the edge and the gateway workers, measured side by side.

    python bench/bench_log_engines.py [--quick]

For each engine, a private three-node cluster on this machine (bench/engines/clusters.py):
NATS JetStream with a file stream replicated three times (R3), and RabbitMQ with a quorum
queue (three members) and publisher confirms. Each is measured the way the gateway would use
it: a reading counts as accepted only when the engine confirms it replicated.
1. throughput: confirmed readings/s with a window of outstanding publishes, and the
   engine's own CPU time per reading (all three nodes);
2. added latency at a steady 2,000 readings/s: publish to confirm, and publish to delivery
   at a consumer;
3. loss on node kill: 3,000 readings/s for 12 s; 4 s in, the stream's or queue's leader is
   killed with SIGKILL. The publisher resends what was not confirmed (at least once, with a
   message id); afterwards every reading still in the log is read. Lost = confirmed but
   absent; the longest pause between confirms is the failover time.
Writes bench/results/log_engines.json and prints the table. The decision it feeds is
recorded in docs/decisions/log-engine.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from bench.engines.clusters import RabbitCluster  # noqa: E402
from gateway.ops.nats_cluster import NatsCluster  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PAD = b"x" * 80  # a reading's JSON is about 120 bytes


def body(i: int) -> bytes:
    return b'{"id":%d,"t":%.6f,"p":"%s"}' % (i, time.time(), PAD)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Engine:
    """What the bench needs of an engine: publish with confirm, consume, find the leader."""

    name = ""

    async def connect(self) -> None: ...
    async def publish(self, i: int) -> None: ...
    async def consume(self, on_message: Callable[[bytes], None]) -> Callable[[], Awaitable[None]]:
        raise NotImplementedError

    async def read_all(self) -> list[int]:
        raise NotImplementedError

    async def reset(self) -> None: ...
    async def close(self) -> None: ...
    def kill_leader(self) -> str:
        raise NotImplementedError

    def server_cpu_s(self) -> float:
        raise NotImplementedError


class NatsEngine(Engine):
    name = "NATS JetStream 2.9 (R3 file stream)"
    stream = "READINGS"

    def __init__(self, cluster: NatsCluster) -> None:
        self.cluster = cluster
        self.nc: Any = None
        self.js: Any = None

    async def connect(self) -> None:
        import nats

        self.nc = await nats.connect(
            servers=self.cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.1
        )
        self.js = self.nc.jetstream(timeout=10)
        await self.reset()

    async def reset(self) -> None:
        from nats.js.api import StorageType, StreamConfig

        try:
            await self.js.delete_stream(self.stream)
        except Exception:
            pass
        await self.js.add_stream(
            StreamConfig(
                name=self.stream,
                subjects=["gas.r.*"],
                num_replicas=3,
                storage=StorageType.FILE,
                duplicate_window=120,
            )
        )

    async def publish(self, i: int) -> None:
        await self.js.publish(f"gas.r.{i % 64}", body(i), headers={"Nats-Msg-Id": str(i)})

    async def consume(self, on_message: Callable[[bytes], None]) -> Callable[[], Awaitable[None]]:
        async def cb(msg: Any) -> None:
            on_message(msg.data)

        sub = await self.js.subscribe("gas.r.*", cb=cb, manual_ack=False)
        return sub.unsubscribe  # type: ignore[no-any-return]

    async def read_all(self) -> list[int]:
        from nats.js.api import AckPolicy, ConsumerConfig

        for attempt in range(10):  # the JetStream API may still be electing after the kill
            try:
                sub = await self.js.pull_subscribe(
                    "gas.r.*", stream=self.stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
                )
                break
            except Exception as err:
                print(f"  read-back consumer not created ({err!r}); again", flush=True)
                await asyncio.sleep(1)
        else:
            raise RuntimeError("no consumer for the read-back after 10 tries")
        ids: list[int] = []
        while True:
            try:
                msgs = await sub.fetch(2000, timeout=2)
            except Exception:
                break
            if not msgs:
                break
            for m in msgs:
                ids.append(json.loads(m.data)["id"])
        return ids

    def kill_leader(self) -> str:
        node = self.cluster.stream_leader(self.stream)
        self.cluster.kill(node)
        return node.name

    def server_cpu_s(self) -> float:
        total = 0.0
        for n in self.cluster.nodes:
            pid = self.cluster.pid(n)
            if pid is not None:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
        return total

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


class RabbitEngine(Engine):
    name = "RabbitMQ 3.10 (quorum queue, 3 members)"
    queue = "readings"

    def __init__(self, cluster: RabbitCluster) -> None:
        self.cluster = cluster
        self.conn: Any = None
        self.ch: Any = None
        self.turn = len(cluster.nodes) - 1
        self.lock = asyncio.Lock()

    async def connect(self) -> None:
        await self._reconnect()
        await self.reset()

    async def _reconnect(self) -> None:
        """Connect to the next node that answers: the edge's fail-over to a surviving node."""
        import aio_pika

        for _ in range(len(self.cluster.urls) * 20):
            url = self.cluster.urls[self.turn % len(self.cluster.urls)]
            self.turn += 1
            try:
                self.conn = await aio_pika.connect(url, timeout=2)
                self.ch = await self.conn.channel(publisher_confirms=True)
                return
            except Exception:
                await asyncio.sleep(0.1)
        raise ConnectionError("no RabbitMQ node answers")

    async def reset(self) -> None:
        await self.ch.queue_delete(self.queue)
        await self.ch.declare_queue(self.queue, durable=True, arguments={"x-queue-type": "quorum"})

    async def publish(self, i: int) -> None:
        import aio_pika

        if self.ch is None:
            async with self.lock:
                if self.ch is None:
                    await self._reconnect()
        ch = self.ch
        try:
            await ch.default_exchange.publish(
                aio_pika.Message(
                    body(i), message_id=str(i), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key=self.queue,
                timeout=10,
            )
        except Exception:
            if self.ch is ch:  # the first failure on this channel sends everyone elsewhere
                self.ch = None
            raise

    async def consume(self, on_message: Callable[[bytes], None]) -> Callable[[], Awaitable[None]]:
        import aio_pika

        conn = await aio_pika.connect(self.cluster.urls[0])
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=2000)
        q = await ch.get_queue(self.queue)

        async def cb(msg: Any) -> None:
            on_message(msg.body)
            await msg.ack()

        tag = await q.consume(cb)

        async def stop() -> None:
            await q.cancel(tag)
            await conn.close()

        return stop

    async def read_all(self) -> list[int]:
        import aio_pika

        urls = [u for u, n in zip(self.cluster.urls, self.cluster.nodes) if n.pid is not None]
        conn = await aio_pika.connect(urls[-1])
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=2000)
        q = await ch.get_queue(self.queue)
        ids: list[int] = []
        last = time.monotonic()

        async def cb(msg: Any) -> None:
            nonlocal last
            ids.append(json.loads(msg.body)["id"])
            last = time.monotonic()
            await msg.ack()

        tag = await q.consume(cb)
        while time.monotonic() - last < 3:
            await asyncio.sleep(0.2)
        await q.cancel(tag)
        await conn.close()
        return ids

    def kill_leader(self) -> str:
        node = self.cluster.queue_leader(self.queue)
        self.cluster.kill(node)
        return node.name

    def server_cpu_s(self) -> float:
        total = 0.0
        for n in self.cluster.nodes:
            if n.pid is not None:
                t = psutil.Process(n.pid).cpu_times()
                total += t.user + t.system
        return total

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


async def throughput(engine: Engine, n: int, window: int) -> dict[str, float]:
    sem = asyncio.Semaphore(window)
    cpu0 = engine.server_cpu_s()

    async def one(i: int) -> None:
        async with sem:
            await engine.publish(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    cpu = engine.server_cpu_s() - cpu0
    return {
        "readings": n,
        "per_s": n / elapsed,
        "server_cpu_us_per_reading": cpu / n * 1e6,
    }


async def latency(engine: Engine, rate: float, seconds: float) -> dict[str, float]:
    await engine.reset()
    delivered: list[float] = []

    def on_message(data: bytes) -> None:
        delivered.append(time.time() - json.loads(data)["t"])

    stop = await engine.consume(on_message)
    confirms: list[float] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int) -> None:
        t = time.perf_counter()
        await engine.publish(i)
        confirms.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    deadline = time.monotonic() + 10
    while len(delivered) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await stop()
    return {
        "rate": rate,
        "confirm_p50_ms": pct(confirms, 50) * 1e3,
        "confirm_p99_ms": pct(confirms, 99) * 1e3,
        "deliver_p50_ms": pct(delivered, 50) * 1e3,
        "deliver_p99_ms": pct(delivered, 99) * 1e3,
        "delivered": len(delivered),
        "sent": n,
    }


async def kill_test(engine: Engine, rate: float, seconds: float, kill_at: float) -> dict[str, Any]:
    await engine.reset()
    confirmed: set[int] = set()
    confirm_times: list[float] = []
    attempts = 0
    errors = 0

    async def one(i: int) -> None:
        nonlocal attempts, errors
        while True:
            attempts += 1
            try:
                await asyncio.wait_for(engine.publish(i), 10)
            except Exception:
                errors += 1
                await asyncio.sleep(0.2)
                continue
            confirmed.add(i)
            confirm_times.append(time.perf_counter())
            return

    killed = ""
    kill_t = float("inf")
    t0 = time.perf_counter()
    n = int(rate * seconds)
    tasks: list[asyncio.Task[None]] = []
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if not killed and time.perf_counter() - t0 >= kill_at:
            killed = await asyncio.to_thread(engine.kill_leader)
            kill_t = time.perf_counter()
        tasks.append(asyncio.create_task(one(i)))
    print(
        f"  killed {killed}; waiting for {sum(not t.done() for t in tasks)} publishes", flush=True
    )
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    print(f"  all confirmed; {attempts} attempts, {errors} errors; reading the log", flush=True)
    times = np.sort(np.asarray(confirm_times))
    after = times[times >= kill_t]
    stored = await engine.read_all()
    stored_set = set(stored)
    return {
        "sent": n,
        "killed": killed,
        "confirmed": len(confirmed),
        "stored_unique": len(stored_set),
        "lost": len(confirmed - stored_set),
        "duplicates": len(stored) - len(stored_set),
        "publish_errors": errors,
        "longest_confirm_gap_s": float(np.max(np.diff(times))) if len(times) > 1 else 0.0,
        "first_confirm_after_kill_s": float(after[0] - kill_t) if len(after) else float("nan"),
    }


async def run_engine(engine: Engine, quick: bool, kill_rate: float = 3000) -> dict[str, Any]:
    await engine.connect()
    try:
        out: dict[str, Any] = {"engine": engine.name}
        out["throughput"] = await throughput(engine, 10_000 if quick else 50_000, 1000)
        print(engine.name, out["throughput"], flush=True)
        out["latency"] = await latency(engine, 2000, 3 if quick else 5)
        print(engine.name, out["latency"], flush=True)
        out["kill"] = await kill_test(engine, kill_rate, 8 if quick else 12, 3 if quick else 4)
        print(engine.name, out["kill"], flush=True)
        return out
    finally:
        await engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer readings (default: full run)")
    ap.add_argument(
        "--engine",
        choices=("nats", "rabbitmq", "all"),
        default="all",
        help="which engine to measure (default: all)",
    )
    ap.add_argument(
        "--kill-rate",
        type=float,
        default=3000.0,
        help="readings/s of the leader-kill test (default: 3000); below what the engine"
        " confirms on this machine, so that the test measures loss, not overload",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gs-engines-"))
    results: list[dict[str, Any]] = []
    if args.engine in ("nats", "all"):
        nc = NatsCluster(tmp / "nats").start()
        try:
            results.append(asyncio.run(run_engine(NatsEngine(nc), args.quick, args.kill_rate)))
        finally:
            nc.stop(remove=True)
    if args.engine in ("rabbitmq", "all"):
        rc = RabbitCluster(tmp / "rabbit").start()
        try:
            results.append(asyncio.run(run_engine(RabbitEngine(rc), args.quick, args.kill_rate)))
        finally:
            rc.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"date": dt.date.today().isoformat(), "cpus": psutil.cpu_count(), "results": results}
    (RESULTS / "log_engines.json").write_text(json.dumps(doc, indent=2))
    for r in results:
        t, lat, k = r["throughput"], r["latency"], r["kill"]
        print(f"\n{r['engine']}")
        print(
            f"  confirmed throughput   {t['per_s']:>9,.0f} readings/s"
            f"  (server CPU {t['server_cpu_us_per_reading']:.0f} µs/reading, 3 nodes)"
        )
        print(
            f"  at {lat['rate']:.0f}/s             confirm p50 {lat['confirm_p50_ms']:.2f} ms"
            f" p99 {lat['confirm_p99_ms']:.2f} ms; delivery p50 {lat['deliver_p50_ms']:.2f} ms"
            f" p99 {lat['deliver_p99_ms']:.2f} ms ({lat['delivered']}/{lat['sent']})"
        )
        print(
            f"  leader {k['killed']} killed  sent {k['sent']} confirmed {k['confirmed']}"
            f" stored {k['stored_unique']} lost {k['lost']} duplicates {k['duplicates']}"
            f" errors {k['publish_errors']}; confirms resumed after"
            f" {k['first_confirm_after_kill_s']:.2f} s (longest gap"
            f" {k['longest_confirm_gap_s']:.2f} s)"
        )


if __name__ == "__main__":
    main()
