"""The fast lane: a valve cut for an instant leak as soon as its socket read arrives, ahead
of the readings queued before it.

A detector reading at or above its model's `leak_instant_lel` is a leak on its own (no
history needed). `instant_marks` finds such values in a raw socket read with one C regex
(`PublishFraming` then offers only the framed PUBLISHes holding one); `triage` decodes those
messages and cuts the valve at once. `Gateway.handle` later judges the same reading in its
turn and raises the alarm, work order and notice; the close it asks for is the one already
sent (linked through the shared `cuts`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, MutableSequence

from gateway import protocol
from gateway.core.alarms import AlarmKind
from gateway.core.commands import ValveCommand
from gateway.core.detection import FleetState
from gateway.core.registry import KIND_METER, Registry
from gateway.pipeline.ingest import U32, Router
from gateway.pipeline.metrics import Metrics
from gateway.protocol import Channel, Rejected
from gateway.protocol.packets import Message
from gateway.settings import DetectionSettings

logger = logging.getLogger(__name__)

# A detector reading's ch4 value, as devices write it.
_CH4 = re.compile(rb'"ch4"\s*:\s*([0-9]+(?:\.[0-9]*)?)')
_LEAK_BIT = 1 << AlarmKind.LEAK


def at_least(floor: float) -> re.Pattern[bytes]:
    """`_CH4`, matching only where the integer part of the value is at least `floor`'s, so
    that a C regex over a whole socket read of ordinary readings finds nothing at all.
    (A value written otherwise, `4e1` say, is not seen early; it is judged in its turn.)"""
    n = str(max(0, int(floor)))
    if n == "0":
        return _CH4
    alts = [f"[1-9][0-9]{{{len(n)},}}", n]  # more digits, or n itself
    for i, d in enumerate(n):
        if d != "9":
            alts.append(f"{n[:i]}[{int(d) + 1}-9][0-9]{{{len(n) - i - 1}}}")
    return re.compile(rb'"ch4"\s*:\s*(?=' + "|".join(alts).encode() + rb")([0-9]+(?:\.[0-9]*)?)")


def instant_floor(det: DetectionSettings) -> float:
    """The lowest instant-leak level of any model: below it no reading is looked at early."""
    return min(
        t.leak_instant_lel for t in [det.thresholds, *(det.for_model(m) for m in det.models)]
    )


class FastLane:
    """Instant leaks found in socket reads and cut before their turn.

    `cuts` (detector slot -> (seq, cmd_id) of the reading that was cut) is shared with
    `Actions`, which links the close when the reading is judged, and forgotten by `settle`.
    """

    def __init__(
        self,
        det: DetectionSettings,
        registry: Registry,
        state: FleetState,
        router: Router,
        last_seq: MutableSequence[int],
        metrics: Metrics,
        cuts: dict[int, tuple[int, str]],
        close_valve: Callable[[str, str, AlarmKind, float], ValveCommand | None],
    ) -> None:
        self.registry = registry
        self.state = state
        self.router = router
        self.last_seq = last_seq
        self.metrics = metrics
        self.cuts = cuts
        self.close_valve = close_valve
        self.floor = instant_floor(det)
        self._instant_re = at_least(self.floor)

    def triage(self, messages: list[Message], now: float) -> int:
        """Cut the gas at once for instant leaks, before the readings queued ahead of them.

        Only fresh, valid readings of a provisioned detector with a household meter and no
        open LEAK count. Returns the number of valves cut here.
        """
        cut = 0
        floor = self.floor
        search = _CH4.search
        for msg in messages:
            m = search(msg.payload)
            if m is not None and float(m.group(1)) >= floor:
                cut += self._cut_for(msg, now)
        return cut

    def instant_marks(self, data: bytes) -> list[int]:
        """Where a socket read holds a ch4 value at or above the lowest instant-leak level
        (a C regex over the read; for `PublishFraming`, which offers only the framed
        PUBLISHes whose payload holds one, and `triage` then decodes each as its own
        topic's reading). Usually empty."""
        floor = self.floor
        return [m.start() for m in self._instant_re.finditer(data) if float(m.group(1)) >= floor]

    def settle(self) -> None:
        """Forget fast cuts whose reading `handle` has now judged in order."""
        last_seq = self.last_seq
        for slot, (seq, _) in list(self.cuts.items()):
            if (last_seq[slot] - seq) % U32 < U32 // 2:
                del self.cuts[slot]

    def _cut_for(self, msg: Message, now: float) -> int:
        try:
            device_id, channel, slot = self.router.lookup(msg.topic)
            if channel is not Channel.TELEMETRY or self.registry.kind[slot] == KIND_METER:
                return 0
            reading = protocol.decode(protocol.DetectorReading, msg.payload, device_id)
        except Rejected:
            return 0  # `handle` rejects it with its reason
        last = self.last_seq[slot]
        if last >= 0 and not 0 < (reading.seq - last) % U32 < U32 // 2:
            return 0  # not fresh: a replay or redelivery
        state = self.state
        meter = int(state.meter_slot[slot])
        if (
            meter < 0
            or slot in self.cuts
            or int(state.active[slot]) & _LEAK_BIT
            or reading.ch4 < state.thresholds(int(state.model[slot])).leak_instant_lel
        ):
            return 0
        cmd = self.close_valve(self.registry.ids[meter], device_id, AlarmKind.LEAK, now)
        if cmd is None:
            return 0  # a close is already on its way
        self.cuts[slot] = (reading.seq, cmd.cmd_id)
        self.metrics.fast_lane.inc()
        return 1
