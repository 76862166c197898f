"""The gateway's MQTT connections, each kept up by one reconnect loop (`Link.run`).

Two connections, one loop: the ingest connection (persistent session, subscribed to the
devices' telemetry, events, status and acks; QoS 1 messages acknowledged after COMMIT) and
the command connection (its own account that may only write commands, clean session).
While the command connection is down, commands go out on the ingest one (`Links.publish`);
while both are down a command stays open in the book and is resent on its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import Gauge

from gateway.protocol.packets import Lookahead, Message, MqttError
from gateway.service.mqtt_client import ClientConfig, MqttClient
from gateway.settings import MqttSettings

logger = logging.getLogger(__name__)

FIRST_DELAY_S = 0.2  # the first reconnect pause; it doubles up to a link's max_delay_s


def ingest_config(s: MqttSettings) -> ClientConfig:
    p = s.topic_prefix
    return ClientConfig(
        host=s.host,
        port=s.port,
        client_id=s.client_id,
        username=s.username,
        password=s.password.get_secret_value() or None,
        keepalive_s=s.keepalive_s,
        clean_session=False,
        max_unacked=s.max_unacked,
        subscriptions=[(f"{p}/+/{c}", 1) for c in ("telemetry", "event", "status", "ack")],
    )


def command_config(s: MqttSettings) -> ClientConfig | None:
    """The command connection's, or None when no command account is configured."""
    password = s.command_password.get_secret_value()
    if not password:
        return None
    return ClientConfig(
        host=s.host,
        port=s.port,
        client_id=s.client_id + "-cmd",
        username=s.command_username,
        password=password,
        keepalive_s=s.keepalive_s,
        clean_session=True,
    )


def _ignore(messages: list[Message]) -> None:
    """The command connection subscribes to nothing."""


class Link:
    """One connection to the broker, reconnected with a growing pause until `stopping`.

    `before_connect` runs before each attempt and returns the generation the new connection
    reads under (the ingest link closes what the last connection read there first).
    """

    def __init__(
        self,
        name: str,
        config: ClientConfig,
        stopping: asyncio.Event,
        gauge: Gauge,
        max_delay_s: float,
        *,
        on_batch: Callable[[list[Message]], None] = _ignore,
        lookahead: Lookahead | None = None,
        before_connect: Callable[[], int] | None = None,
        while_down: str = "",
    ) -> None:
        self.name = name
        self.config = config
        self.stopping = stopping
        self.gauge = gauge
        self.max_delay_s = max_delay_s
        self.on_batch = on_batch
        self.lookahead = lookahead
        self.before_connect = before_connect
        self.while_down = while_down  # said in the log when the link is lost
        self.client: MqttClient | None = None
        # True while another link's log lines already say the broker is away: this link's
        # failures then go to DEBUG, so an outage logs one line per retry, not one per link
        self.quiet: Callable[[], bool] = lambda: False
        self.failures = 0  # connection attempts failed in a row

    @property
    def up(self) -> bool:
        return self.client is not None and self.client.connected

    @property
    def broker(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    async def run(self) -> None:
        c = self.config
        delay = FIRST_DELAY_S
        while not self.stopping.is_set():
            generation = self.before_connect() if self.before_connect is not None else 0
            try:
                self.client = await MqttClient.connect(
                    c, self.on_batch, generation=generation, lookahead=self.lookahead
                )
                logger.info(
                    "mqtt %s connection up broker=%s user=%s%s",
                    self.name,
                    self.broker,
                    c.username,
                    f" after {self.failures} failed attempt(s)" if self.failures else "",
                )
                self.failures = 0
                self.gauge.set(1)
                delay = FIRST_DELAY_S
                if await self._until_lost(self.client):
                    return
                logger.warning(
                    "mqtt %s connection to %s lost; reconnecting%s",
                    self.name,
                    self.broker,
                    self.while_down,
                )
            except (TimeoutError, OSError, MqttError) as err:
                self.failures += 1
                logger.log(
                    logging.DEBUG if self.quiet() else logging.WARNING,
                    "mqtt %s connect to %s as %s failed (%s); attempt %d, next in %.1fs%s",
                    self.name,
                    self.broker,
                    c.username,
                    str(err) or type(err).__name__,
                    self.failures,
                    delay,
                    self.while_down,
                )
            self.gauge.set(0)
            self.client = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            delay = min(delay * 2, self.max_delay_s)

    async def _until_lost(self, client: MqttClient) -> bool:
        """Wait until the connection closes or the service stops; True when stopping."""
        assert client.closed is not None
        stop = asyncio.ensure_future(self.stopping.wait())
        waiters: list[asyncio.Future[Any]] = [client.closed, stop]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        return self.stopping.is_set()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class Links:
    """The ingest link and, when configured, the command link; commands go out on the
    command link when it is up, else on the ingest link."""

    def __init__(self, ingest: Link, command: Link | None) -> None:
        self.ingest = ingest
        self.command = command
        if command is not None:
            # both on one broker: while ingest is down too, its lines say so
            command.quiet = lambda: not ingest.up and ingest.failures > 0

    def publish(self, topic: str, payload: bytes) -> None:
        for link in (self.command, self.ingest):
            if link is not None and link.client is not None and link.client.connected:
                link.client.publish(topic, payload, qos=1)
                return
        # Not lost: the command stays open in the book and is resent on its deadline.
        logger.warning("broker away; command to %s will be resent", topic)

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        """The reconnect loops to run."""
        return [link.run() for link in (self.ingest, self.command) if link is not None]

    def close(self) -> None:
        for link in (self.ingest, self.command):
            if link is not None:
                link.close()
