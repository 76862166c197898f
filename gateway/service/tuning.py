"""Keeping the event loop quick to answer a leak: the garbage collector on a schedule of
ours, thread priorities (the loop's above the bulk threads'), and a watch on how late the
loop runs a due callback (gas_loop_lag_seconds).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gateway import allocator
from gateway.priority import set_thread_priority
from gateway.settings import PrioritySettings

logger = logging.getLogger(__name__)

YOUNG_EVERY_S = 1.0
FULL_EVERY_S = 600.0


def tune_allocator() -> None:
    """Before the registry is loaded: freed memory goes back to the system (see
    gateway.allocator)."""
    if not allocator.tune():
        logger.debug("allocator thresholds not set (not glibc)")


def tune_runtime() -> None:
    """Keep the automatic collector from stopping the world at an arbitrary allocation in
    the hot path: the long-lived registry and state are frozen out of it, and the young
    generations are collected on the ticker's schedule (`GcSchedule`). The event loop also
    takes the GIL back quickly from the threads left (device_state, webhooks; the writer's,
    with db.writer_process off). What loading the registry freed is handed back to the
    system (gateway.allocator)."""
    gc.collect()
    allocator.release()
    gc.freeze()
    gc.disable()
    sys.setswitchinterval(0.0005)


def release_transient() -> float:
    """After a large transient in a running process (a worker's partitions taken or
    dropped: their rows, a dropped pipeline's state): collect it, cycles included, and hand
    the heap's free memory back to the system. Returns the seconds it took (the event loop
    waits for it)."""
    t0 = time.perf_counter()
    gc.collect()
    allocator.release()
    return time.perf_counter() - t0


class GcSchedule:
    """Collections at times of our choosing (the ticker's turn), by a monotonic clock.

    Cycles are rare on the hot path (a rejected payload's traceback); young ones are cheap
    if collected often: after 5 s of a new fleet's first readings (each device's first
    route cached) one collection took 8.5 ms of the loop.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last_young = self.last_full = clock()

    def run_due(self) -> None:
        now = self.clock()
        if now - self.last_young >= YOUNG_EVERY_S:
            self.last_young = now
            gc.collect(1)
        if now - self.last_full >= FULL_EVERY_S:
            self.last_full = now
            gc.collect()


def bulk_initializer(prio: PrioritySettings) -> Callable[[], None]:
    """For threads doing bulk work (the writer, device_state, webhooks): below the loop."""

    def init() -> None:
        set_thread_priority(prio.background_rt_priority, prio.background_nice, "bulk")

    return init


def prioritise(loop: asyncio.AbstractEventLoop, prio: PrioritySettings) -> None:
    """The calling (event loop) thread up, the loop's default executor's threads down."""
    loop.set_default_executor(
        ThreadPoolExecutor(4, thread_name_prefix="bulk", initializer=bulk_initializer(prio))
    )
    got = set_thread_priority(prio.loop_rt_priority, prio.loop_nice, "event loop")
    logger.info(
        "event loop thread: %s; bulk threads: %s",
        got,
        f"SCHED_RR {prio.background_rt_priority}"
        if prio.background_rt_priority
        else f"nice {prio.background_nice}",
    )


async def watch_loop_lag(
    observe: Callable[[float], None], stopping: asyncio.Event, period_s: float = 0.01
) -> None:
    """Samples how long the event loop keeps a due callback waiting."""
    while not stopping.is_set():
        t = time.perf_counter()
        await asyncio.sleep(period_s)
        observe(max(0.0, time.perf_counter() - t - period_s))
