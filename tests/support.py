"""Test helpers: the gateway as a real process, and devices on their own MQTT connections."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from gateway.ops.stack import Runtime, Stack, free_port
from gateway.pipeline.metrics import scrape


class GatewayProcess:
    """`gas-safety gateway` as a real process, read through its Prometheus endpoint."""

    def __init__(self, stack: Stack, extra_env: dict[str, str] | None = None) -> None:
        self.stack = stack
        self.metrics_port = free_port()
        self.log_path = stack.home / f"gateway-{self.metrics_port}.log"
        self.env = {**os.environ, "GAS_SAFETY_HOME": str(stack.home),
                    "GAS_SAFETY_METRICS_PORT": str(self.metrics_port),
                    "GAS_SAFETY_DETECTION__SWEEP_INTERVAL_S": "0.2",
                    "GAS_SAFETY_RESPONSE__ACK_TIMEOUT_S": "0.5",
                    "GAS_SAFETY_RESPONSE__BACKOFF_FACTOR": "1.0",
                    "GAS_SAFETY_DB__STATE_INTERVAL_S": "0.3",
                    **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> GatewayProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "gateway"],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_for(lambda m: m.get("gas_mqtt_connected", 0) == 1, 30, "mqtt connection")
        return self

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    def wait_for(self, cond: Any, timeout_s: float, what: str) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}); see {self.log_path}:\n"
                                     + self.log_path.read_text()[-3000:])
            m = self.metrics()
            if m and cond(m):
                return m
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; metrics: {self.metrics()}")

    def wait_devices(self, dsn: str, timeout_s: float = 20) -> None:
        import psycopg

        with psycopg.connect(dsn) as conn:
            n = conn.execute("SELECT count(*) FROM devices WHERE status = 'active'").fetchone()[0]
        self.wait_for(lambda m: m.get("gas_registry_devices", 0) >= n, timeout_s,
                      f"{n} devices in the gateway registry")

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


class Device:
    """A provisioned device on its own MQTT connection (paho-mqtt, as real firmware would)."""

    def __init__(self, runtime: Runtime, device_id: str, password: str | None = None,
                 subscribe_cmd: bool = True) -> None:
        import queue

        import paho.mqtt.client as mqtt

        from gateway.ops import credentials

        self.id = device_id
        self.commands: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.seq = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.username_pw_set(device_id, password if password is not None
                                    else credentials.derive_password(runtime.fleet_key, device_id))
        self.client.on_message = self._on_message
        self.client.on_socket_open = lambda c, u, sock: sock.setsockopt(6, 1, 1)  # TCP_NODELAY
        rc = self.client.connect("127.0.0.1", runtime.mqtt_port)
        self.client.loop_start()
        if subscribe_cmd:
            self.client.subscribe(f"gas/v1/{device_id}/cmd", qos=1)
        time.sleep(0.1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        import json

        self.commands.put((time.time(), json.loads(msg.payload)))

    def publish(self, channel: str, doc: dict[str, Any] | bytes, qos: int = 1) -> float:
        import json

        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        t = time.time()
        self.client.publish(f"gas/v1/{self.id}/{channel}", payload, qos=qos).wait_for_publish(5)
        return t

    def detector(self, ch4: float, fault: int = 0, ts: float | None = None) -> float:
        self.seq += 1
        return self.publish("telemetry", {"seq": self.seq, "ts": ts or time.time(), "ch4": ch4,
                                          "fault": fault})

    def meter(self, flow: float, valve: str = "open", vol: float = 100.0,
              batt: float = 3.6) -> float:
        self.seq += 1
        return self.publish("telemetry", {"seq": self.seq, "ts": time.time(), "vol": vol,
                                          "flow": flow, "valve": valve, "batt": batt,
                                          "rssi": -80})

    def ack(self, cmd_id: str, ok: bool = True, valve: str = "closed") -> None:
        self.publish("ack", {"cmd_id": cmd_id, "ok": ok, "valve": valve, "ts": time.time(),
                             "error": None})

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
