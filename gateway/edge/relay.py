"""The edge relay: device messages from one Mosquitto broker into JetStream, valve commands
from JetStream to that broker. Stateless: any number of instances, one per broker or more.

Uplink, for each PUBLISH the broker delivers (QoS 1, persistent session):
1. the topic names the device (the broker's ACL tied it to the publishing account);
2. the device's building partition comes from the registry (gateway.edge.partition_map);
   an unknown device, a bad topic or an oversized payload is counted and dropped, with a
   one-line reason, as the gateway does;
3. the payload goes unchanged to `gas.in.<partition>` with the headers of
   gateway.protocol.log_subjects, and is acknowledged to the broker (PUBACK, in arrival
   order) only after JetStream's publish ack, i.e. once the stream's replicas have it.
A publish that fails (a node or leader lost) is sent again with the same Nats-Msg-Id until
it is confirmed, so the stream's duplicate window absorbs a resend that had in fact landed.
If the relay dies, the broker redelivers everything it had not acknowledged, to the next
relay on the same account: again the same message ids.

Downlink: every relay subscribes to `gas.cmd.>` and publishes each command on the meter's
`cmd` topic (QoS 1). The broker without the meter's session has no subscriber for it and
drops it; the meter deduplicates a repeated `cmd_id` (protocol v1). A command sent as a
request is answered with the relay's edge name once its broker has accepted it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.edge.metrics import RelayMetrics
from gateway.edge.partition_map import PartitionMap
from gateway.edge_settings import EdgeSettings
from gateway.protocol.log_subjects import (
    COMMAND_PREFIX,
    HEADER_EDGE,
    HEADER_MSG_ID,
    HEADER_RECEIVED,
    HEADER_TOPIC,
    STREAM,
    inbound_subject,
)
from gateway.protocol.messages import (
    DEVICE_CHANNELS,
    DEVICE_ID_RE,
    MAX_PAYLOAD_BYTES,
    Channel,
    Rejected,
    RejectReason,
    parse_topic,
    topic,
)
from gateway.protocol.packets import Message, MqttError
from gateway.service.mqtt_client import ClientConfig, MqttClient

logger = logging.getLogger(__name__)

RETRY_PAUSE_S = (0.1, 0.25, 0.5, 1.0)  # between resends of unconfirmed publishes
RECONNECT_PAUSE_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # between broker connection attempts
LOGGED_REJECTS = 200  # one line each for the first ones, then every 1000th
RESEND_LOG_EVERY_S = 5.0  # resends during an election come in thousands: one line at most


def message_id(topic_name: str, payload: bytes) -> str:
    """Nats-Msg-Id: `<topic>:<sha1 of the payload, 16 hex>` (log_subjects.HEADER_MSG_ID)."""
    return f"{topic_name}:{hashlib.sha1(payload).hexdigest()[:16]}"


@dataclass
class _Batch:
    """One socket read's messages: acknowledged together, after every earlier batch."""

    generation: int
    packet_ids: list[int]
    done: bool = False
    items: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)


class Relay:
    """Runs until `stopping` is set; `run` returns after a clean disconnect."""

    def __init__(
        self, edge: EdgeSettings, dsn: str, prefix: str, metrics: RelayMetrics | None = None
    ) -> None:
        self.edge = edge
        self.prefix = prefix
        self.metrics = metrics or RelayMetrics()
        self.map = PartitionMap(dsn, edge.registry_refresh_s, self.metrics.devices.set)
        self.client: MqttClient | None = None
        self.generation = 0
        self.pending: deque[_Batch] = deque()
        self.js: Any = None
        self.nc: Any = None
        self._rejects = 0
        self._resend_logged_at = -RESEND_LOG_EVERY_S
        self._nats_logged_at = -RESEND_LOG_EVERY_S * 6
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- lifecycle
    async def run(self, stopping: asyncio.Event) -> None:
        import nats

        await self._first_map(stopping)
        if stopping.is_set():
            return
        self.nc = await nats.connect(
            servers=self.edge.nats_urls,
            name=f"relay-{self.edge.name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=5,
            disconnected_cb=self._nats_down,
            reconnected_cb=self._nats_up,
            error_cb=self._nats_error,
        )
        # every message in flight has its confirm pending at once: never wait for a slot
        self.js = self.nc.jetstream(
            timeout=self.edge.publish_timeout_s,
            publish_async_max_pending=4 * self.edge.max_unacked,
        )
        await self._check_stream()
        await self.nc.subscribe(f"{COMMAND_PREFIX}.>", cb=self._on_command)
        watch = asyncio.create_task(self.map.watch(stopping))
        try:
            await self._broker_loop(stopping)
        finally:
            watch.cancel()
            if self.client is not None:
                await self._drain_acks(5.0)
                self.client.close()
            await self.nc.drain()
            logger.info("relay stopped %s", self.metrics.summary())

    async def _check_stream(self) -> None:
        """Say so at once when the stream is missing (publishes are resent until it exists)."""
        from nats.js.errors import NotFoundError

        try:
            await self.js.stream_info(STREAM)
        except NotFoundError:
            logger.error(
                "relay %s: the log has no stream %s; messages wait in the broker until it is"
                " created (`gas-safety stack up --cluster`, or docs/cluster.md)",
                self.edge.name,
                STREAM,
            )
        except Exception as err:  # the log is electing or away: the resends will tell
            logger.warning("relay %s: cannot check stream %s (%s)", self.edge.name, STREAM, err)

    async def _first_map(self, stopping: asyncio.Event) -> None:
        """The map before the broker: without it every message would be dropped as unknown."""
        import psycopg

        attempt = 0
        while not stopping.is_set():
            try:
                await self.map.reload()
                logger.info("partition map loaded devices=%d", len(self.map.partitions))
                return
            except psycopg.Error as err:
                (logger.warning if attempt % 12 == 0 else logger.debug)(
                    "partition map: cannot read the registry (%s); retrying",
                    (str(err).strip().splitlines() or ["error"])[0][:200],
                )
                attempt += 1
                await _pause(stopping, RECONNECT_PAUSE_S, attempt)

    async def _broker_loop(self, stopping: asyncio.Event) -> None:
        e = self.edge
        attempt = 0
        while not stopping.is_set():
            config = ClientConfig(
                host=e.mqtt_host,
                port=e.mqtt_port,
                client_id=e.username,
                username=e.username,
                password=e.password.get_secret_value(),
                clean_session=False,
                subscriptions=[(f"{self.prefix}/+/{ch}", 1) for ch in sorted(DEVICE_CHANNELS)],
                max_unacked=e.max_unacked,
            )
            self.generation += 1
            try:
                client = await MqttClient.connect(config, self._on_batch, self.generation)
            except (OSError, MqttError, TimeoutError) as err:
                self._forget_connection()  # anything it delivered comes again
                attempt += 1
                (logger.warning if attempt in (1, 10) else logger.debug)(
                    "broker %s:%d unavailable (%s); retrying", e.mqtt_host, e.mqtt_port, err
                )
                await _pause(stopping, RECONNECT_PAUSE_S, attempt)
                continue
            attempt = 0
            self.client = client
            self._ack_ready()  # what it redelivered during the handshake
            self.metrics.broker_up.set(1)
            logger.info("relay %s connected to broker %s:%d", e.name, e.mqtt_host, e.mqtt_port)
            assert client.closed is not None
            closed: asyncio.Future[Any] = client.closed
            stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({stop, closed}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            self.metrics.broker_up.set(0)
            if not stopping.is_set():
                logger.warning(
                    "relay %s lost its broker; reconnecting (the broker redelivers"
                    " what was not acknowledged)",
                    e.name,
                )
                self._forget_connection()

    def _forget_connection(self) -> None:
        """Acks are per connection: what the old one received comes again from the broker."""
        self.client = None
        self.pending.clear()
        self.metrics.unacked.set(0)

    async def _drain_acks(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- uplink
    def _on_batch(self, messages: list[Message]) -> None:
        batch = _Batch(self.generation, [m.packet_id for m in messages if m.qos])
        now = f"{time.time():.6f}"
        for m in messages:
            item = self._route(m, now)
            if item is not None:
                batch.items.append(item)
        self.metrics.received.inc(len(messages))
        self.pending.append(batch)
        self.metrics.unacked.inc(len(batch.packet_ids))
        if batch.items:
            task = asyncio.get_running_loop().create_task(self._publish(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            batch.done = True
            self._ack_ready()

    def _route(self, m: Message, received: str) -> tuple[str, bytes, dict[str, str]] | None:
        """The subject and headers of a message, or None (counted) when it is dropped."""
        try:
            t = parse_topic(m.topic, self.prefix)
            if t.channel not in DEVICE_CHANNELS:
                raise Rejected(
                    RejectReason.UNKNOWN_CHANNEL,
                    f"{t.channel} is not a device's uplink",
                    t.device_id,
                )
            if len(m.payload) > MAX_PAYLOAD_BYTES:
                raise Rejected(
                    RejectReason.OVERSIZED,
                    f"{len(m.payload)} bytes, above {MAX_PAYLOAD_BYTES}",
                    t.device_id,
                )
            partition = self.map.get(t.device_id)
            if partition is None:
                raise Rejected(
                    RejectReason.UNKNOWN_DEVICE,
                    f"device {t.device_id!r} is not in the registry",
                    t.device_id,
                )
        except Rejected as rej:
            self._reject(m.topic, rej)
            return None
        headers = {
            HEADER_TOPIC: m.topic,
            HEADER_RECEIVED: received,
            HEADER_EDGE: self.edge.name,
            HEADER_MSG_ID: message_id(m.topic, m.payload),
        }
        return inbound_subject(partition), m.payload, headers

    def _reject(self, topic_name: str, rej: Rejected) -> None:
        self.metrics.rejects.labels(rej.reason.value).inc()
        self._rejects += 1
        if self._rejects <= LOGGED_REJECTS or self._rejects % 1000 == 0:
            logger.warning(
                "relay dropped %s: %s: %s (dropped so far: %d)",
                topic_name[:120],
                rej.reason.value,
                rej.detail,
                self._rejects,
            )

    async def _publish(self, batch: _Batch) -> None:
        """Publish until JetStream confirms every item (resends keep their message ids)."""
        remaining = batch.items
        attempt = 0
        while remaining:
            futures, first_error = [], None
            for subject, payload, headers in remaining:
                try:
                    futures.append(await self.js.publish_async(subject, payload, headers=headers))
                except Exception as err:  # not connected, buffer full: resent below
                    first_error = first_error or err
                    futures.append(None)
            live = [f for f in futures if f is not None]
            wait_s = self.edge.publish_timeout_s
            if attempt:
                wait_s = min(wait_s, self.edge.resend_timeout_s)
            if live:
                _, late = await asyncio.wait(live, timeout=wait_s)
                for f in late:
                    f.cancel()  # no answer in time: resent below, same message id
            failed = []
            for item, fut in zip(remaining, futures, strict=True):
                if fut is None or fut.cancelled() or fut.exception() is not None:
                    failed.append(item)
                    if fut is not None and not fut.cancelled():
                        first_error = first_error or fut.exception()
                elif fut.result().duplicate:
                    self.metrics.duplicates.inc()
                else:
                    self.metrics.relayed.inc()
            if not failed:
                break
            if batch.generation != self.generation:
                break  # that connection is gone: its broker redelivers all of it
            attempt += 1
            self.metrics.resent.inc(len(failed))
            now = time.monotonic()
            loud = now - self._resend_logged_at >= RESEND_LOG_EVERY_S
            if loud:
                self._resend_logged_at = now
            (logger.warning if loud else logger.debug)(
                "log publish not confirmed (%d of %d: %s); resending (resent so far: %d)",
                len(failed),
                len(remaining),
                type(first_error).__name__ if first_error else "no answer in time",
                self.metrics.value("gas_relay_resent_total"),
            )
            await asyncio.sleep(RETRY_PAUSE_S[min(attempt, len(RETRY_PAUSE_S)) - 1])
            remaining = failed
        batch.done = True
        batch.items = []
        self._ack_ready()

    def _ack_ready(self) -> None:
        """PUBACK, in arrival order, every batch whose earlier batches are confirmed too.

        A broker redelivers a session's messages right after CONNACK, before the client is
        handed over: their acks wait until it is (the broker loop calls this again then)."""
        client = self.client
        ours = client is not None and client.generation == self.generation
        ids: list[int] = []
        while self.pending and self.pending[0].done:
            if self.pending[0].generation != self.generation:
                self.pending.popleft()  # an earlier connection's: never acknowledged
            elif not ours:
                return
            else:
                ids.extend(self.pending.popleft().packet_ids)
        if ids and client is not None:
            client.ack(ids)
            self.metrics.acked.inc(len(ids))
            self.metrics.unacked.dec(len(ids))

    # ---------------------------------------------------------------- downlink
    async def _on_command(self, msg: Any) -> None:
        meter = msg.subject[len(COMMAND_PREFIX) + 1 :]
        if not DEVICE_ID_RE.fullmatch(meter):
            self.metrics.commands.labels("bad_subject").inc()
            logger.warning("relay dropped command on %s: not a meter id", msg.subject[:120])
            return
        client = self.client
        if client is None or not client.connected:
            self.metrics.commands.labels("no_broker").inc()
            logger.warning(
                "relay %s: command for %s not sent: broker unavailable", self.edge.name, meter
            )
            return
        accepted = client.publish(topic(meter, Channel.CMD, self.prefix), msg.data, qos=1)
        self.metrics.commands.labels("sent").inc()
        if msg.reply:
            try:
                await asyncio.wait_for(accepted, self.edge.publish_timeout_s)
                await msg.respond(self.edge.name.encode())
            except (MqttError, TimeoutError, OSError):
                pass
        else:
            accepted.add_done_callback(_consume_exception)

    # ---------------------------------------------------------------- NATS connection
    async def _nats_down(self) -> None:
        self.metrics.log_up.set(0)
        logger.warning("relay %s: log connection lost; reconnecting", self.edge.name)

    async def _nats_up(self) -> None:
        self.metrics.log_up.set(1)
        logger.info(
            "relay %s: log reconnected to %s",
            self.edge.name,
            self.nc.connected_url.netloc if self.nc and self.nc.connected_url else "?",
        )

    async def _nats_error(self, err: Exception) -> None:
        now = time.monotonic()
        loud = now - self._nats_logged_at >= RESEND_LOG_EVERY_S * 6
        if loud:
            self._nats_logged_at = now
        (logger.warning if loud else logger.debug)(
            "relay %s: log connection: %s: %s (retrying)",
            self.edge.name,
            type(err).__name__,
            str(err)[:200],
        )


def _consume_exception(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # a command lost with its connection: the gateway resends it


async def _pause(stopping: asyncio.Event, pauses: tuple[float, ...], attempt: int) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), pauses[min(attempt, len(pauses)) - 1])
