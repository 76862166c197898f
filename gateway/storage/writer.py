"""The writer: one thread, one connection, batches committed in arrival order.

Everything the gateway decided for a batch of messages (readings, rejects, events, alarms,
commands, work orders, notifications, audit) is written in one transaction; only after its
COMMIT are the batch's MQTT messages acknowledged, so a crash loses nothing the broker
does not redeliver, and the unique keys absorb the redeliveries. Readings go by binary
COPY (built by NumPy); a batch with redelivered rows goes through a staging table and
`INSERT ... ON CONFLICT DO NOTHING`. When the database is away the thread retries with
backoff while batches wait in memory (or spools them, see gateway.storage.spool); the
caller bounds that memory.

This module is the thread: its loop, group commits, the spool and the acknowledgements.
The COPY payloads are built in gateway.storage.copy_rows; the SQL for everything else a
batch decided is in gateway.storage.statements.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg

from gateway.core.registry import Registry
from gateway.storage import statements
from gateway.storage.copy_rows import DET_COLS, MET_COLS, copy_chunks
from gateway.storage.rows import Batch, Readings, merge_batches
from gateway.storage.spool import Spool

logger = logging.getLogger(__name__)


class Writer:
    """Runs in its own thread; `submit` batches, `on_committed(batch)` fires after COMMIT."""

    def __init__(
        self,
        dsn: str,
        registry: Registry,
        on_committed: Callable[[Batch], None],
        on_error: Callable[[Exception], None] | None = None,
        spool: Spool | None = None,
        spool_after_s: float = 2.0,
    ) -> None:
        self.dsn = dsn
        self.registry = registry
        self.on_committed = on_committed
        self.on_error = on_error
        self._queue: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._conn: psycopg.Connection[Any] | None = None
        self.pending_rows = 0
        self.pending_batches = 0
        self.committed_batches = 0
        self.committed_rows = 0
        self.duplicates_absorbed = 0
        self.db_up = False
        self.last_commit_lag_s = 0.0
        self.spool = spool
        self.spool_after_s = spool_after_s
        self.spooled_batches = 0
        self.last_write_s = 0.0
        self.group_max = 16  # batches per transaction under load
        # ... and rows: NumPy holds the GIL while it builds a COPY payload, so a huge group
        # would stall the event loop thread that judges readings
        self.group_max_rows = 20_000
        self._init: Callable[[], None] | None = None
        self._stop_requested = False

    def start(self, init: Callable[[], None] | None = None) -> None:
        """Start the thread; `init` runs first in it (its CPU priority)."""
        self._init = init
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        self.pending_rows += batch.rows
        self.pending_batches += 1
        self._queue.put(batch)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Flush what is queued (to the database or the spool), then stop."""
        self._stop_requested = True
        self._queue.put(None)
        self._thread.join(timeout_s)

    # ------------------------------------------------------------------ thread
    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, connect_timeout=3)
        self.db_up = True
        return conn

    def _commit(self, batch: Batch) -> None:
        """Write one batch; raises psycopg.OperationalError when the database is away."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        try:
            self._write(self._conn, batch)
        except psycopg.OperationalError:
            self.db_up = False
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            raise

    def _commit_group(self, batches: list[Batch]) -> None:
        """Several batches as one: one COPY per table, one transaction, one fsync.

        Raises OperationalError when the database is away."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        merged = batches[0] if len(batches) == 1 else merge_batches(batches)
        try:
            t0 = time.perf_counter()
            self._write_tx(self._conn, merged)
            self.last_write_s = time.perf_counter() - t0
        except psycopg.OperationalError:
            self.db_up = False
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            raise

    def _done(self, batch: Batch, spooled: bool) -> None:
        self.pending_rows -= batch.rows
        self.pending_batches -= 1
        if spooled:
            self.spooled_batches += 1
        else:
            self.committed_batches += 1
            self.committed_rows += batch.rows
            self.last_commit_lag_s = time.monotonic() - batch.created
        self.on_committed(batch)

    def _drain_spool(self) -> bool:
        """Write the oldest spooled file; False when the database is still away.

        A file is removed only after all its batches are committed; a crash in between
        writes them again, which the unique keys and dedupe keys absorb."""
        assert self.spool is not None
        item = self.spool.oldest()
        if item is None:
            return True
        path, batches = item
        try:
            for batch in batches:
                self._commit(self._localize(batch))
                self.committed_rows += batch.rows
        except psycopg.OperationalError:
            return False
        self.spool.remove(path)
        if not len(self.spool):
            logger.info("spool drained: every batch held during the outage is stored")
        return True

    def _run(self) -> None:
        if self._init is not None:  # the thread's own CPU priority (see PrioritySettings)
            self._init()
        held: deque[Batch] = deque()  # waiting for the database (spool full or absent)
        down_since: float | None = None
        stopping = False
        while True:
            if not held and not stopping:
                try:
                    item = self._queue.get(
                        timeout=0.2 if (self.spool and len(self.spool)) or down_since else None
                    )
                except queue.Empty:
                    item = None
                if item is None and not self._queue.empty():
                    continue
                if item is None and self._stop_requested:
                    stopping = True
                elif item is not None:
                    held.append(item)
            # the spool first: rows land in the order they were decided
            if self.spool is not None and len(self.spool):
                if not self._drain_spool():
                    down_since = down_since or time.monotonic()
                    self._spool_or_wait(held, down_since)
                    if stopping and not held:
                        break
                if len(self.spool):
                    continue  # strictly oldest first: new batches wait for the spool
            if not held:
                if stopping:
                    break
                continue
            # group commit: under load, take what queued up meanwhile into one transaction
            while (
                len(held) < self.group_max
                and self._queue.qsize()
                and sum(b.rows for b in held) < self.group_max_rows
            ):
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                held.append(more)
            group = list(held)
            try:
                self._commit_group(group)
            except psycopg.OperationalError as err:
                if down_since is None:
                    down_since = time.monotonic()
                    logger.warning(
                        "database away (%s); detection goes on, batches wait",
                        str(err).strip()[:200],
                    )
                self._spool_or_wait(held, down_since)
                if stopping and self.spool is None:
                    break
                continue
            except Exception as err:  # a bug or bad row must not wedge the pipeline
                logger.exception("batch write failed; retrying")
                if self.on_error:
                    self.on_error(err)
                if self._conn is not None and not self._conn.closed:
                    self._conn.rollback()
                time.sleep(0.5)
                continue
            if down_since is not None:
                logger.info("database back after %.1fs", time.monotonic() - down_since)
                down_since = None
            held.clear()
            for batch in group:
                self._done(batch, spooled=False)
        if self._conn is not None:
            self._conn.close()

    def _spool_or_wait(self, held: deque[Batch], down_since: float) -> None:
        """Database away: spool what is held and what queued up (then ack it), or wait."""
        spool = self.spool
        if (
            spool is not None
            and spool.has_room()
            and time.monotonic() - down_since >= self.spool_after_s
        ):
            batches = list(held)
            held.clear()
            for _ in range(self._queue.qsize()):  # what is queued now; one fsync for all
                try:
                    batch = self._queue.get_nowait()
                except queue.Empty:
                    break
                if batch is None:
                    self._stop_requested = True
                    break
                batches.append(batch)
            if batches:
                spool.append([self._portable(b) for b in batches])
                for b in batches:
                    self._done(b, spooled=True)
        time.sleep(0.2)

    def _portable(self, batch: Batch) -> Batch:
        """Slots are this process's; a spooled batch may be written by the next one."""
        for r in (batch.detector, batch.meter):
            if r is not None:
                r.ids = [self.registry.ids[i] for i in r.slot.tolist()]
        return batch

    def _localize(self, batch: Batch) -> Batch:
        for name in ("detector", "meter"):
            r: Readings | None = getattr(batch, name)
            if r is None or r.ids is None:
                continue
            index = self.registry.index
            keep = np.array([i in index for i in r.ids], bool)
            slots = np.array([index[i] for i in r.ids if i in index], np.int32)
            setattr(
                batch,
                name,
                Readings(
                    slots,
                    r.seq[keep],
                    r.time[keep],
                    r.received[keep],
                    r.flags[keep],
                    {k: v[keep] for k, v in r.values.items()},
                ),
            )
        batch.redelivered = True  # it may have been half-written before a crash
        return batch

    def _write(self, conn: psycopg.Connection[Any], b: Batch) -> None:
        t0 = time.perf_counter()
        self._write_tx(conn, b)
        self.last_write_s = time.perf_counter() - t0
        if self.last_write_s > 0.5:
            logger.warning(
                "slow commit %.2fs rows=%d det=%d met=%d alarms=%d",
                self.last_write_s,
                b.rows,
                len(b.detector or ()),
                len(b.meter or ()),
                len(b.alarms),
            )

    def _write_tx(self, conn: psycopg.Connection[Any], b: Batch) -> None:
        with conn.transaction(), conn.cursor() as cur:
            for kind, r, table, cols in (
                ("detector", b.detector, "detector_readings", DET_COLS),
                ("meter", b.meter, "meter_readings", MET_COLS),
            ):
                if r is not None and len(r):
                    self._copy_readings(cur, kind, r, table, cols, b.redelivered)
            statements.write_decisions(cur, b)

    def _copy_readings(
        self,
        cur: psycopg.Cursor[Any],
        kind: str,
        r: Readings,
        table: str,
        cols: str,
        redelivered: bool,
    ) -> None:
        """COPY straight into `table`; a batch that may repeat stored rows goes through a
        staging table and ON CONFLICT DO NOTHING, so a redelivery never fails the batch."""
        if not redelivered:
            try:
                with (
                    cur.connection.transaction(),
                    cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as cp,
                ):
                    for piece in copy_chunks(self.registry, r, kind):
                        cp.write(piece)
                return
            except psycopg.errors.UniqueViolation:
                pass  # a redelivered reading without the DUP flag: take the slow path
        stage = f"stage_{table}"
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
            for piece in copy_chunks(self.registry, r, kind):
                cp.write(piece)
        cur.execute(f"INSERT INTO {table} SELECT * FROM {stage} ON CONFLICT DO NOTHING")
        self.duplicates_absorbed += len(r) - max(cur.rowcount, 0)
