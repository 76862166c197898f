"""The fast lane's look into each socket read, against the split that it runs ahead of.

    python bench/bench_lookahead.py [--packets 550] [--reads 2000]

As a read arrives, the gateway walks its packet headers and looks into the payloads of
whole PUBLISHes where a C regex found an instant-leak value (`PublishFraming.feed` with
`Gateway.instant_marks`); the same read is split into messages later, one read per loop
turn (`split_packets`). The look must stay a small fraction of the split, which every
read pays anyway. Prints both per read and per packet, and writes
bench/results/lookahead.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from feed import Harness

from gateway.protocol.packets import PublishFraming, encode_publish, split_packets


def read_of(packets: int, leaks: int) -> bytes:
    rng = random.Random(1)
    out = []
    for i in range(1, packets + 1):
        ch4 = 45.0 if i <= leaks else round(rng.random() * 30, 2)
        body = json.dumps({"seq": i, "ts": 1764000000.123, "ch4": ch4, "fault": 0}).encode()
        out.append(encode_publish(f"gas/v1/d{i % 3 + 1}/telemetry", body, 1, i % 65535 + 1))
    return b"".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=550, help="readings in one socket read")
    ap.add_argument("--reads", type=int, default=2000, help="timed repetitions")
    args = ap.parse_args()
    gw = Harness().gw
    results = {}
    for leaks in (0, 1):
        data = read_of(args.packets, leaks)
        framing = PublishFraming()
        look = min(timeit.repeat(lambda: framing.feed(data, gw.instant_marks),  # noqa: B023
                                 number=args.reads, repeat=3)) / args.reads
        split = min(timeit.repeat(lambda: split_packets(data),  # noqa: B023
                                  number=args.reads, repeat=3)) / args.reads
        results[f"leaks_{leaks}"] = {"look_us": look * 1e6, "split_us": split * 1e6,
                                     "ratio": look / split}
        print(f"read of {args.packets} readings ({len(data)} B), {leaks} instant leak(s): "
              f"look {look * 1e6:.0f} us ({look * 1e6 / args.packets:.2f} us/packet) vs "
              f"split {split * 1e6:.0f} us ({split * 1e6 / args.packets:.2f} us/packet): "
              f"{look / split:.2f} of the split")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lookahead.json").write_text(json.dumps(
        {"at": dt.datetime.now(dt.UTC).isoformat(), "packets": args.packets, **results},
        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
