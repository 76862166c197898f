"""A partition's log messages as they arrive: standing pull requests on its durable consumer.

A pull consumer hands out messages only against a request. Fetching (request, wait for the
answer, judge, request again) costs one round trip, a timer and a future per pull, and a
thinly loaded partition (a few readings a second) brings one message per pull: the round
trip was most of a worker's CPU per reading. A standing request instead asks for up to
`batch` messages over the next `expires_s`; the consumer's leader sends each message to the
feed's inbox as soon as the stream has it, with no round trip in between. The feed renews
its request when half of the batch has come or the request is about to expire, so there is
always one waiting at the leader (two for a moment, served oldest first).

Ownership is unchanged: it is still a pull consumer, so a message goes to one request only,
and a request dies with its client's connection. A feed that is stopped unsubscribes its
inbox at once; a request left at the leader expires within `expires_s`, and what the
leader gave it meanwhile is not acknowledged, so it is given out again after the ack wait.
A leader change drops waiting requests; the next renewal (within `expires_s`) asks the new
leader.

A delivery can go to nobody: to a dead owner's request still waiting at the leader, or on
the wire when a log node dies between the leader and this worker. The consumer counts it
as given, and since one acknowledgement covers everything before it (AckAll), the next
acknowledged message would cover it too, never judged. So the feed follows the consumer's
count of deliveries (the consumer sequence): when it skips, the partition's messages
between the last one this feed had and the one that came are read back from the stream by
sequence and delivered first (`gap_filled` counts them), redeliveries stored idempotently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.js.api import Header

from gateway.cluster.jetstream import Resume, read_range
from gateway.protocol.log_subjects import STREAM, consumer_name

logger = logging.getLogger(__name__)

RENEW_AT = 0.75  # of a request's expiry: the next request is sent this far into it
REFILL_RETRY_S = 0.25  # a gap's read back, tried again while the log elects its leader


class Feed:
    """Standing pull requests for one partition's consumer; `deliver(msg)` gets each message
    in the stream's order, on the event loop, until `stop()`."""

    def __init__(
        self,
        nc: NatsClient,
        partition: int,
        deliver: Callable[[Any], None],
        batch: int = 512,
        expires_s: float = 1.0,
        start: Resume | None = None,
        on_read_back: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.nc = nc
        self.partition = partition
        self.deliver = deliver
        self.batch = max(2, batch)
        self.expires_s = expires_s
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer_name(partition)}"
        self.inbox = nc.new_inbox()
        self.request = json.dumps({"batch": self.batch, "expires": int(expires_s * 1e9)}).encode()
        self.received = 0  # messages (not status notices) since the last request
        self.requests = 0
        # the last delivery this feed had: the consumer's count, the stream's sequence
        self.given = start.given if start is not None else None
        self.last_seq = start.delivered if start is not None else 0
        self.gap_filled = 0  # messages given out elsewhere, read back from the stream
        self.on_read_back = on_read_back
        self._more = asyncio.Event()
        self._stopped = False
        self._sub: Any = None

    async def run(self) -> None:
        """Keep a request waiting at the consumer's leader until stopped or cancelled."""
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_message)
        try:
            while not self._stopped:
                self.received = 0
                self._more.clear()
                await self.nc.publish(self.subject, self.request, reply=self.inbox)
                self.requests += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._more.wait(), self.expires_s * RENEW_AT)
        finally:
            await self._unsubscribe()

    async def _on_message(self, msg: Any) -> None:
        if self._stopped:
            return  # not judged, not acknowledged: given out again after the ack wait
        if not msg.data and msg.headers and Header.STATUS.value in msg.headers:
            status = msg.headers.get(Header.STATUS.value)
            if status not in ("408", "404", "100"):  # expired, nothing yet, heartbeat
                logger.info(
                    "partition %d: log says %s %s; asking again",
                    self.partition,
                    status,
                    msg.headers.get(Header.DESCRIPTION.value, ""),
                )
                self._more.set()
            return
        self.received += 1
        if self.received * 2 >= self.batch:
            self._more.set()
        md = msg.metadata
        given, seq = int(md.sequence.consumer), int(md.sequence.stream)
        if self.given is not None and given > self.given + 1 and seq > self.last_seq + 1:
            for missed in await self._read_back(self.last_seq, seq - 1, given):
                self.deliver(missed)
            if self._stopped:
                return
        self.given = given
        self.last_seq = max(self.last_seq, seq)
        self.deliver(msg)

    async def _read_back(self, after: int, upto: int, given: int) -> list[Any]:
        """The partition's messages in (after, upto], which the consumer gave out elsewhere;
        tried until read or stopped (messages behind wait in the inbox, keeping order)."""
        while not self._stopped:
            try:
                missed = await read_range(self.nc, self.partition, after, upto, given=2)
            except (nats_errors.Error, OSError) as err:
                logger.warning(
                    "partition %d: gap not read back yet (%s); retrying",
                    self.partition,
                    str(err) or type(err).__name__,
                )
                await asyncio.sleep(REFILL_RETRY_S)
                continue
            if missed:
                self.gap_filled += len(missed)
                self.on_read_back(len(missed))
                logger.warning(
                    "partition %d: %d message(s) given out elsewhere (deliveries %d to %d),"
                    " read back from the log",
                    self.partition,
                    len(missed),
                    (self.given or 0) + 1,
                    given - 1,
                )
            return missed
        return []

    def stop(self) -> None:
        """Nothing more is delivered from now on; the inbox goes when `run` ends."""
        self._stopped = True
        self._more.set()

    async def _unsubscribe(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
