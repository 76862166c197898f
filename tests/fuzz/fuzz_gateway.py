"""Coverage-guided fuzzing (atheris) of the decoder and the gateway's hot path.

    .venv/bin/python tests/fuzz/fuzz_gateway.py -atheris_runs=200000

Any exception other than a counted reject is a crash that atheris reports with its input.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sys

import atheris

with atheris.instrument_imports():
    from gateway import protocol
    from gateway.pipeline.gateway import Gateway
    from gateway.protocol.packets import Message
    from gateway.settings import Settings

NOW = 1_800_000_000.0
ROWS = [(did, kind, "M", "h1", dt.date(2024, 1, 1), "1 Road", "C00", "B0", "Ann", "+1555", None,
         4.0) for did, kind in (("m1", "meter"), ("d1", "detector"))]
_IDS = itertools.count(1)
GW = Gateway(Settings(), clock=lambda: NOW, new_id=lambda: f"gw-{next(_IDS)}")
GW.load_devices(ROWS)
GW.publish = lambda t, p: None
GW.submit = lambda b: None
TOPICS = ["gas/v1/d1/telemetry", "gas/v1/m1/telemetry", "gas/v1/m1/ack", "gas/v1/d1/status",
          "gas/v1/d1/event", "gas/v1/x/telemetry", "gas/v1/d1/cmd"]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    topic = TOPICS[fdp.ConsumeIntInRange(0, len(TOPICS) - 1)] if fdp.ConsumeBool() \
        else fdp.ConsumeUnicodeNoSurrogates(40)
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
    for cls in (protocol.DetectorReading, protocol.MeterReading, protocol.Ack):
        try:
            protocol.decode(cls, payload, "d1")
        except protocol.Rejected:
            pass
    GW.handle([Message(topic, payload, 1, 1, fdp.ConsumeBool(), False)], NOW)
    if len(GW.batch.packet_ids) > 1000:
        GW.flush()


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
