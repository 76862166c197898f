"""A private NATS JetStream cluster (Debian's nats-server) on free ports under one folder,
and the log's stream (gateway.protocol.log_subjects) on it.

Shared by `gas-safety stack up --cluster`, the cluster tests and the log-engine bench.
Each node writes a pid file, so a later command (`stack status`, `stack down`) finds the
nodes that an earlier one started; nothing of the machine's own NATS is used.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.ops.stack import free_port
from gateway.protocol.log_subjects import INBOUND_PREFIX, STREAM

DUPLICATE_WINDOW_S = 120
"""JetStream's de-duplication window of the stream: a relay's resend of a message within it
(same Nats-Msg-Id) is confirmed and not stored again."""
MAX_AGE_S = 7 * 86400
"""How long the stream keeps a message (limits retention): workers read from their durable
consumer's position, the rest is there for replay and audit."""


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    """Until check() is true (its exceptions count as false); TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready within {timeout:.0f} s")


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    monitor_port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"


@dataclass
class NatsCluster:
    home: Path
    nodes: list[NatsNode] = field(default_factory=list)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def servers(self) -> str:
        """The urls as one comma-separated setting (`cluster.nats_servers`)."""
        return ",".join(self.urls)

    @classmethod
    def described(cls, home: Path, nodes: list[dict[str, Any]]) -> NatsCluster:
        """The cluster a `describe()` (in a runtime file) names."""
        return cls(home, [NatsNode(**n) for n in nodes])

    def describe(self) -> list[dict[str, Any]]:
        return [asdict(n) for n in self.nodes]

    def start(self, size: int = 3, timeout_s: float = 30) -> NatsCluster:
        """Start the nodes (new ones on free ports unless `nodes` are set) and wait for the
        JetStream meta leader."""
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.nodes:
            self.nodes = [
                NatsNode(f"n{i + 1}", free_port(), free_port(), free_port()) for i in range(size)
            ]
        for node in self.nodes:
            if self.pid(node) is None:
                self._launch(node)
        wait_for(self._meta_ready, timeout_s, "NATS JetStream meta leader")
        return self

    def _launch(self, node: NatsNode) -> None:
        routes = ", ".join(
            f"nats://127.0.0.1:{o.cluster_port}" for o in self.nodes if o is not node
        )
        conf = self.home / f"{node.name}.conf"
        conf.write_text(
            f"server_name: {node.name}\nlisten: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.monitor_port}\n"
            f"pid_file: {self._pid_file(node)}\n"
            f"jetstream {{ store_dir: {self.home / node.name}, max_mem: 256MB, max_file: 4GB }}\n"
            f"cluster {{ name: gs, listen: 127.0.0.1:{node.cluster_port}, routes: [{routes}] }}\n"
        )
        self._pid_file(node).unlink(missing_ok=True)
        with open(self.home / f"{node.name}.log", "ab") as log:
            self._procs[node.name] = subprocess.Popen(
                ["nats-server", "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the command that started it
            )
        wait_for(lambda: self.pid(node) is not None, 10, f"NATS node {node.name}")

    def _pid_file(self, node: NatsNode) -> Path:
        return self.home / f"{node.name}.pid"

    def pid(self, node: NatsNode) -> int | None:
        """The node's process id while it runs (None: stopped, or a stale pid file)."""
        proc = self._procs.get(node.name)
        if proc is not None and proc.poll() is not None:
            return None
        try:
            pid = int(self._pid_file(node).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        return pid if b"nats-server" in cmdline else None

    def _jsz(self, node: NatsNode) -> dict[str, Any]:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{node.monitor_port}/jsz?streams=true&consumers=true", timeout=1
        ) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc

    def healthy(self, node: NatsNode) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{node.monitor_port}/healthz", timeout=1
            ) as r:
                return r.status == 200
        except OSError:
            return False

    def _meta_ready(self) -> bool:
        """A meta leader that knows every other running node as a current peer: before that
        an R3 stream is refused ("no suitable peers for placement")."""
        running = [n for n in self.nodes if self.pid(n) is not None]
        for node in running:
            meta = self._jsz(node).get("meta_cluster") or {}
            if not isinstance(meta, dict) or meta.get("leader") != node.name:
                continue
            peers = [p for p in meta.get("replicas") or [] if p.get("current")]
            return len(peers) >= len(running) - 1
        return False

    def stream_leader(self, stream: str = STREAM) -> NatsNode:
        for node in self.nodes:
            if self.pid(node) is None:
                continue
            for acc in self._jsz(node).get("account_details", []) or []:
                for st in acc.get("stream_detail", []) or []:
                    if st.get("name") == stream:
                        leader = (st.get("cluster") or {}).get("leader")
                        return next(n for n in self.nodes if n.name == leader)
        raise LookupError(f"no leader for stream {stream}")

    def kill(self, node: NatsNode) -> None:
        """SIGKILL, as a machine's crash would."""
        pid = self.pid(node)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        proc = self._procs.pop(node.name, None)
        if proc is not None:
            proc.wait()
        else:
            wait_for(lambda: self.pid(node) is None, 10, f"NATS node {node.name} gone")

    def restart(self, node: NatsNode) -> None:
        if self.pid(node) is None:
            self._launch(node)

    def stop(self, remove: bool = False) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 10 s); `remove`: delete the data."""
        for node in self.nodes:
            pid = self.pid(node)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            try:
                wait_for(_gone(self, node), 10, f"NATS node {node.name} stopped")
            except TimeoutError:
                self.kill(node)
            proc = self._procs.pop(node.name, None)
            if proc is not None:
                proc.wait()
        if remove:
            shutil.rmtree(self.home, ignore_errors=True)


def _gone(cluster: NatsCluster, node: NatsNode) -> Callable[[], bool]:
    return lambda: cluster.pid(node) is None


def stream_config() -> Any:
    """GAS_IN: every partition's subject, file storage, three replicas, the dedup window."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    return StreamConfig(
        name=STREAM,
        subjects=[f"{INBOUND_PREFIX}.>"],
        num_replicas=3,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        max_age=MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


async def ensure_stream_async(urls: list[str], timeout_s: float = 60) -> None:
    """Create the stream, or bring an existing one's settings to ours."""
    import nats
    from nats.js.errors import APIError, NotFoundError

    nc = await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=5)
    deadline = time.monotonic() + timeout_s
    try:
        js = nc.jetstream(timeout=10)
        while True:
            try:
                try:
                    await js.stream_info(STREAM)
                except NotFoundError:
                    await js.add_stream(stream_config())
                else:
                    await js.update_stream(stream_config())
                return
            except (APIError, TimeoutError) as err:
                # a fresh cluster: the meta leader is there before every peer is known
                # ("no suitable peers for placement"), or an election is going on
                if time.monotonic() > deadline:
                    raise TimeoutError(f"stream {STREAM} not created: {err}") from None
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


def ensure_stream(urls: list[str]) -> None:
    asyncio.run(ensure_stream_async(urls))
