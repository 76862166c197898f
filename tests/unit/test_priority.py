"""Thread CPU priority: real-time when permitted, else nice; only the calling thread."""

from __future__ import annotations

import os
import threading

from gateway.priority import set_thread_priority


def _in_thread(rt: int, nice: int) -> tuple[str, int, int, int]:
    out: list[tuple[str, int, int, int]] = []

    def run() -> None:
        tid = threading.get_native_id()
        got = set_thread_priority(rt, nice, "test")
        out.append((got, os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, tid),
                    os.sched_getscheduler(os.getpid())))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


def test_nice_applies_to_the_calling_thread_only() -> None:
    got, policy, nice, main_policy = _in_thread(0, 7)  # lowering needs no privilege
    assert got == "nice 7" and policy == os.SCHED_OTHER and nice == 7
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 7  # not this one
    assert main_policy == os.SCHED_OTHER


def test_real_time_when_permitted_else_a_nice_value() -> None:
    got, policy, _, main_policy = _in_thread(1, 3)
    if os.geteuid() == 0:
        assert got == "SCHED_RR 1" and policy == os.SCHED_RR
    else:
        assert got in ("nice 3", "unchanged") and policy == os.SCHED_OTHER
    assert main_policy == os.SCHED_OTHER  # the test process itself is untouched
