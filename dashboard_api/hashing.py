"""Password hashing off the event loop, bounded and at low CPU priority.

argon2 (the argon2-cffi defaults: 64 MiB, 3 passes, 4 lanes) takes ~0.12 s and, its lanes
running in threads of their own, ~0.18 s of CPU per call. So hashes run in a dedicated
pool of `workers` threads (not the default thread pool that other work shares; by default
one per 4 CPUs, as each hash keeps ~1.5 of them busy), at most
`max_pending` calls may run or wait, and one more is refused at once (`HashingBusy`,
answered 503 with Retry-After) instead of queueing behind a flood. The pool's threads run
at a lower CPU priority (nice +10; argon2's lane threads inherit it): when the CPUs are
busy, every other request is scheduled first, and sign-in is what slows down.

The bound is per process and shared by sign-in and the admin routes that set passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WORKERS = max(1, (os.cpu_count() or 1) // 4)
DEFAULT_MAX_PENDING = 16
DEFAULT_NICENESS = 10


class HashingBusy(Exception):
    """Too many password checks in progress; the caller should retry in a moment."""


def _lower_priority(niceness: int) -> None:
    # On Linux a nice value belongs to the thread (and the threads it starts).
    with contextlib.suppress(OSError, AttributeError):
        current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), max(current, min(19, niceness)))


class HashPool:
    def __init__(
        self,
        workers: int = DEFAULT_WORKERS,
        max_pending: int = DEFAULT_MAX_PENDING,
        niceness: int = DEFAULT_NICENESS,
    ) -> None:
        if workers < 1 or max_pending < workers:
            raise ValueError("need workers >= 1 and max_pending >= workers")
        self.workers = workers
        self.max_pending = max_pending
        self.pending = 0
        self._executor = ThreadPoolExecutor(
            workers,
            thread_name_prefix="password-hash",
            initializer=_lower_priority,
            initargs=(niceness,),
        )

    @property
    def full(self) -> bool:
        return self.pending >= self.max_pending

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) in the pool; HashingBusy at once when max_pending calls are under way.
        A call whose caller went away still counts until its thread is done with it."""
        if self.full:
            raise HashingBusy(f"{self.pending} password hashes in progress")
        loop = asyncio.get_running_loop()
        future = self._executor.submit(fn, *args)
        self.pending += 1

        def release(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._release)

        future.add_done_callback(release)
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self.pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
