"""The writer: one thread, one connection, batches committed in arrival order.

Everything the gateway decided for a batch of messages (readings, rejects, events, alarms,
commands, work orders, notifications, audit) is written in one transaction; only after its
COMMIT are the batch's MQTT messages acknowledged, so a crash loses nothing the broker
does not redeliver, and the unique keys absorb the redeliveries. Readings go by binary
COPY (built by NumPy); a batch with redelivered rows goes through a staging table and
`INSERT ... ON CONFLICT DO NOTHING`. When the database is away the thread retries with
backoff while batches wait in memory; the caller bounds that memory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from gateway.core.registry import Registry
from gateway.storage import copy_format
from gateway.storage.rows import Batch, Readings, merge_batches
from gateway.storage.spool import Spool

logger = logging.getLogger(__name__)

DET_HEAD = copy_format.field_dtype([("nfields", ""), ("time", ">i8"), ("device", "")])
DET_TAIL = copy_format.field_dtype(
    [("seq", ">i8"), ("ch4", ">f4"), ("fault", ">i4"), ("received", ">i8"), ("flags", ">i2")]
)
MET_HEAD = DET_HEAD
MET_TAIL = copy_format.field_dtype(
    [
        ("seq", ">i8"),
        ("vol", ">f8"),
        ("flow", ">f4"),
        ("valve", ">i2"),
        ("batt", ">f4"),
        ("rssi", ">i2"),
        ("received", ">i8"),
        ("flags", ">i2"),
    ]
)
DET_COLS = "time, device_id, seq, ch4_lel, fault, received_at, flags"
MET_COLS = "time, device_id, seq, vol_m3, flow_m3h, valve, batt_v, rssi, received_at, flags"


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def _copy_chunks(registry: Registry, r: Readings, kind: str) -> Iterator[bytes]:
    """The binary COPY data of `r`, in pieces (see copy_format.chunk_bounds)."""
    for lo, hi, header, trailer in copy_format.chunk_bounds(len(r)):
        part = (
            r
            if (lo, hi) == (0, len(r))
            else Readings(
                r.slot[lo:hi],
                r.seq[lo:hi],
                r.time[lo:hi],
                r.received[lo:hi],
                r.flags[lo:hi],
                {k: v[lo:hi] for k, v in r.values.items()},
            )
        )
        yield _copy_payload(registry, part, kind, header, trailer)


def _copy_payload(
    registry: Registry, r: Readings, kind: str, header: bool = True, trailer: bool = True
) -> bytes:
    n = len(r)
    slots = r.slot
    head = np.empty(n, DET_HEAD)
    head["nfields"] = 7 if kind == "detector" else 10
    head["time_len"] = 8
    head["time"] = copy_format.pg_micros(r.time)
    head["device_len"] = registry.id_len[slots]
    if kind == "detector":
        tail = np.empty(n, DET_TAIL)
        tail["ch4"] = r.values["ch4"]
        tail["fault"] = r.values["fault"]
        for name, width in (("seq", 8), ("ch4", 4), ("fault", 4), ("received", 8), ("flags", 2)):
            tail[name + "_len"] = width
    else:
        tail = np.empty(n, MET_TAIL)
        for name in ("vol", "flow", "valve", "batt", "rssi"):
            tail[name] = r.values[name]
        for name, width in (
            ("seq", 8),
            ("vol", 8),
            ("flow", 4),
            ("valve", 2),
            ("batt", 4),
            ("rssi", 2),
            ("received", 8),
            ("flags", 2),
        ):
            tail[name + "_len"] = width
    tail["seq"] = r.seq
    tail["received"] = copy_format.pg_micros(r.received)
    tail["flags"] = r.flags
    return copy_format.assemble(
        head,
        registry.id_bytes,
        registry.id_start[slots],
        registry.id_len[slots],
        tail,
        header,
        trailer,
    )


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
            if b.rejects:
                cur.executemany(
                    "INSERT INTO rejects (time, device_id, topic, reason, detail,"
                    " payload_head) VALUES (%s, %s, %s, %s, %s, %s)",
                    b.rejects,
                )
            if b.events:
                cur.executemany(
                    "INSERT INTO device_events (time, device_id, seq, type, payload,"
                    " received_at) VALUES (%s, %s, %s, %s, %s, %s)",
                    b.events,
                )
            alarm_ids = self._write_alarms(cur, b)
            self._write_commands(cur, b, alarm_ids)
            wo_live = self._write_work_orders(cur, b, alarm_ids)
            if b.notifications:
                cur.executemany(
                    "INSERT INTO notifications (household_id, kind, channel, recipient, body,"
                    " dedupe_key, alarm_id) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (dedupe_key) DO NOTHING",
                    [
                        (
                            n.household_id,
                            n.kind,
                            n.channel,
                            n.recipient,
                            n.body,
                            n.dedupe_key,
                            alarm_ids.get(n.alarm_key) if n.alarm_key else None,
                        )
                        for n in b.notifications
                    ],
                )
            if b.audit:
                cur.executemany(
                    "INSERT INTO audit_log (at, actor, action, entity, entity_id,"
                    " details) VALUES (now(), %s, %s, %s, %s, %s)",
                    [(a, act, e, eid, Jsonb(d)) for a, act, e, eid, d in b.audit],
                )
            live = b.live + wo_live  # after the alarms they follow from
            if live:
                for e in live:  # the ids exist now: the API and its live stream use them
                    if e["type"] in ("alarm.raised", "alarm.cleared") and "alarm_id" not in e:
                        e["alarm_id"] = alarm_ids.get((e["device_id"], e["kind"]))
                cur.executemany(
                    "SELECT pg_notify('gas_events', %s)", [(json.dumps(e),) for e in live]
                )

    def _copy_readings(
        self,
        cur: psycopg.Cursor[Any],
        kind: str,
        r: Readings,
        table: str,
        cols: str,
        redelivered: bool,
    ) -> None:
        if not redelivered:
            try:
                with (
                    cur.connection.transaction(),
                    cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as cp,
                ):
                    for piece in _copy_chunks(self.registry, r, kind):
                        cp.write(piece)
                return
            except psycopg.errors.UniqueViolation:
                pass  # a redelivered reading without the DUP flag: take the slow path
        stage = f"stage_{table}"
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
            for piece in _copy_chunks(self.registry, r, kind):
                cp.write(piece)
        cur.execute(f"INSERT INTO {table} SELECT * FROM {stage} ON CONFLICT DO NOTHING")
        self.duplicates_absorbed += len(r) - max(cur.rowcount, 0)

    def _write_alarms(self, cur: psycopg.Cursor[Any], b: Batch) -> dict[tuple[str, str], int]:
        """Set-based: an alarm storm (a sweep finding thousands of old meters) is one round trip
        per statement, not per alarm."""
        ids: dict[tuple[str, str], int] = {}
        if b.alarms:
            incident_of: dict[int, int] = {}
            for i, a in enumerate(b.alarms):
                if a.incident:  # rare: a riser leak
                    cur.execute(
                        "INSERT INTO incidents (building, community, kind, opened_at, households)"
                        " VALUES (%s, %s, %s, %s, 1) ON CONFLICT (building, kind)"
                        " WHERE closed_at IS NULL DO UPDATE SET"
                        " households = incidents.households + 1 RETURNING id",
                        (a.building, a.community, a.kind, _ts(a.raised_at)),
                    )
                    incident_of[i] = cur.fetchone()[0]  # type: ignore[index]
            cur.executemany(
                "INSERT INTO alarms (device_id, household_id, kind, severity, value, raised_at,"
                " flow_at_meter, evidence, incident_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (device_id, kind) WHERE cleared_at IS NULL DO NOTHING"
                " RETURNING id, device_id, kind",
                [
                    (
                        a.device_id,
                        a.household_id,
                        a.kind,
                        a.severity,
                        a.value,
                        _ts(a.raised_at),
                        a.flow_at_meter,
                        Jsonb(a.evidence),
                        incident_of.get(i),
                    )
                    for i, a in enumerate(b.alarms)
                ],
                returning=True,
            )
            new: dict[tuple[str, str], int] = {}
            while True:
                for aid, device_id, kind in cur.fetchall():
                    new[(device_id, kind)] = aid
                if not cur.nextset():
                    break
            ids.update(new)
            missing = [(a.device_id, a.kind) for a in b.alarms if (a.device_id, a.kind) not in ids]
            if missing:  # already open (raised before a restart): keep that one
                cur.execute(
                    "SELECT a.id, a.device_id, a.kind FROM alarms a JOIN unnest(%s::text[],"
                    " %s::text[]) AS m(device_id, kind) USING (device_id, kind)"
                    " WHERE a.cleared_at IS NULL",
                    ([d for d, _ in missing], [k for _, k in missing]),
                )
                for aid, device_id, kind in cur.fetchall():
                    ids[(device_id, kind)] = aid
            if new:
                by_key = {(a.device_id, a.kind): a for a in b.alarms}
                cur.executemany(
                    "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
                    " VALUES ('gateway', 'alarm.raised', 'alarm', %s, %s)",
                    [
                        (
                            str(aid),
                            Jsonb(
                                {
                                    "device": k[0],
                                    "kind": k[1],
                                    "value": by_key[k].value,
                                    "evidence": by_key[k].evidence,
                                }
                            ),
                        )
                        for k, aid in new.items()
                    ],
                )
        if b.cleared:
            cur.executemany(
                "UPDATE alarms SET cleared_at = %s, state = 'cleared'"
                " WHERE device_id = %s AND kind = %s AND cleared_at IS NULL",
                [(_ts(at), d, k) for d, k, at in b.cleared],
            )
        return ids

    def _write_commands(
        self, cur: psycopg.Cursor[Any], b: Batch, alarm_ids: dict[tuple[str, str], int]
    ) -> None:
        rows = []
        for c in b.commands:
            alarm_id = None
            if c.get("trigger_device") and c.get("cause"):
                alarm_id = alarm_ids.get((c["trigger_device"], c["cause"]))
            rows.append(
                (
                    c["cmd_id"],
                    c["meter_id"],
                    c["household_id"],
                    c["action"],
                    c["reason"],
                    alarm_id,
                    c.get("trigger_device"),
                    c.get("cause"),
                    c["state"],
                    c["attempts"],
                    c["requested_by"],
                    _ts(c["issued_at"]),
                    _ts(c["sent_at"]) if c.get("sent_at") else None,
                    _ts(c["acked_at"]) if c.get("acked_at") else None,
                    c.get("ack_ok"),
                    c.get("ack_valve"),
                    c.get("ack_error"),
                )
            )
        if not rows:
            return
        cur.executemany(
            "INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason,"
            " alarm_id, state, attempts, requested_by, issued_at, sent_at, acked_at, ack_ok,"
            " ack_valve, ack_error, updated_at)"
            " SELECT %s, %s, %s, %s, %s, coalesce(%s, (SELECT id FROM alarms WHERE device_id = %s"
            " AND kind = %s ORDER BY raised_at DESC LIMIT 1)), %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " now()"
            " ON CONFLICT (cmd_id) DO UPDATE SET state = excluded.state,"
            " attempts = greatest(valve_commands.attempts, excluded.attempts),"
            " alarm_id = coalesce(valve_commands.alarm_id, excluded.alarm_id),"
            " sent_at = coalesce(excluded.sent_at, valve_commands.sent_at),"
            " acked_at = excluded.acked_at, ack_ok = excluded.ack_ok,"
            " ack_valve = excluded.ack_valve, ack_error = excluded.ack_error, updated_at = now()",
            rows,
        )

    def _write_work_orders(
        self, cur: psycopg.Cursor[Any], b: Batch, alarm_ids: dict[tuple[str, str], int]
    ) -> list[dict[str, Any]]:
        if not b.work_orders:
            return []
        cur.executemany(
            "INSERT INTO work_orders (household_id, cause, priority, title, opened_at,"
            " arrive_by, resolve_by, alarm_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (household_id, cause) WHERE status IN ('open', 'dispatched', 'on_site')"
            " DO UPDATE SET repeats = work_orders.repeats + 1, updated_at = now(),"
            " version = work_orders.version + 1"
            " RETURNING id, (xmax = 0) AS created",
            [
                (
                    w.household_id,
                    w.cause,
                    w.priority,
                    w.title,
                    _ts(w.opened_at),
                    w.arrive_by,
                    w.resolve_by,
                    alarm_ids.get(w.alarm_key) if w.alarm_key else None,
                )
                for w in b.work_orders
            ],
            returning=True,
        )
        results: list[tuple[int, bool]] = []
        while True:
            results.extend(cur.fetchall())
            if not cur.nextset():
                break
        steps, audit, live = [], [], []
        for w, (wo_id, created) in zip(b.work_orders, results, strict=True):
            steps.append(
                (wo_id, "opened" if created else "attached", "open" if created else None, w.note)
            )
            if created:
                audit.append(
                    (
                        str(wo_id),
                        Jsonb(
                            {
                                "household": w.household_id,
                                "cause": w.cause,
                                "priority": w.priority,
                                "note": w.note,
                            }
                        ),
                    )
                )
            live.append(
                {
                    "type": "work_order.opened" if created else "work_order.changed",
                    "work_order_id": wo_id,
                    "household_id": w.household_id,
                    "cause": w.cause,
                    "priority": w.priority,
                }
            )
        cur.executemany(
            "INSERT INTO work_order_steps (work_order_id, at, actor, action,"
            " from_status, to_status, note) VALUES (%s, now(), 'gateway', %s, NULL,"
            " %s, %s)",
            steps,
        )
        if audit:
            cur.executemany(
                "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
                " VALUES ('gateway', 'work_order.opened', 'work_order', %s, %s)",
                audit,
            )
        return live
