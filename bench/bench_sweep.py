"""Benchmark: how long a mass sweep holds the gateway's event loop.

A whole district going silent (a cell tower down) or the first start over a fleet of old
meters makes one sweep raise an alarm, a work order or notice per device. The gateway
applies a sweep in parts (gateway.pipeline: TICK_SLOTS devices swept, APPLY_STEP alarms
applied per part, and handed to the writer process per part) and runs the event loop
between them, so socket reads and instant leaks are not held up for the whole event. This
prints the longest part beside the time the same sweep takes in one go, and the bound a
part must stay under (half the 10 ms alarm-latency budget). The gateway runs with the
collector off (as in service), so it is off here too.

    python bench/bench_sweep.py [--households 192000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gateway.pipeline.actions as actions
from gateway.pipeline.gateway import Gateway
from gateway.settings import Settings
from gateway.storage.rows import Batch
from gateway.storage.writer_process import frame

PART_LIMIT_MS = 5.0
T0 = 1_800_000_000.0


def rows(households: int) -> list[tuple]:
    out = []
    for i in range(households):
        building = f"C{i // 4000:02d}-B{i // 40:05d}"
        for did, kind, model in ((f"m{i:06d}", "meter", "GM-G2.5"),
                                 (f"d{i:06d}", "detector", "LD-100")):
            out.append((did, kind, model, f"h{i:06d}", dt.date(2024, 1, 1), "1 Road",
                        building[:3], building, "Ann", "+15550000001", None, 4.0))
    return out


def run(households: int, silent: int, step: int) -> dict[str, float]:
    """Sweep after `silent` households' devices went quiet for days; part times in ms."""
    step, actions.APPLY_STEP = actions.APPLY_STEP, step
    now = [T0]
    ids = itertools.count(1)
    gw = Gateway(Settings(), clock=lambda: now[0], new_id=lambda: f"gw-{next(ids)}")
    gw.load_devices(rows(households))
    gw.publish = lambda t, p: None
    handed: list[int] = []

    def submit(b: Batch) -> None:  # as to the writer process: pickled on the loop
        frame(("batch", b))
        handed.append(len(b.alarms))

    gw.submit = submit
    # the rest report, so only the silent ones go offline
    gw.state.last_seen[2 * silent:gw.state.n_devices] = T0 + 3 * 86400
    now[0] += 3 * 86400
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        parts: list[float] = []
        t = time.perf_counter()
        for _ in gw.tick_in_parts(now[0]):
            t2 = time.perf_counter()
            parts.append(t2 - t)
            t = t2
        gw.flush()  # the ticker's last step
        parts[-1] += time.perf_counter() - t
    finally:
        gc.enable()
        gc.unfreeze()
        actions.APPLY_STEP = step
    return {"alarms": sum(handed), "parts": len(parts),
            "max_part_ms": 1000 * max(parts), "total_ms": 1000 * sum(parts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--households", type=int, default=192_000)
    ap.add_argument("--silent", type=int, default=20_000, help="households gone quiet")
    a = ap.parse_args()
    step = actions.APPLY_STEP
    whole = run(a.households, a.silent, 10**9)
    parted = run(a.households, a.silent, step)
    assert whole["alarms"] == parted["alarms"]
    print(f"mass sweep: {a.households:,} households, {a.silent:,} silent for days "
          f"-> {parted['alarms']:,} alarms")
    print(f"{'figure':<44} {'measured':>9} {'limit':>7}")
    print(f"{'the whole sweep, CPU time (ms)':<44} {whole['total_ms']:>9.1f} {'-':>7}")
    print(f"{'longest part, ranges whole, one hand-over (ms)':<44} "
          f"{whole['max_part_ms']:>9.1f} {'-':>7}")
    print(f"{'longest part, applied in parts (ms)':<44} {parted['max_part_ms']:>9.1f} "
          f"{PART_LIMIT_MS:>7.1f}  {'ok' if parted['max_part_ms'] <= PART_LIMIT_MS else 'OVER'}")
    print(f"{'parts / total time in parts (ms)':<44} "
          f"{parted['parts']:>4} / {parted['total_ms']:.0f}")


if __name__ == "__main__":
    main()
