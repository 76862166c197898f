"""The writer in a process of its own, so the event loop's process keeps the GIL to itself.

Measured (bench/bench_sweep.py's fleet, 2 cores): a sweep over 384 k devices takes 3.6 ms
of NumPy calls alone and 118 ms while another thread of the same process runs Python (the
storage writer does, building and sending its statements): every NumPy call gives the GIL
up and waits up to a switch interval to get it back. In a process of its own the writer
(`storage.Writer`, unchanged, with its spool) shares nothing with the event loop but two
pipes.

Protocol: length-prefixed pickles. To the child: the config, then ("ids", bytes, lengths)
(the new device ids' UTF-8 bytes joined, and each one's length) whenever the registry grew
(before any batch that names a new slot), ("batch", Batch), ("state", n, Changes)
(device_state upserts, written by a second thread on a connection of its own) and
("stop",). From the child: ("done", seq, stats) after each batch is committed or spooled,
("state_done", n, ok), ("status", stats) twice a second (the database may be away with
nothing committing), ("bye", stats).
The parent writes without blocking (the event loop's add_writer takes the rest) and keeps
every batch until its "done": if the child dies, a new one is started and takes them again
(marked redelivered: the unique and dedupe keys absorb what the dead one had committed).
If the parent dies, the child sees end of file, commits what it holds and exits; those
readings were not acknowledged, so the broker sends them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.core.registry import Registry
from gateway.storage.device_state import Changes
from gateway.storage.rows import Batch

logger = logging.getLogger(__name__)

_LEN = struct.Struct("!I")
PIPE_BYTES = 1 << 20  # Linux's default ceiling for an unprivileged pipe
STATUS_EVERY_S = 0.5
# a child that dies young is started again after a growing pause: one that cannot start
# (a broken install) must not have the event loop fork in a tight loop
RESPAWN_MIN_S, RESPAWN_MAX_S, YOUNG_S = 0.1, 5.0, 10.0


def frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=5)
    return _LEN.pack(len(data)) + data


class Frames:
    """Splits a byte stream back into the objects `frame` wrote."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out: list[Any] = []
        pos, buf = 0, self._buf
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            out.append(pickle.loads(memoryview(buf)[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        del buf[:pos]
        return out


def _grow_pipe(fd: int) -> None:
    # the default (64 KB) works, with more turns of add_writer
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


@dataclasses.dataclass
class WriterConfig:
    dsn: str
    spool_dir: str
    spool_max_bytes: int
    spool_after_s: float
    rt_priority: int = 0
    nice: int = 0
    log_level: str = "INFO"
    log_json: bool = False


@dataclasses.dataclass
class WriterStats:
    db_up: bool = False
    last_commit_lag_s: float = 0.0
    duplicates_absorbed: int = 0
    spooled_batches: int = 0
    committed_rows: int = 0


class WriterProcess:
    """`storage.Writer`'s interface for the gateway, the work done in a child process.

    Lives on the event loop: `submit` and the callbacks run in the loop thread."""

    def __init__(
        self, config: WriterConfig, registry: Registry, on_committed: Callable[[Batch], None]
    ) -> None:
        self.config = config
        self.registry = registry
        self.on_committed = on_committed
        self.stats = WriterStats()
        self.pending_rows = 0
        self.restarts = 0
        self._seq = 0
        self._inflight: dict[int, Batch] = {}
        self._ids_sent = 0
        self._out = bytearray()
        self._writing = False
        self._frames = Frames()
        self._closing = False
        self._gone: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._to_child = self._from_child = -1
        self._state_seq = 0
        self._state_waiting: dict[int, asyncio.Future[bool]] = {}
        # how the child is started (a test gives one that fails at once)
        self.command = [sys.executable, "-m", "gateway.storage.writer_process"]
        self._started_at = 0.0
        self._respawn_delay = RESPAWN_MIN_S

    # ------------------------------------------------------------ the Writer interface
    @property
    def db_up(self) -> bool:
        return self.stats.db_up

    @property
    def last_commit_lag_s(self) -> float:
        return self.stats.last_commit_lag_s

    @property
    def duplicates_absorbed(self) -> int:
        return self.stats.duplicates_absorbed

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._spawn()

    def submit(self, batch: Batch) -> None:
        self._seq += 1
        batch.seq = self._seq
        self._inflight[batch.seq] = batch
        self.pending_rows += batch.rows
        self._send_batch(batch)

    def write_state(self, changes: Changes) -> asyncio.Future[bool]:
        """device_state upserts (latest.StateWriter in the child, on a connection of its
        own); resolves False when they were not written (the caller gives them back)."""
        assert self._loop is not None
        fut: asyncio.Future[bool] = self._loop.create_future()
        if self._to_child < 0:  # stopped
            fut.set_result(False)
            return fut
        self._state_seq += 1
        self._state_waiting[self._state_seq] = fut
        self._send_ids()
        self._send(("state", self._state_seq, changes))
        return fut

    async def close(self, timeout_s: float = 30.0) -> None:
        """Let the child write (or spool) all it was given, then stop it."""
        self._closing = True
        if self._proc is None:
            return
        self._send(("stop",))
        assert self._gone is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._gone), timeout_s)
        except TimeoutError:
            logger.error(
                "writer process did not finish in %.0fs; %d batches unwritten"
                " (not acknowledged: the broker sends them again)",
                timeout_s,
                len(self._inflight),
            )
            self._proc.kill()
        await asyncio.to_thread(self._proc.wait)

    # ------------------------------------------------------------ child management
    def _spawn(self) -> None:
        assert self._loop is not None
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        for fd in (down_w, up_w):
            _grow_pipe(fd)
        self._started_at = time.monotonic()
        self._proc = subprocess.Popen(
            [*self.command, str(down_r), str(up_w)], pass_fds=(down_r, up_w), close_fds=True
        )
        os.close(down_r)
        os.close(up_w)
        os.set_blocking(down_w, False)
        os.set_blocking(up_r, False)
        self._to_child, self._from_child = down_w, up_r
        self._out = bytearray()
        self._writing = False
        self._frames = Frames()
        self._gone = self._loop.create_future()
        self._loop.add_reader(up_r, self._readable)
        self._send(self.config)
        self._ids_sent = 0
        self._send_ids()
        for seq in sorted(self._inflight):  # a new child takes what the last one left
            self._inflight[seq].redelivered = True
            self._send_batch(self._inflight[seq])

    def _send_ids(self) -> None:
        n = len(self.registry)
        if n > self._ids_sent:
            self._send(("ids", *self.registry.encoded_ids(self._ids_sent)))
            self._ids_sent = n

    def _send_batch(self, batch: Batch) -> None:
        self._send_ids()
        # the packet ids stay here: the child has nothing to acknowledge
        self._send(("batch", dataclasses.replace(batch, packet_ids=[])))

    def _send(self, obj: Any) -> None:
        self._out += frame(obj)
        if not self._writing:
            self._write_out()

    def _write_out(self) -> None:
        assert self._loop is not None
        if self._to_child < 0:  # stopped: nobody reads any more
            self._out.clear()
            return
        try:
            n = os.write(self._to_child, self._out) if self._out else 0
        except BlockingIOError:
            n = 0
        except OSError:  # the child is gone: _readable sees the end and starts another
            n = len(self._out)
        del self._out[:n]
        if self._out and not self._writing:
            self._loop.add_writer(self._to_child, self._write_out)
            self._writing = True
        elif not self._out and self._writing:
            self._loop.remove_writer(self._to_child)
            self._writing = False

    def _readable(self) -> None:
        try:
            data = os.read(self._from_child, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            try:
                for msg in self._frames.feed(data):
                    self._handle(msg)
            except Exception:  # a bug on either side: start afresh rather than wedge
                logger.exception("writer process sent what cannot be read; replacing it")
                assert self._proc is not None
                self._proc.kill()
            return
        self._child_gone()

    def _handle(self, msg: tuple[Any, ...]) -> None:
        what = msg[0]
        if what == "done":
            self.stats = msg[2]
            batch = self._inflight.pop(msg[1], None)
            if batch is not None:
                self.pending_rows -= batch.rows
                self.on_committed(batch)
        elif what == "state_done":
            fut = self._state_waiting.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg[2])
        elif what in ("status", "bye"):
            self.stats = msg[1]

    def _child_gone(self) -> None:
        assert self._loop is not None and self._proc is not None
        self._loop.remove_reader(self._from_child)
        if self._writing:
            self._loop.remove_writer(self._to_child)
            self._writing = False
        for fd in (self._to_child, self._from_child):
            os.close(fd)
        self._to_child = self._from_child = -1  # a closed number may be reused: never again
        code = self._proc.wait()
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        for fut in self._state_waiting.values():  # given back, written next round
            if not fut.done():
                fut.set_result(False)
        self._state_waiting.clear()
        if self._closing:
            if code != 0 or self._inflight:
                logger.error(
                    "writer process ended (code %s) with %d batches unwritten (not "
                    "acknowledged: the broker sends them again)",
                    code,
                    len(self._inflight),
                )
            return
        self.restarts += 1
        young = time.monotonic() - self._started_at < YOUNG_S
        self._respawn_delay = (
            min(self._respawn_delay * 2, RESPAWN_MAX_S) if young else RESPAWN_MIN_S
        )
        logger.error(
            "writer process exited (code %s); starting another in %.1fs, which "
            "writes the %d batches it had not finished",
            code,
            self._respawn_delay,
            len(self._inflight),
        )
        self._loop.call_later(self._respawn_delay, self._respawn)

    def _respawn(self) -> None:
        if not self._closing:
            self._spawn()


# ---------------------------------------------------------------- the child
def _child(down_fd: int, up_fd: int) -> int:
    from gateway import allocator
    from gateway.logs import setup_logging
    from gateway.priority import set_thread_priority
    from gateway.storage.spool import Spool
    from gateway.storage.state_writer import StateWriter
    from gateway.storage.writer import Writer

    allocator.tune()
    frames = Frames()
    inbox: list[Any] = []

    def receive() -> Any:
        while not inbox:
            data = os.read(down_fd, 1 << 20)
            if not data:
                return None
            inbox.extend(frames.feed(data))
        return inbox.pop(0)

    config: WriterConfig | None = receive()
    if config is None:
        return 0
    setup_logging(config.log_level, config.log_json)
    log = logging.getLogger("gateway.writer")
    out_lock = threading.Lock()

    def send(obj: Any) -> None:
        data = frame(obj)
        with out_lock:
            view = memoryview(data)
            while view:
                view = view[os.write(up_fd, view) :]

    registry = Registry()
    spool = Spool(Path(config.spool_dir), config.spool_max_bytes)
    if len(spool):
        log.info("spool holds %d batches from before; they are written first", len(spool))

    def stats() -> WriterStats:
        return WriterStats(
            writer.db_up,
            writer.last_commit_lag_s,
            writer.duplicates_absorbed,
            writer.spooled_batches,
            writer.committed_rows,
        )

    writer = Writer(
        config.dsn,
        registry,
        lambda b: send(("done", b.seq, stats())),
        spool=spool,
        spool_after_s=config.spool_after_s,
    )

    def writer_priority() -> None:
        set_thread_priority(config.rt_priority, config.nice, "writer")

    writer.start(init=writer_priority)
    stop = threading.Event()

    def status() -> None:
        while not stop.wait(STATUS_EVERY_S):
            try:
                send(("status", stats()))
            except OSError:
                return

    threading.Thread(target=status, name="status", daemon=True).start()
    states: queue.SimpleQueue[tuple[int, Changes] | None] = queue.SimpleQueue()

    def device_state() -> None:
        set_thread_priority(config.rt_priority, config.nice, "device_state")
        state_writer = StateWriter(config.dsn, registry)
        while (item := states.get()) is not None:
            ok = state_writer.write(item[1])
            try:
                send(("state_done", item[0], ok))
            except OSError:
                return

    state_thread = threading.Thread(target=device_state, name="device_state", daemon=True)
    state_thread.start()
    while True:
        msg = receive()
        if msg is None:
            log.warning("gateway gone: writing what is held, then stopping")
            break
        if msg[0] == "batch":
            writer.submit(msg[1])
        elif msg[0] == "state":
            states.put((msg[1], msg[2]))
        elif msg[0] == "ids":
            registry.add_encoded_ids(msg[1], msg[2])
            del msg
            allocator.release()  # the ids' frame and the index's scratch arrays
        elif msg[0] == "stop":
            break
    writer.stop()
    states.put(None)
    state_thread.join(10)
    stop.set()
    with contextlib.suppress(OSError):
        send(("bye", stats()))
    return 0


if __name__ == "__main__":
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the gateway stops the writer
    # in order ("stop", after its last batch); if the gateway dies, the end of the pipe does
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    from gateway.storage import (
        writer_process,  # pickled classes must be this module's, not __main__'s
    )

    sys.exit(writer_process._child(int(sys.argv[1]), int(sys.argv[2])))
