"""The gateway service: runs the pipeline (gateway.pipeline) against the real broker and
database until stopped.

`GatewayService` loads the registry and what was open before a restart, starts the writer
(thread or process) and the tasks (MQTT links: gateway.service.links; LISTEN:
listener; sweeps and device_state: periodic; the notifier; the loop-lag watch: tuning), and
feeds socket reads into the pipeline a slice per event-loop turn. Batches go to the writer;
the messages in them are acknowledged to the broker once committed. `main` is the
`gas-safety gateway` entry point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg

from gateway.core.commands import still_open
from gateway.pipeline.gateway import Gateway
from gateway.pipeline.metrics import Metrics
from gateway.protocol.packets import Lookahead, Message
from gateway.service import tuning
from gateway.service.links import Link, Links, command_config, ingest_config
from gateway.service.listener import Listener
from gateway.service.periodic import Ticker, write_device_state
from gateway.settings import Settings
from gateway.storage.registry_sql import load_registry
from gateway.storage.rows import Batch
from gateway.storage.writer import Writer
from gateway.storage.writer_process import WriterConfig, WriterProcess

logger = logging.getLogger(__name__)

_OPEN_ALARMS_SQL = "SELECT device_id, kind FROM alarms WHERE cleared_at IS NULL"
_OPEN_COMMANDS_SQL = (
    "SELECT cmd_id, meter_id, household_id, action, reason, requested_by,"
    " extract(epoch FROM issued_at), attempts, state FROM valve_commands"
    " WHERE state IN ('issued', 'sent')"
)


def new_command_id() -> str:
    """The id of a command the gateway issues itself (operators' come from the API)."""
    return f"gw-{uuid.uuid4().hex[:20]}"


class GatewayService:
    """Runs a Gateway against the real broker and database until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = settings.clock.source()  # the wall clock, except in tests
        self.gw = Gateway(settings, clock=self.clock, new_id=new_command_id)
        self._stopping = asyncio.Event()
        s = settings.mqtt
        # instant leaks are cut as their read arrives, from framed PUBLISHes only
        self.links = Links(
            Link(
                "ingest",
                ingest_config(s),
                self._stopping,
                self.gw.metrics.mqtt_connected,
                max_delay_s=5.0,
                on_batch=self._on_batch,
                lookahead=Lookahead(marks=self.gw.instant_marks, deliver=self.gw.triage),
                before_connect=self._new_connection,
            ),
            self._command_link(),
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.writer: Writer | WriterProcess | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._pending: deque[list[Message]] = deque()  # read, not yet judged
        self._draining = False
        self.devices_loaded = 0
        self.server: Any = None  # the metrics and /healthz HTTP server
        self.started_at = 0.0
        self.last_commit_at = 0.0  # wall clock of the last committed batch; 0: none yet
        self.spool_depth = 0
        self._spool_counted_at = 0.0

    def _command_link(self) -> Link | None:
        config = command_config(self.settings.mqtt)
        if config is None:
            return None
        return Link(
            "command",
            config,
            self._stopping,
            self.gw.metrics.command_link,
            max_delay_s=30.0,
            while_down=" (commands use the ingest connection)",
        )

    # -------------------------------------------------------------- startup
    async def _load(self) -> None:
        dsn = self.settings.db.dsn
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=5) as conn:
                    n = await load_registry(conn, self.gw)
                    alarms = await (await conn.execute(_OPEN_ALARMS_SQL)).fetchall()
                    cmds = await (await conn.execute(_OPEN_COMMANDS_SQL)).fetchall()
                break
            except psycopg.OperationalError as err:
                logger.warning(
                    "database %s not reachable at start (%s); next attempt in %.1fs",
                    _where(dsn),
                    (str(err).strip().splitlines() or [""])[0][:200],
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
        now = self.clock()
        open_cmds = still_open(cmds, now)
        kept = self.gw.restore([(a[0], a[1]) for a in alarms], open_cmds)
        self.devices_loaded = n
        logger.info(
            "registry loaded devices=%d open_alarms=%d open_commands=%d", n, len(alarms), kept
        )
        if n == 0:
            logger.warning(
                "no device is provisioned: every message will be refused as unknown "
                "(provision with `gas-safety fleet provision` or the API's /devices)"
            )

    def _new_connection(self) -> int:
        """Before each ingest connection: what the last one delivered is judged and closed
        under its generation (acks of one connection never go out on the next)."""
        self._drain_all()
        self.gw.flush()
        return self.gw.begin_generation()

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
        if self.gw.unwritten and self._flush_handle is None and self.loop is not None:
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
        self.last_commit_at = time.time()
        m.last_commit.set(self.last_commit_at)
        if self.writer is not None:
            m.buffer_rows.set(self.writer.pending_rows)
            m.writer_lag.set(self.writer.last_commit_lag_s)
            m.stored.inc(len(batch.detector or ()) + len(batch.meter or ()))
            m.duplicates.set(self.writer.duplicates_absorbed)
        client = self.links.ingest.client
        if (
            batch.packet_ids
            and client is not None
            and client.connected
            and batch.generation == client.generation
        ):
            client.ack(batch.packet_ids)

    def _gauges(self) -> None:
        if self.writer is None:
            return
        m = self.gw.metrics
        m.db_up.set(1 if self.writer.db_up else 0)
        if isinstance(self.writer, WriterProcess):
            m.writer_restarts.set(self.writer.restarts)
        m.open_commands.set(self.gw.open_commands)
        client = self.links.ingest.client
        if client is not None:
            m.unacked.set(client.unacked)
        now = time.monotonic()
        if now - self._spool_counted_at >= SPOOL_COUNT_EVERY_S:
            self._spool_counted_at = now
            self.spool_depth = _count_batches(self.spool_dir)
            m.spool_batches.set(self.spool_depth)

    @property
    def spool_dir(self) -> Path:
        from gateway.settings import stack_home

        db = self.settings.db
        return Path(db.spool_dir) if db.spool_dir else stack_home() / "spool"

    def health(self) -> dict[str, Any]:
        """The gateway's /healthz (read from the metrics thread: plain attribute reads).

        "ok" when the ingest connection is up, the writer reaches the database and the event
        loop keeps up; otherwise "degraded" with the reasons."""
        writer = self.writer
        # the writer connects with its first batch: before that, nothing says it cannot
        tried = writer is not None and bool(self.last_commit_at or writer.pending_rows)
        db_up: bool | None = bool(writer.db_up) if writer is not None and tried else None
        lag_s = self.gw.metrics.value("gas_loop_lag_seconds_sum") / max(
            1.0, self.gw.metrics.value("gas_loop_lag_seconds_count")
        )
        problems = []
        if not self.links.ingest.up:
            problems.append(f"broker {self.links.ingest.broker} not connected")
        if db_up is False:
            problems.append("writer cannot reach the database")
        if self.spool_depth:
            problems.append(f"{self.spool_depth} batch(es) spooled")
        now = time.time()
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "uptime_s": round(now - self.started_at, 1) if self.started_at else 0.0,
            "mqtt": {
                "broker": self.links.ingest.broker,
                "connected": self.links.ingest.up,
                "command_link": None if self.links.command is None else self.links.command.up,
                "failed_attempts": self.links.ingest.failures,
            },
            "writer": {
                "kind": "process" if isinstance(writer, WriterProcess) else "thread",
                "db_up": db_up,
                "restarts": writer.restarts if isinstance(writer, WriterProcess) else 0,
                "pending_rows": writer.pending_rows if writer is not None else 0,
                "last_commit_lag_s": round(writer.last_commit_lag_s, 4) if writer else None,
                "last_commit_age_s": round(now - self.last_commit_at, 1)
                if self.last_commit_at
                else None,
            },
            "spool_batches": self.spool_depth,
            "loop_lag_mean_ms": round(lag_s * 1000, 3),
            "devices": self.devices_loaded,
            "open_commands": self.gw.open_commands,
        }

    def _summary(self, metrics_url: str, priority: str) -> str:
        s = self.settings
        commands = "own connection" if self.links.command is not None else "ingest connection"
        return (
            f"gateway started broker={self.links.ingest.broker} (user {s.mqtt.username}, "
            f"commands on the {commands}) database={_where(s.db.dsn)} metrics={metrics_url} "
            f"devices={self.devices_loaded} engine={self.gw.state.engine} "
            f"writer={'process' if s.db.writer_process else 'thread'} "
            f"spool={self.spool_dir} priority={priority}"
        )

    async def _notifier(self) -> None:
        from gateway.service.notifier import Notifier

        await Notifier(self.settings, self._stopping).run()

    def _start_writer(self, loop: asyncio.AbstractEventLoop) -> Writer | WriterProcess:
        from gateway.settings import stack_home
        from gateway.storage.spool import Spool

        db = self.settings.db
        prio = self.settings.priority
        spool_dir = Path(db.spool_dir) if db.spool_dir else stack_home() / "spool"
        if db.writer_process:
            proc = WriterProcess(
                WriterConfig(
                    db.dsn,
                    str(spool_dir),
                    db.spool_max_mb * 2**20,
                    db.spool_after_s,
                    prio.background_rt_priority,
                    prio.background_nice,
                    self.settings.log_level,
                    self.settings.log_json,
                ),
                self.gw.registry,
                self._ack,
            )
            proc.start(loop)
            return proc
        spool = Spool(spool_dir, db.spool_max_mb * 2**20)
        if len(spool):
            logger.info("spool holds %d batches from before; they are written first", len(spool))
        thread = Writer(
            db.dsn, self.gw.registry, self._committed, spool=spool, spool_after_s=db.spool_after_s
        )
        thread.start(init=tuning.bulk_initializer(prio))
        return thread

    # -------------------------------------------------------------- main
    async def run(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self._stopping.set)
        metrics_url = self._serve_metrics()  # first: a port in use stops the start at once
        tuning.tune_allocator()
        await self._load()
        tuning.tune_runtime()
        self.writer = writer = self._start_writer(loop)
        # to_thread work (device_state, webhooks) is bulk work too
        tuning.prioritise(loop, self.settings.priority)
        self.gw.submit = self._submit
        self.gw.publish = self.links.publish
        s = self.settings
        self.started_at = time.time()
        logger.info(self._summary(metrics_url, _thread_priority()))
        ticker = Ticker(
            self.gw, s.detection.sweep_interval_s, self._stopping, self._kick_drain, self._gauges
        )
        listener = Listener(s.db.dsn, self.gw, self._stopping, self.clock)
        self._tasks = [
            asyncio.create_task(c)
            for c in (
                *self.links.tasks(),
                ticker.run(),
                listener.run(),
                self._notifier(),
                write_device_state(
                    self.gw,
                    s.db.dsn,
                    s.db.state_interval_s,
                    writer if isinstance(writer, WriterProcess) else None,
                    self._stopping,
                ),
                tuning.watch_loop_lag(self.gw.metrics.loop_lag.observe, self._stopping),
            )
        ]
        await self._stopping.wait()
        logger.info("stopping: flushing and acknowledging what was committed")
        self._drain_all()
        self.gw.flush()
        if isinstance(writer, WriterProcess):
            await writer.close()
        else:
            await asyncio.to_thread(writer.stop)
        await asyncio.sleep(0.05)  # let the last acks run
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.links.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _serve_metrics(self) -> str:
        """/metrics and /healthz up; their URL ("off" for port 0)."""
        s = self.settings
        self.server = serve_metrics(self.gw.metrics, s, self.health)
        return f"http://{s.metrics_host}:{s.metrics_port}/metrics" if self.server else "off"

    def stop(self) -> None:
        self._stopping.set()


SPOOL_COUNT_EVERY_S = 5.0  # the spool folder is counted at most this often


class StartupError(RuntimeError):
    """The gateway cannot start (an address in use): one line naming the setting to change."""


def _count_batches(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for e in entries if e.name.endswith(".batch"))
    except OSError:
        return 0


def _where(dsn: str) -> str:
    """A DSN as a log names it: host, port and database, never the password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable dsn)"
    host = parts.get("host") or "localhost"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


def _thread_priority() -> str:
    """The calling thread's scheduling, as the start-up summary says it."""
    try:
        if os.sched_getscheduler(0) == os.SCHED_RR:
            return f"SCHED_RR {os.sched_getparam(0).sched_priority}"
        return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"
    except (AttributeError, OSError):
        return "unknown"


def serve_metrics(
    metrics: Metrics, s: Settings, health: Callable[[], dict[str, Any]]
) -> ThreadingHTTPServer | None:
    """/metrics and /healthz on the settings' address (None for port 0). StartupError when
    the address cannot be bound, naming the settings to change."""
    try:
        return metrics.serve(s.metrics_port, s.metrics_host, health)
    except OSError as err:
        raise StartupError(
            f"metrics endpoint {s.metrics_host}:{s.metrics_port}: {err.strerror or err}"
            " (set metrics_port or metrics_host to a free address, or metrics_port = 0"
            " to turn the endpoint off)"
        ) from None


def run_service(
    program: str,
    service: Callable[[Settings], Coroutine[Any, Any, None]],
    unreachable: tuple[type[BaseException], ...] = (),
    what: Callable[[Settings], str] = lambda s: "",
) -> int:
    """Load the settings and run `service(settings)` on uvloop until it returns. The exit
    status: 0 stopped, 3 could not start (one line on stderr: the StartupError, or `what`
    was not reachable for the errors in `unreachable`)."""
    import sys

    from gateway import settings as settings_mod

    s = settings_mod.load()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(service(s))
    except StartupError as err:
        print(f"{program}: {err}", file=sys.stderr)
        return 3
    except unreachable as err:
        print(f"{program}: {what(s)} not reachable: {err}", file=sys.stderr)
        return 3
    return 0


def main() -> int:
    """Run the gateway; the exit status: 0 stopped, 3 could not start."""
    return run_service("gas-safety gateway", lambda s: GatewayService(s).run())
