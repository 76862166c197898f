"""The batch of rows the pipeline is filling, and handing it to the writer.

Everything one socket read or one sweep produces for storage (readings, events, alarms,
commands, work orders, notices, audit and live rows, and the packet ids to acknowledge
once they are committed) goes into `Outbox.batch`; `flush` closes it under the current
connection's generation and passes it to `submit`, which the service points at the writer.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from gateway.storage.rows import Batch

logger = logging.getLogger(__name__)


def ts_of(epoch: float) -> dt.datetime:
    """A platform time as the timestamp the database stores."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


class Outbox:
    """The open batch, the connection generation it belongs to, and the writer's entrance."""

    def __init__(self) -> None:
        self.batch = Batch()
        # acks of one broker connection never go out on the next: batches carry their own
        self.generation = 0
        self.submit: Callable[[Batch], None] = lambda b: None

    def flush(self) -> None:
        """Close the current batch and hand it to the writer (nothing when it is empty)."""
        b = self.batch
        if not (
            b.rows
            or b.packet_ids
            or b.alarms
            or b.cleared
            or b.commands
            or b.work_orders
            or b.notifications
            or b.audit
            or b.live
        ):
            return
        b.generation = self.generation
        self.batch = Batch()
        self.submit(b)
