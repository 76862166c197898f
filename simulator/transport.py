"""How simulated devices reach the broker: one connection each, or multiplexed over bridges.

- `PerDeviceTransport`: every device its own MQTT connection with its own credentials
  (client id = username = device id), a last will `{"online": false}` retained on its status
  topic and a retained online status; meters subscribe to their own `cmd` topic. Realistic,
  practical for a few thousand devices.
- `BridgeTransport`: devices multiplexed over the `fleet-bridge-N` service accounts, like an
  NB-IoT network server; the first bridge subscribes to `{prefix}/+/cmd` and routes commands
  to the meters. The only way to reach tens of thousands of devices from one machine.

Both call `on_command(meter_index, message, received_at)` for a command addressed to a
simulated meter, and take payloads for devices by (kind, index).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable

from gateway import accounts, protocol
from gateway.ops.stack import Runtime
from simulator import wire
from simulator.fleet import Fleet
from simulator.link import Link, LinkError

logger = logging.getLogger(__name__)

METER, DETECTOR = 0, 1
CommandSink = Callable[[int, wire.Message, float], None]


class Transport:
    fleet: Fleet
    links: list[Link]

    async def start(self, on_command: CommandSink) -> None:
        raise NotImplementedError

    def link_for(self, kind: int, i: int) -> Link:
        raise NotImplementedError

    def ghost_link(self) -> Link:
        raise NotImplementedError

    def publish(
        self, kind: int, i: int, topic: bytes, payload: bytes, retain: bool = False
    ) -> float:
        """Publish for a device now; returns the wall time of the socket write."""
        self.link_for(kind, i).publish(topic, payload, 1, retain)
        return time.time()

    def drop(self, kind: int, i: int) -> None:
        """The device dies without a goodbye (per-device mode: its last will fires)."""

    @property
    def sent(self) -> int:
        return sum(lk.stats.sent for lk in self.links)

    @property
    def acked(self) -> int:
        return sum(lk.stats.acked for lk in self.links)

    @property
    def inflight(self) -> int:
        return sum(len(lk.inflight) for lk in self.links)

    async def wait_acked(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for lk in self.links:
            if lk.connected and not await lk.wait_acked(max(0.0, deadline - time.monotonic())):
                return False
        return True

    async def close(self) -> None:
        await asyncio.gather(
            *(lk.disconnect() for lk in self.links if not lk.closing), return_exceptions=True
        )


def command_router(fleet: Fleet, on_command: CommandSink) -> Callable[[wire.Message], None]:
    plen = len(fleet.prefix) + 1

    def route(msg: wire.Message) -> None:
        now = time.time()
        device, _, channel = msg.topic[plen:].rpartition("/")
        if channel != "cmd":
            return
        h = fleet.meter_index.get(device)
        if h is not None:  # commands for other fleets on the same broker are not ours
            on_command(h, msg, now)

    return route


class BridgeTransport(Transport):
    def __init__(
        self,
        fleet: Fleet,
        host: str,
        port: int,
        rt: Runtime,
        bridges: tuple[int, ...] = (0,),
        subscribe: bool = True,
    ) -> None:
        self.fleet = fleet
        self.host, self.port = host, port
        self.rt = rt
        self.bridges = bridges
        self.subscribe = subscribe
        self.links = []

    async def start(self, on_command: CommandSink) -> None:
        route = command_router(self.fleet, on_command)
        for n, b in enumerate(self.bridges):
            name = f"{accounts.BRIDGE_PREFIX}{b}"
            link = Link(
                self.host,
                self.port,
                name,
                name,
                accounts.service_password_from_key(self.rt.fleet_key, name),
                on_message=route if n == 0 else None,
                reconnect=True,
                keepalive_s=30,
            )
            await link.connect()
            if n == 0 and self.subscribe:
                granted = await link.subscribe([(f"{self.fleet.prefix}/+/cmd", 1)])
                if granted[:1] == b"\x80":
                    raise LinkError(name, "subscription to commands refused")
            self.links.append(link)

    def link_for(self, kind: int, i: int) -> Link:
        h = i if kind == METER else int(self.fleet.detector_household[i])
        return self.links[h % len(self.links)]  # a household's devices keep one order

    def ghost_link(self) -> Link:
        return self.links[-1]


class PerDeviceTransport(Transport):
    def __init__(
        self,
        fleet: Fleet,
        host: str,
        port: int,
        fleet_key: str,
        rt: Runtime,
        firmware: str = "1.4.2",
        connect_concurrency: int = 100,
    ) -> None:
        self.fleet = fleet
        self.host, self.port = host, port
        self.fleet_key = fleet_key
        self.rt = rt
        self.firmware = firmware
        self.concurrency = connect_concurrency
        self.meter_links: list[Link] = []
        self.detector_links: list[Link] = []
        self.links = []
        self._ghost: Link | None = None
        self.refused: list[str] = []

    async def start(self, on_command: CommandSink) -> None:
        _raise_fd_limit(self.fleet.devices + 64)
        f = self.fleet
        sem = asyncio.Semaphore(self.concurrency)
        route = command_router(f, on_command)

        def make(device: str, model: str) -> Link:
            status = protocol.topic(device, "status", f.prefix)
            return Link(
                self.host,
                self.port,
                device,
                device,
                accounts.derive_password(self.fleet_key, device),
                will=(status, b'{"online":false}', 1, True),
                on_message=route,
                keepalive_s=60,
                max_inflight=1000,
            )

        self.meter_links = [make(d, m) for d, m in zip(f.meter_ids, f.meter_models, strict=False)]
        self.detector_links = [
            make(d, m) for d, m in zip(f.detector_ids, f.detector_models, strict=False)
        ]
        self.links = [*self.meter_links, *self.detector_links]
        models = [*f.meter_models, *f.detector_models]

        async def up(i: int, link: Link) -> None:
            async with sem:
                try:
                    await link.connect()
                except LinkError as err:
                    self.refused.append(str(err))
                    return
                if i < f.households:
                    await link.subscribe([(protocol.topic(link.client_id, "cmd", f.prefix), 1)])
                status = b'{"online":true,"fw":"%s","model":"%s"}' % (
                    self.firmware.encode(),
                    models[i].encode(),
                )
                link.publish(
                    protocol.topic(link.client_id, "status", f.prefix).encode(),
                    status,
                    1,
                    retain=True,
                )

        await asyncio.gather(*(up(i, lk) for i, lk in enumerate(self.links)))
        if self.refused:
            raise LinkError(
                self.refused[0].split(":")[0],
                f"{len(self.refused)} devices refused, first: {self.refused[0]}",
            )
        # Unknown device ids cannot log in; a fleet bridge publishes them, as a network
        # server forwarding a stranger's uplink would.
        name = f"{accounts.BRIDGE_PREFIX}7"
        self._ghost = Link(
            self.host,
            self.port,
            name,
            name,
            accounts.service_password_from_key(self.rt.fleet_key, name),
        )
        await self._ghost.connect()
        self.links.append(self._ghost)

    def link_for(self, kind: int, i: int) -> Link:
        return (self.meter_links if kind == METER else self.detector_links)[i]

    def ghost_link(self) -> Link:
        assert self._ghost is not None
        return self._ghost

    def drop(self, kind: int, i: int) -> None:
        self.link_for(kind, i).abort()


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new = hard if hard == resource.RLIM_INFINITY else min(hard, max(need, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < need:
            logger.warning("only %d file descriptors for %d connections", new, need)
