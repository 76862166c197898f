"""The service's periodic work beside reading: the sweep ticker (the pipeline's offline and
age rules and command deadlines, then the collector and the gauges) and the device_state
loop (each device's latest values to the fleet view every few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.pipeline.gateway import Gateway
from gateway.service.tuning import GcSchedule
from gateway.storage import copy_format
from gateway.storage.state_writer import StateWriter
from gateway.storage.writer_process import WriterProcess

logger = logging.getLogger(__name__)


class Ticker:
    """Every sweep interval: the pipeline's tick in parts, the event loop running between
    them (reads and instant leaks go first), then the batch flushed, the young garbage
    collected and the gauges refreshed."""

    def __init__(
        self,
        gw: Gateway,
        interval_s: float,
        stopping: asyncio.Event,
        kick_drain: Callable[[], None],
        gauges: Callable[[], None],
    ) -> None:
        self.gw = gw
        self.interval_s = interval_s
        self.stopping = stopping
        self.kick_drain = kick_drain
        self.gauges = gauges
        self.gc = GcSchedule()

    async def run(self) -> None:
        gw = self.gw
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.interval_s)
            try:
                for applying in gw.tick_in_parts():
                    if not applying:
                        self.kick_drain()
                    await asyncio.sleep(0)  # reads and instant leaks go first
            finally:  # cancelled half way: what the sweep raised is still applied
                gw.finish_apply()
            self.kick_drain()
            gw.flush()
            self.gc.run_due()
            self.gauges()


async def write_device_state(
    gw: Gateway, dsn: str, interval_s: float, writer: WriterProcess | None, stopping: asyncio.Event
) -> None:
    """Every `interval_s`, each device's latest values to device_state (the fleet view):
    through the writer process when there is one (no Python thread beside the loop), else
    from a bulk thread. Not written (database away): kept for the next round."""
    state_writer = StateWriter(dsn, gw.registry) if writer is None else None
    latest = gw.latest
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)
        # in slices: short transactions, and no long GIL-holding NumPy call (a whole
        # city's changes would otherwise be built at once)
        while changes := latest.take(limit=copy_format.CHUNK_ROWS):
            if writer is not None:
                ok = await writer.write_state(changes)
            else:
                assert state_writer is not None
                ok = await asyncio.to_thread(state_writer.write, changes)
            if not ok:
                latest.give_back(changes)
                logger.debug("device_state not written (database away); next round")
                break
