"""Private three-node clusters of the candidate log engines, on free ports under one folder.

NATS JetStream (gateway/ops/nats_cluster.py) and RabbitMQ with quorum queues (Debian's
rabbitmq-server), each started as three nodes on 127.0.0.1 for the decision record in
docs/decisions/log-engine.md. Nothing of the machine's own instances is used: RabbitMQ gets
its own epmd port, cookie and data folders.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from gateway.ops.nats_cluster import NatsCluster, NatsNode, wait_ready
from gateway.ops.stack import free_port

__all__ = ["NatsCluster", "NatsNode", "RabbitCluster", "RabbitNode"]

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _wait(check: object, timeout: float, what: str) -> None:
    wait_ready(check, timeout, what)  # type: ignore[arg-type]


@dataclass
class RabbitNode:
    name: str
    amqp_port: int
    dist_port: int
    pid: int | None = None


@dataclass
class RabbitCluster:
    home: Path
    nodes: list[RabbitNode] = field(default_factory=list)
    epmd_port: int = 0

    @property
    def urls(self) -> list[str]:
        return [f"amqp://guest:guest@127.0.0.1:{n.amqp_port}/" for n in self.nodes]

    def _env(self, node: RabbitNode) -> dict[str, str]:
        base = self.home / node.name
        return {
            **os.environ,
            "HOME": str(self.home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": f"{node.name}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.home / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.home / "rabbitmq-env.conf"),
            # no busy-waiting schedulers (Debian's own service runs the same way): their spin
            # would show as the engine's CPU per message and starve the other nodes
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
        }

    def ctl(self, node: RabbitNode, *args: str, timeout: float = 60) -> str:
        out = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", f"{node.name}@localhost", *args],
            env=self._env(node),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {out.stderr.strip()[:300]}")
        return out.stdout

    def start(self, size: int = 3) -> RabbitCluster:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text("GASSAFETYBENCHCOOKIE")
        cookie.chmod(0o400)
        (self.home / "enabled_plugins").write_text("[].\n")
        # guest may sign in from 127.0.0.1 only, which is where the bench runs
        (self.home / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (self.home / "advanced.config").write_text("[].\n")
        (self.home / "rabbitmq-env.conf").write_text("")
        self.epmd_port = free_port()
        self.nodes = [RabbitNode(f"gs{i + 1}", free_port(), free_port()) for i in range(size)]
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._await_node(node)
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", f"{self.nodes[0].name}@localhost")
            self.ctl(node, "start_app")
        return self

    def _launch(self, node: RabbitNode) -> None:
        env = self._env(node)
        (self.home / node.name / "log").mkdir(parents=True, exist_ok=True)
        subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server"), "-detached"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).wait()

    def _await_node(self, node: RabbitNode) -> None:
        subprocess.run(
            [
                str(RABBIT_BIN / "rabbitmqctl"),
                "-n",
                f"{node.name}@localhost",
                "wait",
                "--timeout",
                "90",
                str(self.home / node.name / "pid"),
            ],
            env=self._env(node),
            capture_output=True,
            check=True,
            timeout=120,
        )
        node.pid = int((self.home / node.name / "pid").read_text().strip())

    def queue_leader(self, queue: str) -> RabbitNode:
        for node in self.nodes:
            try:
                out = self.ctl(node, "list_queues", "-q", "--no-table-headers", "name", "leader")
            except RuntimeError:
                continue
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return next(n for n in self.nodes if f"{n.name}@localhost" == parts[1])
        raise LookupError(f"no leader for queue {queue}")

    def kill(self, node: RabbitNode) -> None:
        if node.pid is not None:
            os.kill(node.pid, signal.SIGKILL)
            node.pid = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.pid is not None:
                try:
                    self.ctl(node, "stop", timeout=60)
                except (RuntimeError, subprocess.TimeoutExpired):
                    os.kill(node.pid, signal.SIGKILL)
        epmd = shutil.which("epmd")
        if epmd:
            subprocess.run(
                [epmd, "-kill"],
                env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)},
                capture_output=True,
            )
        shutil.rmtree(self.home, ignore_errors=True)
