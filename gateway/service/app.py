"""The gateway service: runs the pipeline (gateway.pipeline.gateway) against the real
broker and database. Startup (registry, open alarms and commands), the MQTT links and their
reconnects, draining socket reads into the pipeline a slice per loop turn, the writer and
its acknowledgements, the ticker, LISTEN for registry changes and operators' commands, the
notifier, metrics and signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import psycopg

from gateway.core.registry import LOAD_SQL
from gateway.core.response import CommandState, ValveCommand
from gateway.pipeline.gateway import Gateway
from gateway.protocol.packets import Lookahead, Message, MqttError
from gateway.service.mqtt_client import ClientConfig, MqttClient
from gateway.service.priority import set_thread_priority
from gateway.settings import Settings
from gateway.storage import copy_format
from gateway.storage.device_state import StateWriter
from gateway.storage.rows import (
    Batch,
)
from gateway.storage.writer import Writer
from gateway.storage.writer_process import WriterConfig, WriterProcess

logger = logging.getLogger(__name__)


class GatewayService:
    """Runs a Gateway against the real broker and database until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gw = Gateway(settings)
        # instant leaks are cut as their read arrives, from framed PUBLISHes only
        self.lookahead = Lookahead(marks=self.gw.instant_marks, deliver=self.gw.triage)
        self.client: MqttClient | None = None
        self.cmd_client: MqttClient | None = None  # valve commands only
        self.loop: asyncio.AbstractEventLoop | None = None
        self.writer: Writer | WriterProcess | None = None
        self._stopping = asyncio.Event()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._pending: deque[list[Message]] = deque()  # read, not yet judged
        self._draining = False

    # -------------------------------------------------------------- startup
    async def _load(self) -> None:
        dsn = self.settings.db.dsn
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=5) as conn:
                    rows = await (await conn.execute(LOAD_SQL, ([],))).fetchall()
                    n = self.gw.load_devices(rows)
                    alarms = await (await conn.execute(
                        "SELECT device_id, kind FROM alarms WHERE cleared_at IS NULL")).fetchall()
                    cmds = await (await conn.execute(
                        "SELECT cmd_id, meter_id, household_id, action, reason, requested_by,"
                        " extract(epoch FROM issued_at), attempts, state FROM valve_commands"
                        " WHERE state IN ('issued', 'sent')")).fetchall()
                break
            except psycopg.OperationalError as err:
                logger.warning("database not reachable at start (%s); retrying",
                               str(err).strip()[:200])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
        now = time.time()
        open_cmds = [ValveCommand(cmd_id=c[0], meter_id=c[1], household_id=c[2], action=c[3],
                                  reason=c[4], requested_by=c[5], issued_at=float(c[6]),
                                  attempts=c[7], state=CommandState.SENT, deadline=now)
                     for c in cmds if c[1] in self.gw.registry.index]
        self.gw.restore([(a[0], a[1]) for a in alarms], open_cmds)
        logger.info("registry loaded devices=%d open_alarms=%d open_commands=%d", n,
                    len(alarms), len(open_cmds))

    async def _refresh_registry(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.settings.db.dsn) as conn:
            rows = await (await conn.execute(LOAD_SQL, (self.gw.registry.ids,))).fetchall()
        n = self.gw.load_devices(rows)
        if n:
            logger.info("registry refreshed new_devices=%d total=%d", n, len(self.gw.registry))

    # -------------------------------------------------------------- batching
    def _on_batch(self, messages: list[Message]) -> None:
        """A socket read: instant leaks are cut now, the rest queues for `_drain`.

        Judging is done in slices, one per event-loop turn, so the socket keeps being read
        while a backlog is judged: a leak arriving behind thousands of readings is seen
        (and, if instant, cut) within one slice's time, not after the whole backlog.
        """
        # every reading that lay whole in one socket read was looked into as the read
        # arrived (`instant_marks`); only the first can have been cut in two by the reads
        self.gw.triage(messages[:1])
        self._pending.append(messages)
        self._kick_drain()

    def _kick_drain(self) -> None:
        if self._pending and not self._draining and self.loop is not None:
            self._draining = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        pending = self._pending
        if not pending or self.gw.applying:
            # judged already (_drain_all), or a sweep's effects are half applied: the ticker
            # kicks the drain again when they are (judging now would finish them in one go)
            self._draining = False
            return
        step = self.settings.mqtt.judge_slice
        chunk = pending[0]
        if len(chunk) > step:
            part, pending[0] = chunk[:step], chunk[step:]
        else:
            part = pending.popleft()
        t0 = time.perf_counter()
        self.gw.handle(part)
        self.gw.metrics.handle_seconds.observe(time.perf_counter() - t0)
        if pending and self.loop is not None:
            self.loop.call_soon(self._drain)
        else:
            self._draining = False
        if (self.gw.batch.rows or self.gw.batch.packet_ids) and self._flush_handle is None \
                and self.loop is not None:
            self._flush_handle = self.loop.call_later(self.settings.db.batch_max_s, self._flush)

    def _drain_all(self) -> None:
        while self._pending:
            self.gw.handle(self._pending.popleft())

    def _flush(self) -> None:
        self._flush_handle = None
        self.gw.flush()

    def _submit(self, batch: Batch) -> None:
        assert self.writer is not None
        self.writer.submit(batch)
        self.gw.metrics.buffer_rows.set(self.writer.pending_rows)

    def _committed(self, batch: Batch) -> None:  # writer thread
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._ack, batch)

    def _ack(self, batch: Batch) -> None:
        m = self.gw.metrics
        if self.writer is not None:
            m.buffer_rows.set(self.writer.pending_rows)
            m.writer_lag.set(self.writer.last_commit_lag_s)
            m.stored.inc(len(batch.detector or ()) + len(batch.meter or ()))
            m.duplicates.set(self.writer.duplicates_absorbed)
        client = self.client
        if batch.packet_ids and client is not None and client.connected \
                and batch.generation == client.generation:
            client.ack(batch.packet_ids)

    def _publish(self, topic: str, payload: bytes) -> None:
        cmd = self.cmd_client
        if cmd is not None and cmd.connected:
            cmd.publish(topic, payload, qos=1)
            return
        client = self.client
        if client is None or not client.connected:
            # Not lost: the command stays open in the book and is resent on its deadline.
            logger.warning("broker away; command to %s will be resent", topic)
            return
        client.publish(topic, payload, qos=1)

    # -------------------------------------------------------------- tasks
    async def _mqtt_loop(self) -> None:
        s = self.settings.mqtt
        p = s.topic_prefix
        config = ClientConfig(
            host=s.host, port=s.port, client_id=s.client_id, username=s.username,
            password=s.password.get_secret_value() or None, keepalive_s=s.keepalive_s,
            clean_session=False, max_unacked=s.max_unacked,
            subscriptions=[(f"{p}/+/{c}", 1) for c in ("telemetry", "event", "status", "ack")])
        delay = 0.2
        while not self._stopping.is_set():
            # what the last connection delivered is judged and closed under its generation
            # (acks of one connection never go out on the next)
            self._drain_all()
            self.gw.flush()
            self.gw.generation += 1
            try:
                self.client = await MqttClient.connect(config, self._on_batch,
                                                       generation=self.gw.generation,
                                                       lookahead=self.lookahead)
                logger.info("connected to mqtt %s:%d as %s", s.host, s.port, s.username)
                self.gw.metrics.mqtt_connected.set(1)
                delay = 0.2
                assert self.client.closed is not None
                stop = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait([self.client.closed, stop], return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if self._stopping.is_set():
                    return
                logger.warning("mqtt connection lost; reconnecting")
            except (TimeoutError, OSError, MqttError) as err:
                logger.warning("mqtt connect failed (%s); retrying in %.1fs", err, delay)
            self.gw.metrics.mqtt_connected.set(0)
            self.client = None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, 5.0)

    async def _command_link(self) -> None:
        """The commands' own connection; while it is down, commands use the ingest one."""
        s = self.settings.mqtt
        password = s.command_password.get_secret_value()
        if not password:
            return
        config = ClientConfig(host=s.host, port=s.port, client_id=s.client_id + "-cmd",
                              username=s.command_username, password=password,
                              keepalive_s=s.keepalive_s, clean_session=True)
        delay = 0.2
        while not self._stopping.is_set():
            try:
                self.cmd_client = await MqttClient.connect(config, lambda msgs: None)
                logger.info("command connection up as %s", s.command_username)
                self.gw.metrics.command_link.set(1)
                delay = 0.2
                assert self.cmd_client.closed is not None
                stop = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait([self.cmd_client.closed, stop],
                                   return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if self._stopping.is_set():
                    return
                logger.warning("command connection lost; commands use the ingest connection")
            except (TimeoutError, OSError, MqttError) as err:
                logger.warning("command connection failed (%s); commands use the ingest"
                               " connection; retrying in %.0fs", err, delay)
            self.cmd_client = None
            self.gw.metrics.command_link.set(0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, 30.0)

    async def _ticker(self) -> None:
        interval = self.settings.detection.sweep_interval_s
        last_young = last_full = time.monotonic()
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            try:
                for applying in self.gw.tick_in_parts():
                    if not applying:
                        self._kick_drain()
                    await asyncio.sleep(0)  # reads and instant leaks go first
            finally:  # cancelled half way: what the sweep raised is still applied
                self.gw.finish_apply()
            self._kick_drain()
            self.gw.flush()
            now = time.monotonic()
            # cycles are rare on the hot path (a rejected payload's traceback); young ones
            # are cheap if collected often: after 5 s of a new fleet's first readings (each
            # device's first route cached) one collection took 8.5 ms of the loop
            if now - last_young >= 1.0:
                last_young = now
                gc.collect(1)
            if now - last_full >= 600.0:
                last_full = now
                gc.collect()
            if self.writer is not None:
                m = self.gw.metrics
                m.db_up.set(1 if self.writer.db_up else 0)
                if isinstance(self.writer, WriterProcess):
                    m.writer_restarts.set(self.writer.restarts)
                m.open_commands.set(len(self.gw.book.open))
                if self.client is not None:
                    m.unacked.set(self.client.unacked)

    async def _loop_watch(self) -> None:
        """Samples how long the event loop keeps a due callback waiting (gas_loop_lag)."""
        period = 0.01
        observe = self.gw.metrics.loop_lag.observe
        while not self._stopping.is_set():
            t = time.perf_counter()
            await asyncio.sleep(period)
            observe(max(0.0, time.perf_counter() - t - period))

    async def _device_state_loop(self) -> None:
        """Every few seconds, each device's latest values to device_state (the fleet view)."""
        writer = None if isinstance(self.writer, WriterProcess) else \
            StateWriter(self.settings.db.dsn, self.gw.registry)
        latest = self.gw.latest
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.db.state_interval_s)
            # in slices: short transactions, and no long GIL-holding NumPy call (a whole
            # city's changes would otherwise be built at once)
            while changes := latest.take(limit=copy_format.CHUNK_ROWS):
                if writer is None:  # in the writer process: no Python thread beside the loop
                    assert isinstance(self.writer, WriterProcess)
                    ok = await self.writer.write_state(changes)
                else:
                    ok = await asyncio.to_thread(writer.write, changes)
                if not ok:
                    latest.give_back(changes)
                    logger.debug("device_state not written (database away); next round")
                    break

    async def _listener(self) -> None:
        """Registry changes and operators' valve commands, from PostgreSQL NOTIFY."""
        dsn = self.settings.db.dsn
        failing = False
        while not self._stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listen, \
                        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as query:
                    await listen.execute("LISTEN gas_registry")
                    await listen.execute("LISTEN gas_commands")
                    failing = False
                    await self._pick_up_operator_commands(query)
                    # the notifies generator holds its connection: queries use the other one
                    async for note in listen.notifies():
                        if note.channel == "gas_registry":
                            await self._refresh_registry()
                        elif note.channel == "gas_commands":
                            await self._pick_up_operator_commands(query)
            except psycopg.OperationalError as err:
                # once per outage: the writer reports the outage itself
                (logger.debug if failing else logger.warning)(
                    "listener lost the database (%s); retrying", str(err).strip()[:200])
                failing = True
                await asyncio.sleep(1.0)
            else:
                failing = False

    async def _pick_up_operator_commands(self, conn: psycopg.AsyncConnection[Any]) -> None:
        rows = await (await conn.execute(
            "SELECT cmd_id, meter_id, household_id, action, reason, requested_by,"
            " extract(epoch FROM issued_at) FROM valve_commands WHERE state = 'issued'"
            " ORDER BY issued_at")).fetchall()
        now = time.time()
        book = self.gw.book
        for cmd_id, meter_id, hh, action, reason, by, issued in rows:
            if cmd_id in book.open or cmd_id in book.finished:
                continue
            cmd = ValveCommand(cmd_id=cmd_id, meter_id=meter_id, household_id=hh,
                               action=action, reason=reason, requested_by=by,
                               issued_at=float(issued))
            current = self.gw.operator_command(cmd, now)
            if current is not None:
                await conn.execute(
                    "UPDATE valve_commands SET state = 'attached', attached_to = %s,"
                    " updated_at = now() WHERE cmd_id = %s AND state = 'issued'",
                    (current.cmd_id, cmd_id))
        if rows:
            self.gw.flush()

    async def _notifier(self) -> None:
        from gateway.service.notifier import Notifier

        await Notifier(self.settings, self._stopping).run()

    # -------------------------------------------------------------- main
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                self.loop.add_signal_handler(sig, self._stopping.set)
        await self._load()
        # Latency: keep the automatic collector from stopping the world at an arbitrary
        # allocation in the hot path: long-lived registry and state are frozen out of it, and
        # the young generations are collected on the ticker's schedule (see _ticker). The
        # event loop also takes the GIL back quickly from the threads left (device_state,
        # webhooks; the writer's, with db.writer_process off).
        gc.collect()
        gc.freeze()
        gc.disable()
        sys.setswitchinterval(0.0005)
        from gateway.settings import stack_home
        from gateway.storage.spool import Spool

        db = self.settings.db
        prio = self.settings.priority
        spool_dir = Path(db.spool_dir) if db.spool_dir else stack_home() / "spool"

        def bulk_priority() -> None:
            set_thread_priority(prio.background_rt_priority, prio.background_nice, "bulk")

        if db.writer_process:
            self.writer = WriterProcess(WriterConfig(
                db.dsn, str(spool_dir), db.spool_max_mb * 2**20, db.spool_after_s,
                prio.background_rt_priority, prio.background_nice, self.settings.log_level,
                self.settings.log_json), self.gw.registry, self._ack)
            self.writer.start(self.loop)
        else:
            spool = Spool(spool_dir, db.spool_max_mb * 2**20)
            if len(spool):
                logger.info("spool holds %d batches from before; they are written first",
                            len(spool))
            self.writer = Writer(db.dsn, self.gw.registry, self._committed, spool=spool,
                                 spool_after_s=db.spool_after_s)
            self.writer.start(init=bulk_priority)
        # to_thread work (device_state, webhooks) is bulk work too
        from concurrent.futures import ThreadPoolExecutor

        self.loop.set_default_executor(ThreadPoolExecutor(4, thread_name_prefix="bulk",
                                                          initializer=bulk_priority))
        got = set_thread_priority(prio.loop_rt_priority, prio.loop_nice, "event loop")
        logger.info("event loop thread: %s; bulk threads: %s", got,
                    f"SCHED_RR {prio.background_rt_priority}" if prio.background_rt_priority
                    else f"nice {prio.background_nice}")
        self.gw.submit = self._submit
        self.gw.publish = self._publish
        self.gw.metrics.serve(self.settings.metrics_port)
        self._tasks = [asyncio.create_task(c) for c in
                       (self._mqtt_loop(), self._ticker(), self._listener(), self._notifier(),
                        self._device_state_loop(), self._loop_watch(), self._command_link())]
        await self._stopping.wait()
        logger.info("stopping: flushing and acknowledging what was committed")
        self._drain_all()
        self.gw.flush()
        if isinstance(self.writer, WriterProcess):
            await self.writer.close()
        else:
            await asyncio.to_thread(self.writer.stop)
        await asyncio.sleep(0.05)  # let the last acks run
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in (self.client, self.cmd_client):
            if c is not None:
                c.close()

    def stop(self) -> None:
        self._stopping.set()


def main() -> int:
    from gateway import settings as settings_mod

    s = settings_mod.load()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(GatewayService(s).run())
    return 0
