"""Misbehaviour on purpose: what broken or hostile devices send, and what the platform owes.

Each kind maps to the reject reason the gateway must record for it (protocol.RejectReason),
or to None when the message is valid but awkward (a sequence gap, a repeat, a skewed clock,
a flood) or never reaches the platform (a device publishing on another device's topic is
refused by the broker's ACL). The runner counts what it sent per kind, so a run can check
the gateway's reject counters against it.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from gateway.protocol import RejectReason


class Chaos(StrEnum):
    MALFORMED_JSON = "malformed_json"
    NOT_UTF8 = "not_utf8"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_VALVE_STATE = "unknown_valve_state"
    UNKNOWN_DEVICE = "unknown_device"
    OVERSIZED = "oversized"
    SEQ_GAP = "seq_gap"
    SEQ_REPEAT = "seq_repeat"
    CLOCK_SKEW = "clock_skew"
    FLOOD = "flood"
    FOREIGN_TOPIC = "foreign_topic"


EXPECTED_REJECT: dict[Chaos, str | None] = {
    Chaos.MALFORMED_JSON: RejectReason.NOT_JSON,
    Chaos.NOT_UTF8: RejectReason.NOT_UTF8,
    Chaos.NOT_OBJECT: RejectReason.NOT_OBJECT,
    Chaos.MISSING_FIELD: RejectReason.MISSING_FIELD,
    Chaos.WRONG_TYPE: RejectReason.WRONG_TYPE,
    Chaos.OUT_OF_RANGE: RejectReason.OUT_OF_RANGE,
    Chaos.UNKNOWN_VALVE_STATE: RejectReason.UNKNOWN_VALVE_STATE,
    Chaos.UNKNOWN_DEVICE: RejectReason.UNKNOWN_DEVICE,
    Chaos.OVERSIZED: RejectReason.OVERSIZED,
    Chaos.SEQ_GAP: None,  # accepted; the platform may count the gap
    Chaos.SEQ_REPEAT: None,  # an exact duplicate: absorbed by the unique key
    Chaos.CLOCK_SKEW: None,  # accepted, stored with receive time and flagged
    Chaos.FLOOD: None,  # valid readings, many at once
    Chaos.FOREIGN_TOPIC: None,  # the broker refuses it (ACL): the platform never sees it
}

PAYLOAD_KINDS = (
    Chaos.MALFORMED_JSON,
    Chaos.NOT_UTF8,
    Chaos.NOT_OBJECT,
    Chaos.MISSING_FIELD,
    Chaos.WRONG_TYPE,
    Chaos.OUT_OF_RANGE,
    Chaos.UNKNOWN_VALVE_STATE,
    Chaos.UNKNOWN_DEVICE,
    Chaos.OVERSIZED,
)
STREAM_KINDS = (Chaos.SEQ_GAP, Chaos.SEQ_REPEAT, Chaos.CLOCK_SKEW, Chaos.FLOOD)
MAX_OVERSIZED = 1_000_000
FLOOD_BURST = 50
SKEW_S = 86_400.0


def bad_payload(
    kind: Chaos, is_meter: bool, seq: int, ts: float, rng: np.random.Generator
) -> bytes:
    """A payload that must be rejected for `kind` (one of PAYLOAD_KINDS)."""
    if kind is Chaos.MALFORMED_JSON:
        return b'{"seq": %d, "ts": %d' % (seq, int(ts))
    if kind is Chaos.NOT_UTF8:
        return b"\xff\xfe{\xc3(}"
    if kind is Chaos.NOT_OBJECT:
        return b"[%d, %.3f, 1.0]" % (seq, ts)
    if kind is Chaos.MISSING_FIELD:
        if is_meter:
            return b'{"seq":%d,"ts":%.3f,"flow":0.1,"valve":"open"}' % (seq, ts)
        return b'{"seq":%d,"ts":%.3f,"fault":0}' % (seq, ts)
    if kind is Chaos.WRONG_TYPE:
        if is_meter:
            return (
                b'{"seq":%d,"ts":%.3f,"vol":"12.5","flow":0.1,"valve":"open","batt":3.5,'
                b'"rssi":-80}' % (seq, ts)
            )
        return b'{"seq":%d,"ts":%.3f,"ch4":"3.2","fault":0}' % (seq, ts)
    if kind is Chaos.OUT_OF_RANGE:
        if is_meter:
            return (
                b'{"seq":%d,"ts":%.3f,"vol":12.5,"flow":-0.5,"valve":"open","batt":3.5,'
                b'"rssi":-80}' % (seq, ts)
            )
        return b'{"seq":%d,"ts":%.3f,"ch4":140.0,"fault":0}' % (seq, ts)
    if kind is Chaos.UNKNOWN_VALVE_STATE:
        return (
            b'{"seq":%d,"ts":%.3f,"vol":12.5,"flow":0.1,"valve":"half","batt":3.5,'
            b'"rssi":-80}' % (seq, ts)
        )
    if kind is Chaos.UNKNOWN_DEVICE:
        return b'{"seq":%d,"ts":%.3f,"ch4":1.0,"fault":0}' % (seq, ts)
    if kind is Chaos.OVERSIZED:
        size = int(min(MAX_OVERSIZED, 5_000 * 2 ** rng.uniform(0, np.log2(MAX_OVERSIZED / 5_000))))
        head = b'{"seq":%d,"ts":%.3f,"ch4":1.0,"fault":0,"pad":"' % (seq, ts)
        return head + b"x" * max(0, size - len(head) - 2) + b'"}'
    raise ValueError(f"{kind} is not a payload fault")


def choose(rng: np.random.Generator, per_device: bool, is_meter: bool) -> Chaos:
    """Pick a kind; meters only get the valve fault, per-device mode adds foreign topics."""
    kinds = [
        k for k in (*PAYLOAD_KINDS, *STREAM_KINDS) if k is not Chaos.UNKNOWN_VALVE_STATE or is_meter
    ]
    if per_device:
        kinds.append(Chaos.FOREIGN_TOPIC)
    return kinds[int(rng.integers(len(kinds)))]
