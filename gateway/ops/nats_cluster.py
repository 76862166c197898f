"""A private NATS JetStream cluster (Debian's nats-server) on free ports under one folder.

Three nodes on 127.0.0.1 with JetStream, routed to each other: what the partition workers'
tests, the log-engine bench and a local multi-node stack run against. Nothing of the
machine's own nats-server (port 4222) is used.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.ops.stack import free_port


def wait_ready(check: Callable[[], object], timeout: float, what: str) -> None:
    """Until `check()` is truthy (exceptions count as not yet); TimeoutError after."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready within {timeout:.0f} s")


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"


@dataclass
class NatsCluster:
    home: Path
    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def servers(self) -> str:
        """The nodes as the worker's `cluster.nats_servers` setting names them."""
        return ",".join(self.urls)

    def start(self, size: int = 3) -> NatsCluster:
        self.home.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            NatsNode(f"n{i + 1}", free_port(), free_port(), free_port()) for i in range(size)
        ]
        for node in self.nodes:
            self._launch(node)
        wait_ready(self._meta_ready, 30, "NATS JetStream meta leader")
        return self

    def _launch(self, node: NatsNode) -> None:
        routes = ", ".join(
            f"nats://127.0.0.1:{o.cluster_port}" for o in self.nodes if o is not node
        )
        conf = self.home / f"{node.name}.conf"
        conf.write_text(
            f"server_name: {node.name}\nlisten: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.monitor_port}\n"
            f"jetstream {{ store_dir: {self.home / node.name}, max_mem: 256MB, max_file: 4GB }}\n"
            f"cluster {{ name: gs, listen: 127.0.0.1:{node.cluster_port}, routes: [{routes}] }}\n"
        )
        log = open(self.home / f"{node.name}.log", "ab")  # noqa: SIM115 - owned by the child
        node.proc = subprocess.Popen(
            ["nats-server", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )

    def jsz(self, node: NatsNode) -> dict[str, Any]:
        """The node's /jsz monitoring document (streams and consumers)."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{node.monitor_port}/jsz?streams=true&consumers=true", timeout=1
        ) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc

    def _meta_ready(self) -> bool:
        doc = self.jsz(self.nodes[0])
        meta = doc.get("meta_cluster") or {}
        return bool(meta.get("leader")) if isinstance(meta, dict) else False

    def stream_leader(self, stream: str) -> NatsNode:
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            doc = self.jsz(node)
            for acc in doc.get("account_details", []) or []:
                for st in acc.get("stream_detail", []) or []:
                    if st.get("name") == stream:
                        leader = (st.get("cluster") or {}).get("leader")
                        return next(n for n in self.nodes if n.name == leader)
        raise LookupError(f"no leader for stream {stream}")

    def kill(self, node: NatsNode) -> None:
        if node.proc is not None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def restart(self, node: NatsNode) -> None:
        self._launch(node)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
        shutil.rmtree(self.home, ignore_errors=True)
