"""A small pipelined QoS 1 publisher for the fault tests (bridge accounts, many devices)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from gateway.ops import credentials
from gateway.ops.stack import Runtime
from gateway.service.mqtt_client import ClientConfig, MqttClient


@dataclass
class Load:
    runtime: Runtime
    device_ids: list[str]
    meters: set[str]
    rate_per_s: float
    bridge: str = credentials.BRIDGE_PREFIX + "1"
    sent: dict[str, int] = field(default_factory=dict)  # device -> last seq sent
    acked: int = 0
    errors: int = 0
    stop: bool = False

    def payload(self, device: str, seq: int) -> bytes:
        now = time.time()
        if device in self.meters:
            doc = {"seq": seq, "ts": now, "vol": 100 + seq * 0.001, "flow": 0.2, "valve": "open",
                   "batt": 3.6, "rssi": -80}
        else:
            doc = {"seq": seq, "ts": now, "ch4": 1.0 + (seq % 7) * 0.1, "fault": 0}
        return json.dumps(doc).encode()

    async def _connect(self) -> MqttClient:
        cfg = ClientConfig("127.0.0.1", self.runtime.mqtt_port, self.bridge, self.bridge,
                           credentials.service_password(self.runtime, self.bridge),
                           clean_session=False)
        return await MqttClient.connect(cfg, lambda msgs: None)

    async def run(self, total: int) -> None:
        """Publish `total` readings round-robin over the devices at the rate; reconnect and
        resend what was not PUBACKed when the broker goes away (a device would too)."""
        client = await self._connect()
        pending: list[tuple[str, bytes, asyncio.Future[None]]] = []
        n = 0
        start = time.monotonic()
        while n < total and not self.stop:
            due = int((time.monotonic() - start) * self.rate_per_s) - n
            for _ in range(min(max(due, 0), total - n)):
                device = self.device_ids[n % len(self.device_ids)]
                seq = self.sent.get(device, 0) + 1
                self.sent[device] = seq
                topic = f"gas/v1/{device}/telemetry"
                body = self.payload(device, seq)
                pending.append((topic, body, self._publish(client, topic, body)))
                n += 1
            await asyncio.sleep(0.005)  # pacing: the publish rate is the load under test
            client, pending = await self._settle(client, pending, block=False)
        await self._settle(client, pending, block=True)
        client.close()

    def _publish(self, client: MqttClient, topic: str, body: bytes,
                 dup: bool = False) -> asyncio.Future[None]:
        try:
            return client.publish(topic, body, qos=1, dup=dup)
        except Exception as err:  # not connected: resend later
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_exception(err)
            return fut

    async def _settle(self, client: MqttClient, pending: list, block: bool
                      ) -> tuple[MqttClient, list]:
        while True:
            still = []
            failed = []
            for topic, body, fut in pending:
                if not fut.done():
                    still.append((topic, body, fut))
                elif fut.exception() is not None:
                    failed.append((topic, body))
                else:
                    self.acked += 1
            if failed or not client.connected:
                self.errors += len(failed)
                while True:
                    try:
                        client = await self._connect()
                        break
                    except Exception:
                        await asyncio.sleep(0.3)  # a device's pause between reconnects
                still += [(t, b, self._publish(client, t, b, dup=True)) for t, b in failed]
            pending = still
            if not block or not pending:
                return client, pending
            # until a PUBACK (or a lost connection) settles one; the timeout re-checks the
            # connection, whose loss may leave futures pending
            await asyncio.wait([f for _, _, f in pending], timeout=0.5,
                               return_when=asyncio.FIRST_COMPLETED)
