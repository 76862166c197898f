"""The partition worker (`gas-safety worker`): the gateway's pipeline for the building
partitions this worker owns, fed from NATS JetStream, acknowledged after COMMIT.

Every `lease_poll_s` the worker checks its leases (gateway.cluster.leases) and takes free
partitions up to its share; for each taken partition it rebuilds the pipeline's state from
the database (gateway.cluster.partition), resets the partition's durable consumer to the
first unacknowledged message (gateway.cluster.jetstream) and starts its feed: a standing
pull request that streams the partition's messages as they come (gateway.cluster.feed).
What arrived is judged by the same code the single gateway runs, closed as one database
batch, and each partition's last message acknowledged (AckAll) once the writer committed
it. Valve commands go out on core NATS, `gas.cmd.<meter id>`, to every edge relay
(docs/cluster.md says why). Losing the lease connection drops every partition at once,
unacknowledged: their new owners take them from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Coroutine
from typing import Any

import nats
import psycopg
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from gateway.cluster import beside, health, jetstream, log_link
from gateway.cluster.feed import Feed
from gateway.cluster.leases import LeaseLost, Leases, share
from gateway.cluster.partition import (
    BUILDINGS_SQL,
    Partition,
    buildings_by_partition,
    load_partition,
)
from gateway.core.partitions import PARTITIONS
from gateway.core.registry import Registry
from gateway.pipeline.metrics import Metrics
from gateway.protocol.log_subjects import HEADER_TOPIC, command_subject
from gateway.service import tuning
from gateway.service.app import _where, new_command_id, serve_metrics
from gateway.service.notifier import Notifier
from gateway.settings import Settings
from gateway.storage.rows import Batch, merge_batches
from gateway.storage.writer import Writer

logger = logging.getLogger(__name__)

RELEASE_WAIT_S = 5.0  # a partition given up for balance waits this long for its acks
TAKE_TIMEOUT_S = 1.5  # a taken partition's log position; longer: released, taken again later


def _urgent(batch: Batch) -> bool:
    return bool(
        batch.alarms
        or batch.cleared
        or batch.commands
        or batch.work_orders
        or batch.notifications
        or batch.audit
        or batch.live
    )


def worker_name(settings: Settings) -> str:
    return settings.cluster.worker_name or f"worker-{socket.gethostname()}-{os.getpid()}"[:48]


class WorkerService:
    """Runs until stopped: leases, partitions, the writer, commands, sweeps."""

    def __init__(self, settings: Settings, partitions: int = PARTITIONS) -> None:
        self.settings = settings
        self.partitions = partitions
        self.name = worker_name(settings)
        self.clock = settings.clock.source()
        self.metrics = Metrics()
        self.ids = Registry()  # worker-wide slots, for the writer's COPY
        self.leases = Leases(settings.db.dsn, self.name)
        self.owned: dict[int, Partition] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.unacked: dict[int, tuple[Partition, Any]] = {}  # stream seq -> (partition, msg)
        self.stopping = asyncio.Event()
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.writer: Writer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loader: psycopg.AsyncConnection[Any] | None = None
        self.taken_at: dict[int, float] = {}  # partition -> wall time its rebuild finished
        self.commands_sent = 0
        self.backlog_judged = 0  # messages a dead owner was given, judged again on takeover
        self.server: Any = None
        self._outgoing: list[Batch] = []  # partitions' batches not yet with the writer
        self._outgoing_rows = 0
        self._send_handle: asyncio.TimerHandle | None = None
        self._arrivals: list[tuple[Partition, Any]] = []  # feeds' messages not yet judged
        self._judge_handle: asyncio.Handle | None = None
        self._background: set[asyncio.Future[None]] = set()  # acks and commands on the wire
        self._loading = asyncio.Lock()

    # ------------------------------------------------------------------ leases
    async def _leases_loop(self) -> None:
        poll = self.settings.cluster.lease_poll_s
        delay = poll
        while not self.stopping.is_set():
            try:
                if self.leases.conn is None:
                    await self.leases.connect()
                    logger.info("lease connection up worker=%s", self.name)
                    delay = poll
                await self._balance()
            except (LeaseLost, psycopg.OperationalError) as err:
                if self.owned:
                    logger.error(
                        "lease connection lost (%s): dropping partitions %s at once",
                        err,
                        sorted(self.owned),
                    )
                self._drop_all()
                tuning.release_transient()
                await self.leases.close()
                delay = min(delay * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def _balance(self) -> None:
        alive = await self.leases.alive()
        owners = await self.leases.owners()
        target = share(self.partitions, alive, self.settings.cluster.max_partitions)
        held = self.leases.held
        free = [p for p in range(self.partitions) if p not in owners]
        if len(held) < target and free:
            start = sum(self.name.encode()) % self.partitions  # workers start apart
            free.sort(key=lambda p: (p - start) % self.partitions)
            taken = []
            for p in free:
                if len(held) >= target:
                    break
                if await self.leases.try_take(p):
                    taken.append(p)
            if taken:
                await self._take(taken)
        elif len(held) > target and not free:
            extra = sorted(held)[target:]
            await asyncio.gather(*(self._give_up(p) for p in extra))

    async def _take(self, taken: list[int]) -> None:
        """Rebuild each taken partition from the database, then start judging its log. The
        partitions' log positions are asked at once, each with a short timeout: a partition
        whose consumer is electing a leader is released and taken again at the next poll,
        without holding up the others."""
        t0 = time.perf_counter()
        conn = await self._loader()
        rows = await (await conn.execute(BUILDINGS_SQL)).fetchall()
        by_part = buildings_by_partition(rows, self.partitions)
        await asyncio.gather(*(self._take_one(conn, p, by_part.get(p, [])) for p in taken))
        self.metrics.devices.set(sum(len(x.gw.registry) for x in self.owned.values()))
        settle = tuning.release_transient()  # the rows loaded
        logger.info(
            "took %d partition(s) in %.0f ms (memory settled in %.0f ms); owning %d",
            len(taken),
            (time.perf_counter() - t0) * 1000,
            settle * 1000,
            len(self.owned),
        )

    async def _take_one(
        self, conn: psycopg.AsyncConnection[Any], p: int, buildings: list[tuple[str, str]]
    ) -> None:
        assert self.js is not None
        part = Partition.new(p, self.settings, buildings, self.clock, new_command_id, self.metrics)
        try:
            async with self._loading:  # one partition's rows at a time: a smaller transient
                loaded = await load_partition(conn, part.buildings, [])
                kept = part.rebuild(loaded, self.ids, self.clock())
                alarms = len(loaded.alarms)
                del loaded
            resume = await jetstream.take_consumer(
                self.js, p, self.settings.cluster.ack_wait_s, timeout_s=TAKE_TIMEOUT_S
            )
        except (psycopg.Error, nats.errors.Error) as err:
            logger.warning(
                "partition %d not taken (%s); released", p, str(err) or type(err).__name__
            )
            await self.leases.release(p)
            return
        part.seen_to = resume.delivered
        part.gw.publish = self._publish
        part.gw.submit = functools.partial(self._submit, part)
        self.owned[p] = part
        self.taken_at[p] = time.time()
        self.tasks[p] = asyncio.create_task(self._consume(part, resume))
        logger.info(
            "partition %d taken buildings=%d devices=%d open_alarms=%d open_commands=%d"
            " resume_from=%d",
            p,
            len(part.buildings),
            len(part.gw.registry),
            alarms,
            kept,
            resume.floor + 1,
        )

    async def _loader(self) -> psycopg.AsyncConnection[Any]:
        if self.loader is None or self.loader.closed:
            self.loader = await psycopg.AsyncConnection.connect(
                self.settings.db.dsn, autocommit=True, connect_timeout=3
            )
        return self.loader

    def _drop(self, p: int) -> Partition | None:
        """Stop judging partition p now (nothing more is read or flushed)."""
        part = self.owned.pop(p, None)
        self.taken_at.pop(p, None)
        if part is not None:
            part.stopped = True
            if part.feed is not None:
                part.feed.stop()
        task = self.tasks.pop(p, None)
        if task is not None:
            task.cancel()
        return part

    def _drop_all(self) -> None:
        for p in list(self.owned):
            self._drop(p)

    async def _give_up(self, p: int) -> None:
        """Hand a partition back for balance: stop reading, commit, acknowledge, unlock."""
        part = self._drop(p)
        if part is not None:
            part.gw.flush()
            self._send()
            deadline = time.monotonic() + RELEASE_WAIT_S
            while any(pt is part for pt, _ in self.unacked.values()):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
        await self.leases.release(p)
        tuning.release_transient()  # the partition's pipeline, freed
        logger.info("partition %d given up for balance; owning %d", p, len(self.owned))

    # ------------------------------------------------------------------ the log
    async def _consume(self, part: Partition, resume: jetstream.Resume) -> None:
        """Judge the partition's log until it is dropped: first what its last owner was
        given and did not acknowledge, then the messages of its feed as they arrive."""
        assert self.nc is not None
        while not part.stopped and not self.stopping.is_set():
            try:
                await self._backlog(part, resume)
                break
            except (nats.errors.Error, OSError) as err:
                logger.warning("partition %d: log not reachable (%s); retrying", part.number, err)
                await asyncio.sleep(0.25)
        if part.stopped or self.stopping.is_set():
            return
        part.feed = Feed(
            self.nc,
            part.number,
            functools.partial(self._arrived, part),
            batch=self.settings.cluster.fetch_batch,
            start=resume,
            on_read_back=self.metrics.read_back.inc,
        )
        await part.feed.run()

    async def _backlog(self, part: Partition, resume: jetstream.Resume) -> None:
        """What an earlier owner was given but did not acknowledge: first, in order."""
        assert self.nc is not None
        backlog = await jetstream.read_backlog(self.nc, part.number, resume)
        if backlog and not part.stopped:
            logger.info(
                "partition %d: %d message(s) given to its last owner and not acknowledged, "
                "judged first (stored idempotently)",
                part.number,
                len(backlog),
            )
            self.backlog_judged += len(backlog)
            self._judge(part, backlog, track=False)

    def _arrived(self, part: Partition, msg: Any) -> None:
        """A message of an owned partition's feed: judged with whatever else arrives within
        `fetch_linger_s`, every partition's share of it at once."""
        if part.stopped:
            return
        self._arrivals.append((part, msg))
        if self._judge_handle is None and self.loop is not None:
            linger = self.settings.cluster.fetch_linger_s
            self._judge_handle = (
                self.loop.call_later(linger, self._judge_arrivals)
                if linger
                else self.loop.call_soon(self._judge_arrivals)
            )

    def _judge_arrivals(self) -> None:
        self._judge_handle = None
        arrivals, self._arrivals = self._arrivals, []
        groups: dict[int, tuple[Partition, list[Any]]] = {}
        for part, msg in arrivals:
            if not part.stopped:
                groups.setdefault(id(part), (part, []))[1].append(msg)
        for part, msgs in groups.values():
            self._judge(part, msgs)

    def _judge(self, part: Partition, msgs: list[Any], track: bool = True) -> None:
        """Judge a batch of the partition's log and hand it to the writer; `track`: its
        last message is acknowledged once committed."""
        messages = []
        for m in msgs:
            message = jetstream.to_message(m, part.seen_to)
            if track:
                self.unacked[message.packet_id] = (part, m)
            messages.append(message)
        part.received += len(messages)
        t0 = time.perf_counter()
        part.gw.handle(messages, self.clock())
        part.gw.flush()
        self.metrics.handle_seconds.observe(time.perf_counter() - t0)

    def _submit(self, part: Partition, batch: Batch) -> None:
        """A partition's closed batch joins the worker's next database batch: readings
        collect for `commit_every_s` over all owned partitions and go to the writer as one
        transaction (a transaction's own cost is then shared by however many workers the
        load is spread over); a batch carrying an alarm, an order, a notice or a command goes
        at once, with whatever collected before it (the control room and the owner's call
        wait on its commit)."""
        self._outgoing.append(part.renumber(batch))
        self._outgoing_rows += batch.rows
        if self._outgoing_rows >= self.settings.db.batch_rows or _urgent(batch):
            self._send()
        elif self._send_handle is None and self.loop is not None:
            self._send_handle = self.loop.call_later(
                self.settings.cluster.commit_every_s, self._send
            )

    def _send(self) -> None:
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None
        batches, self._outgoing, self._outgoing_rows = self._outgoing, [], 0
        if not batches or self.writer is None:
            return
        merged = batches[0] if len(batches) == 1 else merge_batches(batches)
        if len(batches) > 1:
            merged.packet_ids = [pid for b in batches for pid in b.packet_ids]
        self.writer.submit(merged)
        self.metrics.buffer_rows.set(self.writer.pending_rows)

    def _committed(self, batch: Batch) -> None:  # writer thread
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._ack, batch)

    def _ack(self, batch: Batch) -> None:
        """The batch is committed: acknowledge its last message per partition (AckAll)."""
        m = self.metrics
        m.last_commit.set(time.time())
        m.stored.inc(len(batch.detector or ()) + len(batch.meter or ()))
        if self.writer is not None:
            m.duplicates.set(self.writer.duplicates_absorbed)
        last: dict[int, Any] = {}
        for seq in batch.packet_ids:
            entry = self.unacked.pop(seq, None)
            if entry is not None:
                part, msg = entry
                if seq > last.get(part.number, (0, None))[0]:
                    last[part.number] = (seq, msg)
        for _, msg in last.values():
            self._spawn(self._ack_one(msg))

    async def _ack_one(self, msg: Any) -> None:
        try:
            await msg.ack()
        except nats.errors.Error as err:  # redelivered later, absorbed then
            logger.debug("ack not sent: %s", err)

    def _publish(self, topic: str, payload: bytes) -> None:
        """A valve command (its MQTT payload) to every edge relay: core NATS, fire and
        forget; the command book resends it (same cmd_id) until the meter acknowledges."""
        parts = topic.split("/")
        if self.nc is None or len(parts) < 2:
            return
        meter_id = parts[-2]
        self.commands_sent += 1
        self._spawn(
            self.nc.publish(command_subject(meter_id), payload, headers={HEADER_TOPIC: topic})
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ sweeps
    async def _sweeps(self) -> None:
        interval = self.settings.detection.sweep_interval_s
        collections = tuning.GcSchedule()  # the automatic collector is off (tune_runtime)
        while not self.stopping.is_set():
            collections.run_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval)
            for part in list(self.owned.values()):
                if part.stopped:
                    continue
                part.gw.tick()
                part.gw.flush()
                await asyncio.sleep(0)  # the log's batches go between partitions

    # ------------------------------------------------------------------ main
    def health(self) -> dict[str, Any]:
        """/healthz (gateway.cluster.health)."""
        return health.report(self)

    async def run(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.stopping.set)
        s = self.settings
        self.server = serve_metrics(self.metrics, s, self.health)
        tuning.tune_allocator()  # before any partition is loaded
        self.nc = await log_link.connect(s.cluster.servers, self.name, self.stopping)
        if self.nc is None:
            return
        self.js = self.nc.jetstream(timeout=5)
        while not await jetstream.prepare(self.js, self.partitions, s.cluster.ack_wait_s):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 1.0)
            if self.stopping.is_set():
                return
        tuning.tune_runtime()
        self.writer = Writer(s.db.dsn, self.ids, self._committed)  # no spool: the log keeps it
        self.writer.start(init=tuning.bulk_initializer(s.priority))
        tuning.prioritise(loop, s.priority)
        logger.info(
            "worker %s started log=%s database=%s partitions=%d",
            self.name,
            s.cluster.nats_servers,
            _where(s.db.dsn),
            self.partitions,
        )
        listener = beside.Listener(
            s.db.dsn, self.owned, self.ids, self.partitions, self.stopping, self.clock
        )
        tasks = [
            asyncio.create_task(c)
            for c in (
                self._leases_loop(),
                self._sweeps(),
                listener.run(),
                beside.write_device_state(
                    self.owned, self.ids, s.db.dsn, s.db.state_interval_s, self.stopping
                ),
            )
        ]
        # owners' calls: rows are claimed with SKIP LOCKED, so every worker may walk them
        tasks.append(asyncio.create_task(Notifier(s, self.stopping).run()))
        await self.stopping.wait()
        await self._shutdown(tasks)

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        logger.info("stopping: committing and acknowledging, then releasing the leases")
        leases_loop = tasks[0]  # first: no partition is taken while the others are dropped
        leases_loop.cancel()
        await asyncio.gather(leases_loop, return_exceptions=True)
        for part in list(self.owned.values()):
            self._drop(part.number)
            part.gw.flush()
        self._send()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop)
        await asyncio.sleep(0.1)  # the last acks
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._drop_all()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            await self.nc.close()
        await self.leases.close()
        if self.loader is not None:
            await self.loader.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
