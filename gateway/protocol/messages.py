"""Device protocol v1: topic grammar, payload structs and the validating decoder.

The single source of truth for what devices say and what the platform answers
(conformance vectors in tests/data/cases.json). Pure: no I/O, so the gateway, the
simulator, the API and the tests all speak exactly the same protocol.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

import msgspec

PREFIX = "gas/v1"
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
U32 = 2**32
MAX_PAYLOAD_BYTES = 4096  # a reading is ~120 bytes; anything far larger is hostile


class Channel(StrEnum):
    TELEMETRY = "telemetry"
    EVENT = "event"
    STATUS = "status"
    CMD = "cmd"
    ACK = "ack"


DEVICE_CHANNELS = frozenset({Channel.TELEMETRY, Channel.EVENT, Channel.STATUS, Channel.ACK})


class RejectReason(StrEnum):
    """Why a message was refused; each is a counter label and a rejects-table value."""

    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_VALVE_STATE = "unknown_valve_state"
    OVERSIZED = "oversized"
    BAD_TOPIC = "bad_topic"
    BAD_DEVICE_ID = "bad_device_id"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_COMMAND = "unknown_command"
    SEQ_REPLAYED = "seq_replayed"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    WRONG_DEVICE_KIND = "wrong_device_kind"  # an event this kind of device cannot raise
    CLOCK_SKEW = "clock_skew"  # an event whose device clock is too far from the platform's


class Rejected(Exception):
    """A message the platform refuses, with a counted reason and a human detail."""

    def __init__(self, reason: RejectReason, detail: str, device_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.device_id = device_id


# ---------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class Topic:
    device_id: str
    channel: Channel


def topic(device_id: str, channel: Channel | str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{device_id}/{channel}"


def parse_topic(name: str, prefix: str = PREFIX) -> Topic:
    """Split `{prefix}/{id}/{channel}`; raise Rejected with the precise fault."""
    if not name.startswith(prefix + "/"):
        raise Rejected(RejectReason.BAD_TOPIC, f"topic {name!r} is outside {prefix}/")
    rest = name[len(prefix) + 1 :]
    device_id, sep, channel = rest.rpartition("/")
    if not sep or not DEVICE_ID_RE.fullmatch(device_id):
        raise Rejected(
            RejectReason.BAD_DEVICE_ID, f"device id {device_id!r} is outside [A-Za-z0-9_-]{{1,64}}"
        )
    try:
        ch = Channel(channel)
    except ValueError:
        raise Rejected(
            RejectReason.UNKNOWN_CHANNEL, f"no channel {channel!r} in protocol v1", device_id
        ) from None
    return Topic(device_id, ch)


# ---------------------------------------------------------------- payloads

Seq = Annotated[int, msgspec.Meta(ge=0, lt=U32)]
Epoch = Annotated[float, msgspec.Meta(ge=0)]
ValveState = Literal["open", "closed", "fault"]


class DetectorReading(msgspec.Struct, frozen=True):
    seq: Seq
    ts: Epoch
    ch4: Annotated[float, msgspec.Meta(ge=0, le=100)]  # %LEL
    fault: Annotated[int, msgspec.Meta(ge=0, lt=U32)] = 0


class MeterReading(msgspec.Struct, frozen=True):
    seq: Seq
    ts: Epoch
    vol: Annotated[float, msgspec.Meta(ge=0)]  # cumulative m3
    flow: Annotated[float, msgspec.Meta(ge=0, le=1000)]  # m3/h
    valve: ValveState
    batt: Annotated[float, msgspec.Meta(ge=0, le=10)] = 3.6  # volts
    rssi: Annotated[int, msgspec.Meta(ge=-200, le=0)] = -80  # dBm


EventType = Literal["local_alarm", "valve_closed_local", "self_test", "tamper", "power_on", "fault"]


class DeviceEvent(msgspec.Struct, frozen=True):
    seq: Seq
    ts: Epoch
    type: EventType
    # self_test: its outcome, `"ok": false` or `"result": "fail"` a failure (either may be
    # absent; other fields are ignored, as protocol v1 says)
    ok: bool | None = None
    result: str | None = None

    @property
    def failed(self) -> bool:
        return self.ok is False or (self.result or "").lower() in ("fail", "failed", "error")


class Status(msgspec.Struct, frozen=True):
    online: bool
    fw: str | None = None
    model: str | None = None


class Ack(msgspec.Struct, frozen=True):
    cmd_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    ok: bool
    ts: Epoch
    valve: ValveState | None = None
    error: str | None = None


Action = Literal["valve_close", "valve_open", "self_test"]


class Command(msgspec.Struct, frozen=True):
    cmd_id: str
    action: Action
    reason: str
    ts: float


_decoders: dict[type, msgspec.json.Decoder] = {
    cls: msgspec.json.Decoder(cls)
    for cls in (DetectorReading, MeterReading, DeviceEvent, Status, Ack, Command)
}
_encoder = msgspec.json.Encoder()


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def _classify(err: msgspec.ValidationError) -> RejectReason:
    msg = str(err)
    if msg.startswith("Object missing required field"):
        return RejectReason.MISSING_FIELD
    if "Invalid enum value" in msg and msg.endswith("`$.type`"):
        return RejectReason.UNKNOWN_EVENT_TYPE
    if "Invalid enum value" in msg and "valve" in msg:
        return RejectReason.UNKNOWN_VALVE_STATE
    if msg.startswith("Expected `object`"):
        return RejectReason.NOT_OBJECT
    if any(op in msg for op in (">=", "<=", "> ", "< ", "length")):
        return RejectReason.OUT_OF_RANGE
    return RejectReason.WRONG_TYPE


T = TypeVar("T")


def decode(
    cls: type[T], payload: bytes, device_id: str | None = None, max_bytes: int = MAX_PAYLOAD_BYTES
) -> T:
    """Decode `payload` into `cls`, or raise Rejected with the precise reason."""
    if len(payload) > max_bytes:
        raise Rejected(
            RejectReason.OVERSIZED, f"{len(payload)} bytes, limit {max_bytes}", device_id
        )
    try:
        return _decoders[cls].decode(payload)
    except msgspec.ValidationError as err:
        raise Rejected(_classify(err), str(err), device_id) from None
    except msgspec.DecodeError as err:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected(RejectReason.NOT_UTF8, "payload is not UTF-8", device_id) from None
        raise Rejected(RejectReason.NOT_JSON, str(err), device_id) from None
