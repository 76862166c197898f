"""The worker's side of the replicated log: the stream, one partition's durable consumer
(reset to its acknowledged position on takeover), and a log message as the pipeline reads it.

The device a message acts for is the one named by the `Gas-Topic` header (the MQTT topic
the edge received it on, after the broker's ACL tied it to the publishing account), never a
field of the payload: the pipeline's router takes the device id from the topic, exactly as
on the MQTT path, and refuses a payload that names another device.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from gateway.protocol.log_subjects import (
    HEADER_TOPIC,
    INBOUND_PREFIX,
    STREAM,
    consumer_name,
    inbound_subject,
)
from gateway.protocol.packets import Message

logger = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 120.0
"""The stream's de-duplication window for `Nats-Msg-Id` (an edge's resends)."""


MAX_AGE_S = 7 * 86400
"""What the stream keeps: a week (a worker down longer than that has lost its backlog)."""


def stream_config(replicas: int = 3) -> StreamConfig:
    """GAS_IN: every partition's subject, on file, replicated; the same configuration as the
    cluster stack's (gateway.ops.nats_cluster), whichever creates it first."""
    return StreamConfig(
        name=STREAM,
        subjects=[f"{INBOUND_PREFIX}.>"],
        num_replicas=replicas,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        max_age=MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


async def ensure_stream(js: JetStreamContext, replicas: int = 3) -> None:
    """Create the stream unless it exists (whoever starts first: an edge relay or a worker)."""
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(stream_config(replicas))
        logger.info("stream %s created replicas=%d", STREAM, replicas)


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a partition's consumer stands when a new owner takes it.

    `floor`: the last stream sequence acknowledged, i.e. committed. `delivered`: the last
    one an earlier owner was given. Messages in (floor, delivered] may or may not have been
    committed; the consumer would give them out again only after its ack wait and behind
    newer ones, so the new owner reads them first itself (`read_backlog`). `given`: the
    consumer's count of deliveries so far (its consumer sequence), from which the new
    owner's feed sees whether a delivery went elsewhere (`gateway.cluster.feed`); None when
    unknown."""

    floor: int
    delivered: int
    given: int | None = None


def _config(partition: int, ack_wait_s: float) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=consumer_name(partition),
        filter_subject=inbound_subject(partition),
        # one ack per committed batch acknowledges every message before it
        ack_policy=AckPolicy.ALL,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=100_000,
        deliver_policy=DeliverPolicy.ALL,
    )


async def ensure_consumers(js: JetStreamContext, partitions: int, ack_wait_s: float) -> int:
    """Create the partitions' durable consumers that do not exist yet (in parallel: each is
    a replicated group of its own, a few hundred ms to create). Returns how many."""
    sem = asyncio.Semaphore(16)

    async def one(p: int) -> int:
        async with sem:
            try:
                await js.consumer_info(STREAM, consumer_name(p))
                return 0
            except NotFoundError:
                await js.add_consumer(STREAM, _config(p, ack_wait_s))
                return 1

    return sum(await asyncio.gather(*(one(p) for p in range(partitions))))


async def prepare(js: JetStreamContext, partitions: int, ack_wait_s: float) -> bool:
    """The stream and the partitions' consumers exist; False (logged) while the log's
    cluster cannot create them yet (no JetStream leader)."""
    try:
        await ensure_stream(js)
        made = await ensure_consumers(js, partitions, ack_wait_s)
    except nats_errors.Error as err:
        logger.warning("log not ready (%s); retrying", str(err) or type(err).__name__)
        return False
    if made:
        logger.info("created %d partition consumer(s)", made)
    return True


async def take_consumer(
    js: JetStreamContext, partition: int, ack_wait_s: float, timeout_s: float | None = None
) -> Resume:
    """The partition's consumer position (created when missing)."""
    try:
        info = await js.consumer_info(STREAM, consumer_name(partition), timeout=timeout_s)
    except NotFoundError:
        await js.add_consumer(STREAM, _config(partition, ack_wait_s))
        return Resume(0, 0, 0)
    floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
    delivered = int(info.delivered.stream_seq or 0) if info.delivered else 0
    given = int(info.delivered.consumer_seq or 0) if info.delivered else 0
    return Resume(floor, max(floor, delivered), given)


@dataclass(frozen=True)
class _Sequence:
    stream: int


@dataclass(frozen=True)
class _Metadata:
    sequence: _Sequence
    num_delivered: int


@dataclass(frozen=True)
class StoredMessage:
    """A log message read back by its sequence: what `to_message` and `stream_seq` read of a
    delivered one. Given once to an earlier owner, so delivered once at least."""

    data: bytes
    headers: dict[str, str] | None
    metadata: _Metadata

    async def ack(self) -> None:
        """Nothing to send: a message read by sequence has no delivery of its own; the
        partition's next acknowledged delivery (AckAll) covers it."""


async def read_backlog(
    nc: NATS, partition: int, resume: Resume, timeout_s: float = 1.0
) -> list[Any]:
    """The partition's messages in (floor, delivered], in order, read one by one from the
    stream's leader (`STREAM.MSG.GET`, the next message on the partition's subject).

    No consumer is made for this: creating one needs the log's metadata leader to place it,
    and just after a log node dies it can be placed on the dead node and time out until the
    log counts that node offline (measured: 30 s and more, the takeover's leak waiting
    behind it). A read by sequence needs only the stream's leader, which the feed needs too.
    A read gets no answer while the stream elects its leader: `timeout_s` is short, so that
    the caller's next try comes soon after the log answers again.
    """
    return await read_range(nc, partition, resume.floor, resume.delivered, timeout_s)


async def read_range(
    nc: NATS, partition: int, after: int, upto: int, timeout_s: float = 1.0, given: int = 1
) -> list[Any]:
    """The partition's messages with stream sequence in (after, upto], in order, read by
    sequence as `read_backlog` does. `given`: how many times each counts as given out
    (above 1, the pipeline reads it as a redelivery)."""
    js = nc.jetstream(timeout=timeout_s)
    subject = inbound_subject(partition)
    out: list[Any] = []
    seq = after + 1
    while seq <= upto:
        try:
            raw = await js.get_msg(STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break  # nothing more: the rest was removed from the stream
        if raw.seq is None or raw.seq > upto:
            break
        out.append(
            StoredMessage(
                data=raw.data or b"",
                headers=raw.headers,
                metadata=_Metadata(_Sequence(int(raw.seq)), num_delivered=given),
            )
        )
        seq = int(raw.seq) + 1
    return out


def stream_seq(msg: Any) -> int:
    """A log message's sequence in the stream (unique across partitions)."""
    return int(msg.metadata.sequence.stream)


def to_message(msg: Any, seen_to: int) -> Message:
    """A log message as the pipeline reads a broker's PUBLISH: the topic from `Gas-Topic`
    (empty when missing: the router refuses it), QoS 1 with the stream sequence as the
    packet id (acknowledged after COMMIT), DUP when it may have been judged before (given
    out before, or up to `seen_to`, the last sequence an earlier owner was given)."""
    md = msg.metadata
    seq = int(md.sequence.stream)
    headers = msg.headers or {}
    return Message(
        topic=headers.get(HEADER_TOPIC, ""),
        payload=msg.data,
        qos=1,
        packet_id=seq,
        dup=md.num_delivered > 1 or seq <= seen_to,
        retain=False,
    )
