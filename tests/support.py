"""Test helpers: the gateway as a real process, and devices on their own MQTT connections."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.ops.stack import Runtime, Stack, free_port
from gateway.pipeline.metrics import scrape

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.05,
               what: str = "the condition") -> T:
    """Poll `predicate` until it returns something truthy and return that; on timeout raise
    AssertionError naming `what` and the last value seen. Tests synchronise on facts with it,
    never on a guessed sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what};"
                                 f" last value: {last!r}")
        time.sleep(interval_s)  # the poll interval of this wait


async def wait_until_async(predicate: Callable[[], T | Awaitable[T]], timeout_s: float = 10.0,
                           interval_s: float = 0.05, what: str = "the condition") -> T:
    """`wait_until` for async tests: `predicate` may be a plain or an async function."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what};"
                                 f" last value: {last!r}")
        await asyncio.sleep(interval_s)  # the poll interval of this wait


def wait_row(dsn: str, sql: str, args: tuple[Any, ...] = (), cond: Callable[[Any], Any] = bool,
             timeout_s: float = 10.0, what: str | None = None) -> list[Any]:
    """Poll a query (a fresh connection each time, so each poll sees new commits) until
    `cond(rows)` holds; returns the rows."""
    import psycopg

    def rows() -> bool:  # True, not the rows: a condition may accept no rows
        nonlocal last
        with psycopg.connect(dsn) as conn:
            last = conn.execute(sql, args).fetchall()
        return bool(cond(last))

    last: list[Any] = []
    try:
        wait_until(rows, timeout_s, what=what or f"{sql} {args}")
    except AssertionError as err:
        raise AssertionError(f"{err}; rows: {last!r}") from None
    return last


def broker_accepts(runtime: Runtime, username: str, password: str | None = None) -> bool:
    """Whether Mosquitto accepts these credentials now (the device's derived password by
    default): a provisioning test waits on it after the SIGHUP that makes the broker re-read
    its password and ACL files."""
    import paho.mqtt.client as mqtt

    from gateway.ops import credentials

    codes: list[Any] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username)
    c.username_pw_set(username, password if password is not None
                      else credentials.derive_password(runtime.fleet_key, username))
    c.on_connect = lambda cl, u, flags, rc, props=None: codes.append(rc)
    try:
        c.connect("127.0.0.1", runtime.mqtt_port)
        deadline = time.monotonic() + 5
        while not codes and time.monotonic() < deadline:
            c.loop(0.05)  # select() on the socket until CONNACK, not a sleep
    except OSError:
        return False
    finally:
        c.disconnect()
    return bool(codes) and not codes[0].is_failure


def reload_broker(stack: Stack, runtime: Runtime, device_id: str) -> None:
    """SIGHUP the broker, then wait until it knows `device_id` (provisioned last)."""
    stack.reload_broker()
    wait_until(lambda: broker_accepts(runtime, device_id), 10,
               what=f"the broker to accept {device_id} after re-reading its password file")


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
        def met() -> dict[str, float] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}); see "
                                     f"{self.log_path}:\n" + self.log_path.read_text()[-3000:])
            m = self.metrics()
            return m if m and cond(m) else None

        try:
            return wait_until(met, timeout_s, what=what)
        except AssertionError as err:
            if "timed out" not in str(err):
                raise
            raise AssertionError(f"{err}; metrics: {self.metrics()}") from None

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
        subacked: set[int] = set()
        self.client.on_subscribe = lambda c, u, mid, codes, props: subacked.add(mid)
        self.client.connect("127.0.0.1", runtime.mqtt_port)
        self.client.loop_start()
        # ready when the broker has answered: CONNACK, and SUBACK for the command topic
        wait_until(self.client.is_connected, 10, what=f"{device_id} connected")
        if subscribe_cmd:
            _, mid = self.client.subscribe(f"gas/v1/{device_id}/cmd", qos=1)
            wait_until(lambda: mid in subacked, 10, what=f"{device_id} subscribed to its commands")

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
