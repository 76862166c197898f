"""What the partition-worker tests share: a private NATS cluster, `gas-safety worker`
processes, a publisher that writes into JetStream as the edge relay would, and a listener
on the command subjects."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from support import wait_until

from gateway.core.partitions import partition_of
from gateway.ops.stack import Stack, free_port
from gateway.protocol.log_subjects import (
    COMMAND_PREFIX,
    HEADER_EDGE,
    HEADER_MSG_ID,
    HEADER_RECEIVED,
    HEADER_TOPIC,
    inbound_subject,
)


class WorkerProcess:
    """`gas-safety worker` as a real process, read through its /healthz."""

    def __init__(self, stack: Stack, servers: str, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = stack.home / f"worker-{name}.log"
        self.env = {
            **os.environ,
            "GAS_SAFETY_HOME": str(stack.home),
            "GAS_SAFETY_METRICS_PORT": str(self.port),
            "GAS_SAFETY_CLUSTER__NATS_SERVERS": servers,
            "GAS_SAFETY_CLUSTER__WORKER_NAME": name,
            "GAS_SAFETY_DETECTION__SWEEP_INTERVAL_S": "0.5",
            "GAS_SAFETY_RESPONSE__ACK_TIMEOUT_S": "2.0",
            "GAS_SAFETY_DB__STATE_INTERVAL_S": "1.0",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.health, 30, what=f"worker {self.name} up")
        return self

    def health(self) -> dict[str, Any] | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"worker {self.name} exited ({self.proc.returncode}):\n"
                + self.log_path.read_text()[-3000:]
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                doc: dict[str, Any] = json.loads(r.read())
                return doc
        except OSError:
            return None

    def partitions(self) -> list[int]:
        h = self.health()
        return list(h["partitions"]) if h else []

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def relay_headers(topic: str, payload: bytes) -> dict[str, str]:
    """The headers the edge relay puts on a device's message."""
    digest = hashlib.sha1(payload).hexdigest()[:16]
    return {
        HEADER_TOPIC: topic,
        HEADER_RECEIVED: f"{time.time():.6f}",
        HEADER_EDGE: "test-edge",
        HEADER_MSG_ID: f"{topic}:{digest}",
    }


class LogSide:
    """A NATS connection on its own event loop thread: publishes into JetStream as the edge
    relay would (confirmed) and records every command on `gas.cmd.>`."""

    def __init__(self, servers: list[str]) -> None:
        self.servers = servers
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.commands: list[tuple[float, str, dict[str, Any]]] = []  # (time, meter, payload)
        self.nc: Any = None
        self.js: Any = None
        self.call(self._connect(), timeout=90)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> None:
        import nats

        from gateway.ops.nats_cluster import ensure_stream_async

        # patient: a fresh cluster's leader may not know every peer yet
        await ensure_stream_async(self.servers)
        self.nc = await nats.connect(
            servers=self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2
        )
        self.js = self.nc.jetstream(timeout=10)

        async def on_cmd(msg: Any) -> None:
            meter = msg.subject.split(".", 2)[2]
            self.commands.append((time.time(), meter, json.loads(msg.data)))

        await self.nc.subscribe(f"{COMMAND_PREFIX}.>", cb=on_cmd)

    async def _publish(self, partition: int, topic: str, payload: bytes) -> None:
        await self.js.publish(
            inbound_subject(partition), payload, headers=relay_headers(topic, payload)
        )

    def publish(self, partition: int, topic: str, payload: bytes) -> float:
        t = time.time()
        self.call(self._publish(partition, topic, payload))
        return t

    def publish_many(self, items: list[tuple[int, str, bytes]]) -> None:
        async def go() -> None:
            await asyncio.gather(*(self._publish(*it) for it in items))

        self.call(go(), timeout=60)

    def commands_for(self, meter_id: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, p) for t, m, p in list(self.commands) if m == meter_id]

    def close(self) -> None:
        self.call(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def part_of(hh: Any) -> int:
    return partition_of(hh.community, hh.building)


def reading(device_kind: str, seq: int, **values: Any) -> bytes:
    doc: dict[str, Any] = {"seq": seq, "ts": time.time()}
    if device_kind == "meter":
        doc.update(vol=100.0, flow=0.2, valve="open", batt=3.6, rssi=-80)
    else:
        doc.update(ch4=1.0, fault=0)
    doc.update(values)
    return json.dumps(doc).encode()


def owners(dsn: str) -> dict[int, str]:
    """Partition -> worker name, from the database's lock table."""
    import psycopg

    from gateway.cluster.leases import _OWNERS_SQL, PARTITION_CLASS

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(_OWNERS_SQL, (PARTITION_CLASS,)).fetchall()
    return {int(p): str(n) for p, n in rows}


def wait_split(workers: list[WorkerProcess], total: int, timeout_s: float) -> None:
    """Until the workers own `total` partitions between them, each its even share, and
    each partition judged (rebuilt) by one of them."""
    share = -(-total // len(workers))

    def done() -> bool:
        got = [w.partitions() for w in workers]
        return (
            sum(len(g) for g in got) == total
            and len({p for g in got for p in g}) == total
            and all(len(g) >= total - share * (len(workers) - 1) for g in got)
        )

    wait_until(done, timeout_s, interval_s=0.1, what=f"{total} partitions split")


def poll(cond: Callable[[], Any], timeout_s: float, what: str) -> Any:
    return wait_until(cond, timeout_s, interval_s=0.02, what=what)
