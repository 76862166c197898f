"""CPU scheduling of one thread: real-time when permitted, else a nice value, else as is.

Linux schedules threads, so each call touches only the calling thread (and the threads it
starts later, which inherit it). Used by the gateway (see settings.PrioritySettings) and by
the load tool's alarm probes, which stand in for device hardware.
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger(__name__)


def set_thread_priority(rt_priority: int, nice: int, what: str) -> str:
    """SCHED_RR at `rt_priority` (if > 0), or else nice `nice`; returns what it got."""
    if rt_priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(rt_priority))
            return f"SCHED_RR {rt_priority}"
        except (OSError, AttributeError) as err:
            logger.info(
                "the %s thread stays an ordinary thread (real-time not permitted: %s)", what, err
            )
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return f"nice {nice}"
    except (OSError, AttributeError) as err:
        logger.info(
            "cpu priority of the %s thread left as it was (nice %d not permitted: %s)",
            what,
            nice,
            err,
        )
        return "unchanged"
