"""The worker's side of the replicated log: the stream, one partition's durable consumer
(reset to its acknowledged position on takeover), and a log message as the pipeline reads it.

The device a message acts for is the one named by the `Gas-Topic` header (the MQTT topic
the edge received it on, after the broker's ACL tied it to the publishing account), never a
field of the payload: the pipeline's router takes the device id from the topic, exactly as
on the MQTT path, and refuses a payload that names another device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
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


def stream_config(replicas: int = 3) -> StreamConfig:
    """GAS_IN: every partition's subject, on file, replicated."""
    return StreamConfig(
        name=STREAM,
        subjects=[f"{INBOUND_PREFIX}.*"],
        num_replicas=replicas,
        storage=StorageType.FILE,
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
    """Where a partition's consumer resumes for its new owner.

    `from_seq`: the first stream sequence not acknowledged (every message after the last
    committed one is delivered again, in order). `seen_to`: the last stream sequence any
    earlier owner was delivered; messages up to it may have been judged and committed
    already, so they are marked redelivered (stored idempotently)."""

    from_seq: int
    seen_to: int


def _config(partition: int, ack_wait_s: float, start_seq: int | None) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=consumer_name(partition),
        filter_subject=inbound_subject(partition),
        # one ack per committed batch acknowledges every message before it
        ack_policy=AckPolicy.ALL,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=100_000,
        deliver_policy=DeliverPolicy.ALL if start_seq is None else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
    )


async def take_consumer(js: JetStreamContext, partition: int, ack_wait_s: float) -> Resume:
    """Make the partition's durable consumer start at its first unacknowledged message.

    A consumer an earlier owner left with messages delivered but not acknowledged would
    give them out again only after its ack wait (30 s) and behind newer ones; so it is
    re-created at the acknowledged floor: the backlog comes now and in order."""
    name = consumer_name(partition)
    try:
        info = await js.consumer_info(STREAM, name)
    except NotFoundError:
        await js.add_consumer(STREAM, _config(partition, ack_wait_s, None))
        return Resume(from_seq=1, seen_to=0)
    floor = int(info.ack_floor.stream_seq if info.ack_floor else 0)
    delivered = int(info.delivered.stream_seq if info.delivered else 0)
    if delivered <= floor and info.config.ack_wait == ack_wait_s:
        return Resume(from_seq=floor + 1, seen_to=floor)
    await js.delete_consumer(STREAM, name)
    await js.add_consumer(STREAM, _config(partition, ack_wait_s, floor + 1))
    return Resume(from_seq=floor + 1, seen_to=delivered)


def stream_seq(msg: Any) -> int:
    """A log message's sequence in the stream (unique across partitions)."""
    return int(msg.metadata.sequence.stream)


def to_message(msg: Any, seen_to: int) -> Message:
    """A log message as the pipeline reads a broker's PUBLISH: the topic from `Gas-Topic`
    (empty when missing: the router refuses it), QoS 1 with the stream sequence as the
    packet id (acknowledged after COMMIT), DUP when it may have been judged before."""
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
