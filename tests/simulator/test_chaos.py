"""Every deliberate bad payload is refused by the platform's own decoder for the reason we count."""

from __future__ import annotations

import numpy as np
import pytest

from gateway import protocol
from simulator import chaos as ch
from simulator.chaos import Chaos

CASES = [(k, m) for k in ch.PAYLOAD_KINDS for m in (False, True)
         if k is not Chaos.UNKNOWN_DEVICE and (m or k is not Chaos.UNKNOWN_VALVE_STATE)]


@pytest.mark.parametrize(("kind", "is_meter"), CASES)
def test_bad_payload_is_rejected_for_the_expected_reason(kind: Chaos, is_meter: bool) -> None:
    rng = np.random.default_rng(1)
    payload = ch.bad_payload(kind, is_meter, 41, 1_764_000_000.5, rng)
    cls = protocol.MeterReading if is_meter else protocol.DetectorReading
    with pytest.raises(protocol.Rejected) as err:
        protocol.decode(cls, payload)
    assert err.value.reason == ch.EXPECTED_REJECT[kind]


def test_oversized_payloads_reach_a_megabyte_but_not_beyond() -> None:
    rng = np.random.default_rng(2)
    sizes = [len(ch.bad_payload(Chaos.OVERSIZED, False, 1, 1.0, rng)) for _ in range(300)]
    assert min(sizes) > protocol.MAX_PAYLOAD_BYTES
    assert max(sizes) <= ch.MAX_OVERSIZED and max(sizes) > 500_000


def test_ghost_payload_is_a_valid_reading() -> None:
    payload = ch.bad_payload(Chaos.UNKNOWN_DEVICE, False, 1, 1.0, np.random.default_rng(0))
    protocol.decode(protocol.DetectorReading, payload)  # refused for its topic, not its body


def test_choose_respects_mode_and_device() -> None:
    rng = np.random.default_rng(3)
    det = {ch.choose(rng, False, False) for _ in range(2000)}
    assert Chaos.UNKNOWN_VALVE_STATE not in det and Chaos.FOREIGN_TOPIC not in det
    assert Chaos.FOREIGN_TOPIC in {ch.choose(rng, True, True) for _ in range(2000)}
