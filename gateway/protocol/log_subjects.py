"""The replicated log between the MQTT edge and the partition workers (NATS JetStream):
stream and subject names, and the headers a relayed message carries.

The edge relay receives a device's MQTT PUBLISH from its broker (whose ACL has already tied
the topic to the publishing account), looks up the device's building partition, and
publishes the payload unchanged to `gas.in.<partition>` with the MQTT topic in a header. The
topic stays the authority for which device a message acts for: a worker takes the device id
from `Gas-Topic`, never from the payload. Commands go the other way on `gas.cmd.<meter id>`:
every edge relay subscribes and publishes them to its broker, so a command reaches a meter
on whichever broker node its session lives.
"""

from __future__ import annotations

STREAM = "GAS_IN"
"""The stream of device messages: file storage, three replicas."""

INBOUND_PREFIX = "gas.in"
"""`gas.in.<partition>`: one subject per building partition, so each keeps arrival order."""

COMMAND_PREFIX = "gas.cmd"
"""`gas.cmd.<meter id>`: a valve command (its MQTT payload) for the edge to publish."""

HEADER_TOPIC = "Gas-Topic"
"""The MQTT topic the message arrived on at the edge, e.g. `gas/v1/M000001/reading`."""

HEADER_RECEIVED = "Gas-Received"
"""The edge's receive time, epoch seconds as a decimal string."""

HEADER_EDGE = "Gas-Edge"
"""The name of the edge node (broker + relay) that received the message."""

HEADER_MSG_ID = "Nats-Msg-Id"
"""JetStream's de-duplication id: `<topic>:<sha1 of the payload, 16 hex>`. A broker's
redelivery to the relay after a crash carries the same topic and payload, so the stream's
duplicate window absorbs it."""


def inbound_subject(partition: int) -> str:
    """The subject of a partition's device messages."""
    return f"{INBOUND_PREFIX}.{partition}"


def command_subject(meter_id: str) -> str:
    """The subject a valve command for one meter is published on."""
    return f"{COMMAND_PREFIX}.{meter_id}"


def consumer_name(partition: int) -> str:
    """The durable pull consumer of one partition: whoever owns the partition binds it."""
    return f"part-{partition}"
