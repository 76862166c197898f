"""Protocol v1 between devices and the platform: topics, payloads and reject reasons
(`messages`), and the MQTT packets that carry them (`packets`). `gateway.protocol` itself
is the device protocol: `from gateway import protocol; protocol.decode(...)`."""

from gateway.protocol.messages import (
    DEVICE_CHANNELS,
    DEVICE_ID_RE,
    MAX_PAYLOAD_BYTES,
    PREFIX,
    U32,
    Ack,
    Channel,
    Command,
    DetectorReading,
    DeviceEvent,
    MeterReading,
    Rejected,
    RejectReason,
    Status,
    Topic,
    decode,
    encode,
    parse_topic,
    topic,
)

__all__ = [
    "DEVICE_CHANNELS",
    "DEVICE_ID_RE",
    "MAX_PAYLOAD_BYTES",
    "PREFIX",
    "U32",
    "Ack",
    "Channel",
    "Command",
    "DetectorReading",
    "DeviceEvent",
    "MeterReading",
    "RejectReason",
    "Rejected",
    "Status",
    "Topic",
    "decode",
    "encode",
    "parse_topic",
    "topic",
]
