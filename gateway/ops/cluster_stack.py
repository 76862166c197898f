"""The multi-node topology on one machine: `gas-safety stack up --cluster`.

Under `<stack home>/cluster`, on free ports of 127.0.0.1: a three-node NATS JetStream
cluster with the GAS_IN stream (gateway.ops.nats_cluster), two Mosquitto edge brokers with
the repo's mosquitto.conf policy and the stack's own password and ACL files (so every
provisioned device may connect to either), and one relay per edge (`gas-safety relay`),
beside the stack's single PostgreSQL + TimescaleDB. `cluster.json` lists what runs where:
the partition workers' command reads `nats_urls`, `stream` and `dsn` from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.accounts import RELAY_PREFIX, service_password_from_key
from gateway.ops import credentials
from gateway.ops.nats_cluster import NatsCluster, ensure_stream, wait_for
from gateway.ops.stack import ROOT, Runtime, Stack, StackError, _port_open, free_port
from gateway.protocol.log_subjects import STREAM

logger = logging.getLogger(__name__)

EDGES = 2


@dataclass
class Edge:
    """One edge node: a broker and its relay."""

    name: str
    mqtt_port: int
    metrics_port: int
    relay_account: str = f"{RELAY_PREFIX}0"


class ClusterStack:
    def __init__(self, stack: Stack | None = None) -> None:
        self.stack = stack or Stack()
        self.home = self.stack.home / "cluster"
        self.file = self.home / "cluster.json"
        self.nats = NatsCluster(self.home / "nats")
        self.edges: list[Edge] = []
        doc = self.runtime()
        if doc is not None:
            self.nats = NatsCluster.described(self.home / "nats", doc["nats_nodes"])
            self.edges = [Edge(**e) for e in doc["edges"]]

    # ------------------------------------------------------------ runtime
    def runtime(self) -> dict[str, Any] | None:
        """cluster.json: what `up` started (None when it never ran)."""
        if not self.file.is_file():
            return None
        doc: dict[str, Any] = json.loads(self.file.read_text())
        return doc

    def _write_runtime(self, rt: Runtime) -> None:
        doc = {
            "nats_urls": self.nats.urls,
            "stream": STREAM,
            "dsn": rt.dsn,
            "nats_nodes": self.nats.describe(),
            "edges": [asdict(e) for e in self.edges],
            # where devices connect (through the load balancer in production: docs/cluster.md)
            "edge_brokers": [f"127.0.0.1:{e.mqtt_port}" for e in self.edges],
        }
        self.file.write_text(json.dumps(doc, indent=2))
        self.file.chmod(0o600)

    # ------------------------------------------------------------ public
    def up(self, edges: int = EDGES) -> dict[str, Any]:
        rt = self.stack.up_database()
        self.home.mkdir(parents=True, exist_ok=True)
        for tool in ("nats-server", "mosquitto"):
            if not any(Path(d, tool).exists() for d in ("/usr/sbin", "/usr/bin")):
                raise StackError(f"missing: {tool}; run scripts/bootstrap.sh to install it")
        self.nats.start()
        ensure_stream(self.nats.urls)
        if not self.edges:
            self.edges = [
                Edge(f"edge-{chr(ord('a') + i)}", free_port(), free_port()) for i in range(edges)
            ]
        self._write_runtime(rt)
        self.stack.mq_dir.mkdir(parents=True, exist_ok=True)
        credentials.ensure_service_accounts(self.stack.passwd_file, self.stack.acl_file, rt)
        for edge in self.edges:
            self.start_broker(edge)
            self.start_relay(edge)
        return self.runtime() or {}

    def down(self) -> None:
        for edge in self.edges:
            self.stop_relay(edge)
            self.stop_broker(edge)
        self.nats.stop()

    def status(self) -> dict[str, Any]:
        if self.runtime() is None:
            return {"cluster": "not set up"}
        out: dict[str, Any] = {
            f"nats-{n.name}": {
                "url": n.url,
                "pid": self.nats.pid(n),
                "log": str(self.nats.home / f"{n.name}.log"),
                "healthy": self.nats.pid(n) is not None and self.nats.healthy(n),
            }
            for n in self.nats.nodes
        }
        for e in self.edges:
            out[f"broker-{e.name}"] = {
                "port": e.mqtt_port,
                "pid": self.broker_pid(e),
                "log": str(self._edge_dir(e) / "mosquitto.log"),
                "healthy": self.broker_pid(e) is not None and _port_open(e.mqtt_port),
            }
            out[f"relay-{e.name}"] = {
                "metrics": f"http://127.0.0.1:{e.metrics_port}/metrics",
                "pid": self.relay_pid(e),
                "log": str(self.relay_file(e, "log")),
                "healthy": self.relay_pid(e) is not None and _port_open(e.metrics_port),
            }
        return out

    def reload_brokers(self) -> None:
        """Every edge broker re-reads the shared password and ACL files (SIGHUP)."""
        for e in self.edges:
            pid = self.broker_pid(e)
            if pid is not None:
                os.kill(pid, signal.SIGHUP)

    def edge(self, name: str) -> Edge:
        return next(e for e in self.edges if e.name == name)

    # ------------------------------------------------------------ brokers
    def _edge_dir(self, e: Edge) -> Path:
        return self.home / e.name

    def broker_pid(self, e: Edge) -> int | None:
        return _pid_of(self._edge_dir(e) / "mosquitto.pid", b"mosquitto")

    def start_broker(self, e: Edge) -> None:
        if self.broker_pid(e) is not None:
            return
        if _port_open(e.mqtt_port):
            raise StackError(
                f"port {e.mqtt_port} (edge broker {e.name}) is used by another program; "
                f"stop it or delete {self.file} to choose new ports"
            )
        d = self._edge_dir(e)
        (d / "data").mkdir(parents=True, exist_ok=True)
        conf = d / "mosquitto.conf"
        policy = (ROOT / "mosquitto.conf").read_text()
        conf.write_text(
            f"# generated by `gas-safety stack up --cluster`: edge {e.name}, then the policy\n"
            f"listener {e.mqtt_port} 127.0.0.1\n"
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"pid_file {d / 'mosquitto.pid'}\n"
            f"persistence_location {d / 'data'}/\n"
            f"log_dest file {d / 'mosquitto.log'}\n"
            f"password_file {self.stack.passwd_file}\n"
            f"acl_file {self.stack.acl_file}\n"
            f"# ---- policy ({ROOT / 'mosquitto.conf'})\n{policy}\n"
        )
        (d / "mosquitto.pid").unlink(missing_ok=True)
        r = subprocess.run(
            ["mosquitto", "-c", str(conf), "-d"], capture_output=True, text=True, check=False
        )
        if r.returncode != 0:
            raise StackError(f"edge broker {e.name} did not start: {r.stderr.strip()}")
        wait_for(lambda: _port_open(e.mqtt_port), 10, f"edge broker {e.name}")

    def stop_broker(self, e: Edge) -> None:
        _stop(self.broker_pid(e), lambda: self.broker_pid(e))

    def kill_broker(self, e: Edge) -> None:
        """SIGKILL: what it had not saved (autosave_interval) is lost, as in a crash."""
        _kill(self.broker_pid(e), lambda: self.broker_pid(e))

    # ------------------------------------------------------------ relays
    def relay_file(self, e: Edge, ext: str) -> Path:
        """A relay's settings, log or pid file, named by its account (one edge may have more
        than one relay: a standby on `edge-relay-1` keeps its own session)."""
        return self._edge_dir(e) / f"{e.relay_account}.{ext}"

    def relay_config(self, e: Edge) -> Path:
        """The relay's settings file: its broker, account, the log's nodes, its metrics."""
        rt = self.stack.runtime()
        assert rt is not None
        password = service_password_from_key(rt.fleet_key, e.relay_account)
        path = self.relay_file(e, "toml")
        path.parent.mkdir(parents=True, exist_ok=True)
        urls = ", ".join(json.dumps(u) for u in self.nats.urls)
        path.write_text(
            "# generated by `gas-safety stack up --cluster`\n[edge]\n"
            f'name = "{e.name}"\nmqtt_port = {e.mqtt_port}\n'
            f'username = "{e.relay_account}"\npassword = "{password}"\n'
            f"nats_urls = [{urls}]\nmetrics_port = {e.metrics_port}\n"
        )
        path.chmod(0o600)
        return path

    def relay_pid(self, e: Edge) -> int | None:
        return _pid_of(self.relay_file(e, "pid"), b"relay")

    def start_relay(self, e: Edge) -> None:
        if self.relay_pid(e) is not None:
            return
        config = self.relay_config(e)
        env = {
            **os.environ,
            "GAS_SAFETY_HOME": str(self.stack.home),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        with open(self.relay_file(e, "log"), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "relay", "--config", str(config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.relay_file(e, "pid").write_text(str(proc.pid))
        try:
            wait_for(lambda: _port_open(e.metrics_port), 20, f"relay {e.name}")
        except TimeoutError:
            tail = self.relay_file(e, "log").read_text(errors="replace")
            raise StackError(
                f"relay {e.name} did not start:\n" + "\n".join(tail.splitlines()[-10:])
            ) from None

    def stop_relay(self, e: Edge) -> None:
        _stop(self.relay_pid(e), lambda: self.relay_pid(e))

    def kill_relay(self, e: Edge) -> None:
        _kill(self.relay_pid(e), lambda: self.relay_pid(e))


def _pid_of(pid_file: Path, marker: bytes) -> int | None:
    """The pid in a pid file while that process runs and its command line has `marker`."""
    try:
        pid = int(pid_file.read_text().strip())
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().split(b") ", 1)[1][:1] == b"Z":
                _reap(pid)
                return None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return None
    return pid if marker in cmdline else None


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _stop(pid: int | None, still: Any, timeout_s: float = 15) -> None:
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while still() is not None and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if still() is not None:
        _kill(pid, still)


def _kill(pid: int | None, still: Any) -> None:
    if pid is None:
        return
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while still() is not None and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.02)


def describe(doc: dict[str, Any]) -> str:
    """What `stack up --cluster` prints: where each part listens."""
    lines = [f"nats      {', '.join(doc['nats_urls'])}  (stream {doc['stream']})"]
    for e in doc["edges"]:
        lines.append(
            f"edge      {e['name']}: mosquitto 127.0.0.1:{e['mqtt_port']}, relay metrics"
            f" http://127.0.0.1:{e['metrics_port']}/metrics"
        )
    lines.append("postgres  (dsn in cluster.json and runtime.json)")
    return "\n".join(lines)


def merged_status(single: dict[str, Any], cluster: ClusterStack) -> dict[str, Any]:
    """`stack status`: the single stack's parts, and the cluster's when it was set up (then
    the single broker counts only if it runs: the cluster's edges replace it)."""
    if cluster.runtime() is None:
        return single
    out = dict(single)
    mq = out.get("mosquitto")
    if isinstance(mq, dict) and not mq.get("healthy") and mq.get("pid") is None:
        out["mosquitto"] = "not started (the cluster's edge brokers replace it)"
    out.update(cluster.status())
    return out
