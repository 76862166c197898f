"""Benchmark of the detection core against ARCHITECTURE section 6 (fleet size).

State for the whole city (192 k households: a meter and one or two detectors each,
about 400 k devices) must stay well under 200 MB, and a batch of 10 k mixed readings
must go through every rule in well under 1 ms: one batch here is evaluate_detectors
plus evaluate_meters (every reading-driven rule, repeats in arrival order); the sweep
(offline, service life, flow runs between readings) is timed apart, as the gateway
runs it on a timer. Three repeat mixes take turns: realistic (1 % second readings),
none, and a stress mix (5 %, with triples). Wall time is what a batch waits; CPU time
leaves out time other processes take the core, and the load average is printed, as
on a shared machine both matter. Prints each figure beside its bound and writes them
to bench/results/detection.json.

Both engines run the same batches on two fleets built alike: the compiled one
(gateway/core/compiled.py, numba) is the headline figure, the NumPy one (the specification)
is printed beside it. Their Effects are compared after every batch, and their states
byte for byte at the end: "engines agree" must say yes.

    python bench/bench_detection.py [--runs 600] [--households 192000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.core.alarms import DeviceKind, ValveCode
from gateway.core.effects import Effects
from gateway.core.fleet import FleetState
from gateway.core.gas_rules import evaluate_detectors
from gateway.core.meter_rules import evaluate_meters
from gateway.core.sweep import sweep
from gateway.core.thresholds import Thresholds

RESULTS = Path(__file__).resolve().parent / "results"
MEMORY_LIMIT_MB = 200.0
BATCH_LIMIT_MS = 1.0
SWEEP_BUDGET_MS = 20.0  # project budget: a sweep every second stays under 2 % of a core
BATCH = 10_000
BLOCK = 30  # runs an engine does in a row before the other takes its turn
# Repeats: in a realistic batch (a fraction of a second of traffic) a device appears
# twice only when it reports fast, in alarm mode: 1 % of readings are a second reading.
# The stress case (a reconnect storm replaying buffers) has 5 %, with triples.
REPEATS = {"realistic": (0.01, False), "none": (0.0, False), "stress": (0.05, True)}
T0 = 1_764_000_000.0

# A detector model calibrated differently and a battery (NB-IoT) meter model that reports
# hourly: per-model thresholds are on the hot path, as in production.
MODELS = {
    1: Thresholds(heartbeat_s=3600.0),
    2: Thresholds(prealarm_lel=12.0, leak_lel=25.0, leak_instant_lel=45.0),
}


def build_fleet(households: int, rng: np.random.Generator,
                engine: str = "auto") -> tuple[FleetState, dict]:
    n_det = rng.choice([1, 2], size=households, p=[0.92, 0.08])
    total = households + int(n_det.sum())
    state = FleetState(capacity=total, models=MODELS, engine=engine)
    hh = np.arange(households, dtype=np.int32)
    meters = state.add_devices(
        kinds=np.full(households, DeviceKind.METER, dtype=np.uint8),
        household=hh,
        meter_slot=np.full(households, -1, dtype=np.int32),
        model=rng.choice([0, 1], size=households, p=[0.7, 0.3]).astype(np.int16),
        qmax_m3h=rng.choice([1.6, 2.5, 4.0], size=households).astype(np.float32),
        installed_ts=T0 - rng.uniform(0, 12 * 365.25 * 86400, households),
        last_seen=T0,
    )
    det_hh = np.repeat(hh, n_det)
    detectors = state.add_devices(
        kinds=np.full(det_hh.size, DeviceKind.DETECTOR, dtype=np.uint8),
        household=det_hh,
        meter_slot=meters[det_hh],
        model=rng.choice([0, 2], size=det_hh.size, p=[0.8, 0.2]).astype(np.int16),
        qmax_m3h=np.full(det_hh.size, np.nan, dtype=np.float32),
        installed_ts=T0 - rng.uniform(0, 6 * 365.25 * 86400, det_hh.size),
        last_seen=T0,
    )
    return state, {"meters": meters, "detectors": detectors}


def make_batch(fleet: dict, rng: np.random.Generator, t: float,
               repeats: tuple[float, bool]) -> dict:
    """10 k readings, detectors and meters in fleet proportion, with repeats and incidents."""
    det, met = fleet["detectors"], fleet["meters"]
    n_det = int(round(BATCH * det.size / (det.size + met.size)))
    n_met = BATCH - n_det
    share, triples = repeats

    def pick(slots: np.ndarray, n: int) -> np.ndarray:
        n_rep = int(n * share)
        first = rng.choice(slots, size=n - n_rep, replace=False)
        again = rng.choice(first, size=n_rep, replace=triples)
        return np.concatenate([first, again])  # a device's later readings come later

    ds = pick(det, n_det)
    # background: mostly a flat 0 (sensor resolution 0.1 %LEL), some noise above it
    ch4 = np.round(np.maximum(rng.normal(0.0, 0.6, n_det), 0.0), 1).astype(np.float32)
    u = rng.random(n_det)
    ch4[u < 0.02] = rng.uniform(5, 15, int((u < 0.02).sum()))  # cooking, rises
    ch4[u < 0.002] = rng.uniform(18, 60, int((u < 0.002).sum()))  # leaks
    fault = (ds.astype(np.int64) * 2654435761 % 1000 == 0).astype(np.uint32)  # 0.1 % faulty
    ms = pick(met, n_met)
    # per-meter traits, stable from batch to batch as in a real fleet
    key = ms.astype(np.int64) * 2654435761 % 1000
    flow = np.where(rng.random(n_met) < 0.6, 0.0, rng.uniform(0.05, 2.0, n_met))
    flow[key < 5] = 0.02  # a micro leak behind 0.5 % of meters
    flow[rng.random(n_met) < 0.0005] = 8.0  # a hose came off
    valve = np.where(key == 999, ValveCode.CLOSED, ValveCode.OPEN).astype(np.uint8)
    flow[key == 999] = 0.0  # closed valves hold
    batt = (3.55 + 0.02 * rng.standard_normal(n_met)).astype(np.float32)
    batt[(key >= 990) & (key < 995)] = 3.2  # 0.5 % with a low battery
    return {
        "det": (ds.astype(np.int32), ch4, fault, t + rng.uniform(0, 1, n_det)),
        "met": (ms.astype(np.int32), flow.astype(np.float32),
                rng.uniform(0, 5000, n_met), valve, batt, t + rng.uniform(0, 1, n_met)),
    }


def run_batch(state: FleetState, batch: dict, now: float) -> tuple[Effects, Effects]:
    d = batch["det"]
    m = batch["met"]
    e1 = evaluate_detectors(state, d[0], d[1], d[2], d[3], now)
    e2 = evaluate_meters(state, m[0], m[1], m[2], m[3], m[4], m[5], now)
    return e1, e2


def same_effects(a: tuple[Effects, ...], b: tuple[Effects, ...]) -> bool:
    return all(getattr(x, f).dtype == getattr(y, f).dtype
               and getattr(x, f).tobytes() == getattr(y, f).tobytes()
               for x, y in zip(a, b) for f in Effects.__dataclass_fields__)


def same_state(a: FleetState, b: FleetState) -> bool:
    return (a.records_bytes.tobytes() == b.records_bytes.tobytes()
            and a.rise_lel.tobytes() == b.rise_lel.tobytes()
            and a.rise_ts.tobytes() == b.rise_ts.tobytes())


def warm_up_kernels() -> tuple[float | None, str]:
    """Load (or compile) the compiled engine before anything is measured."""
    try:
        from gateway.core import compiled, kernels
    except ImportError:
        return None, "numba not installed: NumPy engine only"
    t = time.perf_counter()
    compiled.warm_up()
    seconds = time.perf_counter() - t
    hits = sum(sum(f.stats.cache_hits.values())
               for f in (kernels.detector_kernel, kernels.meter_kernel))
    how = "loaded from the cache" if hits == 2 else "compiled"
    return seconds, f"{how} in {seconds:.2f} s"


def percentile_ms(samples_ns: list[int], q: float) -> float:
    return float(np.percentile(np.array(samples_ns) / 1e6, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=600)
    ap.add_argument("--households", type=int, default=192_000)
    ap.add_argument("--out", default=str(RESULTS / "detection.json"))
    args = ap.parse_args()
    seed = 20251124
    rng = np.random.default_rng(seed)
    proc = psutil.Process()
    warm_s, warm_how = warm_up_kernels()  # before the memory figure: numba is no state
    engines = ["compiled", "numpy"] if warm_s is not None else ["numpy"]
    head = engines[0]

    gc.collect()
    rss0 = proc.memory_info().rss
    state, fleet = build_fleet(args.households, rng, head)
    gc.collect()
    rss_delta_mb = (proc.memory_info().rss - rss0) / 1e6
    states = {head: state}
    if head != "numpy":  # the reference fleet, built alike
        states["numpy"] = build_fleet(args.households, np.random.default_rng(seed), "numpy")[0]
    nbytes_mb = state.nbytes() / 1e6
    n_devices = state.n_devices

    scenarios = {name: [make_batch(fleet, rng, T0 + i, rep) for i in range(48)]
                 for name, rep in REPEATS.items()}
    now = T0
    agree = True
    for i in range(200):  # warm up: history in the rings, runs, caches
        now += 1.0
        out = [run_batch(states[e], scenarios["realistic"][i % 48], now) for e in engines]
        agree &= same_effects(out[0], out[-1])

    # wall time (what a message waits) and this thread's CPU time (what the core spends;
    # on a shared machine, time other processes take the core from us is not counted)
    # scenarios take turns, so that a change in the machine's load touches them alike;
    # the engines take turns in blocks of runs on the same batches (each going first
    # every other block): batch by batch, each would run in the other's cache debris
    wall = {e: {name: [] for name in scenarios} for e in engines}
    cpu = {e: {name: [] for name in scenarios} for e in engines}
    effects = 0
    gc.disable()
    try:
        for start in range(0, args.runs, BLOCK):
            block = []  # (scenario, batch, now)
            for i in range(start, min(start + BLOCK, args.runs)):
                for name, batches in scenarios.items():
                    if name != "realistic" and i % 3:
                        continue  # the other scenarios a third as often
                    now += 1.0
                    block.append((name, batches[i % len(batches)], now))
            outs: dict[str, list] = {}
            for e in (engines if start // BLOCK % 2 == 0 else engines[::-1]):
                outs[e] = []
                for name, b, at in block:
                    t, c = time.perf_counter_ns(), time.thread_time_ns()
                    outs[e].append(run_batch(states[e], b, at))
                    cpu[e][name].append(time.thread_time_ns() - c)
                    wall[e][name].append(time.perf_counter_ns() - t)
            for (name, _, _), a, b in zip(block, outs[head], outs["numpy"]):
                agree &= same_effects(a, b)
                effects += sum(map(len, a)) if name == "realistic" else 0
        sweeps: list[int] = []
        for _ in range(30):
            now += 1.0
            t = time.perf_counter_ns()
            swept = sweep(state, now)
            sweeps.append(time.perf_counter_ns() - t)
            if head != "numpy":
                agree &= same_effects((swept,), (sweep(states["numpy"], now),))
    finally:
        gc.enable()
    agree &= same_state(state, states["numpy"])

    def batch_figures(e: str) -> dict:
        w, c = wall[e], cpu[e]
        return {
            "batch_p50_ms": round(percentile_ms(w["realistic"], 50), 3),
            "batch_p99_ms": round(percentile_ms(w["realistic"], 99), 3),
            "batch_cpu_p50_ms": round(percentile_ms(c["realistic"], 50), 3),
            "batch_best_ms": round(percentile_ms(w["realistic"], 0), 3),  # closest to idle
            "batch_no_repeats_p50_ms": round(percentile_ms(w["none"], 50), 3),
            "batch_no_repeats_p99_ms": round(percentile_ms(w["none"], 99), 3),
            "batch_no_repeats_best_ms": round(percentile_ms(w["none"], 0), 3),
            "batch_stress_repeats_p50_ms": round(percentile_ms(w["stress"], 50), 3),
            "batch_stress_repeats_p99_ms": round(percentile_ms(w["stress"], 99), 3),
            "batch_stress_repeats_best_ms": round(percentile_ms(w["stress"], 0), 3),
        }

    per_engine = {e: batch_figures(e) for e in engines}
    figures = {
        "engine": head,
        "devices": n_devices,
        "households": args.households,
        "state_nbytes_mb": round(nbytes_mb, 1),
        "state_rss_delta_mb": round(rss_delta_mb, 1),
        "memory_limit_mb": MEMORY_LIMIT_MB,
        "batch_readings": BATCH,
        "batch_repeat_share": REPEATS["realistic"][0],
        "batch_runs": args.runs,
        **per_engine[head],
        "batch_limit_ms": BATCH_LIMIT_MS,
        "effects_per_batch": round(effects / args.runs, 1),
        "sweep_p50_ms": round(percentile_ms(sweeps, 50), 3),
        "sweep_budget_ms": SWEEP_BUDGET_MS,
        "kernels_warm_up_s": None if warm_s is None else round(warm_s, 3),
        "engines_agree": bool(agree),
        "numpy": per_engine["numpy"],
    }
    batch_rows = [
        ("10k batch, 1% repeats, p50 (ms)", "batch_p50_ms"),
        ("10k batch, 1% repeats, p99 (ms)", "batch_p99_ms"),
        ("10k batch, 1% repeats, CPU p50 (ms)", "batch_cpu_p50_ms"),
        ("10k batch, 1% repeats, best (ms)", "batch_best_ms"),
        ("10k batch, no repeats, p50 (ms)", "batch_no_repeats_p50_ms"),
        ("10k batch, no repeats, p99 (ms)", "batch_no_repeats_p99_ms"),
        ("10k batch, no repeats, best (ms)", "batch_no_repeats_best_ms"),
        ("10k batch, 5% repeats+triples, p50 (ms)", "batch_stress_repeats_p50_ms"),
        ("10k batch, 5% repeats+triples, p99 (ms)", "batch_stress_repeats_p99_ms"),
        ("10k batch, 5% repeats+triples, best (ms)", "batch_stress_repeats_best_ms"),
    ]
    rows = [
        ("state memory, nbytes (MB)", figures["state_nbytes_mb"], None, MEMORY_LIMIT_MB),
        ("state memory, RSS delta (MB)", figures["state_rss_delta_mb"], None, MEMORY_LIMIT_MB),
        *[(label, figures[key], per_engine["numpy"][key], BATCH_LIMIT_MS)
          for label, key in batch_rows],
        (f"sweep of {n_devices} devices, p50 (ms)", figures["sweep_p50_ms"], None,
         SWEEP_BUDGET_MS),
    ]
    figures["ok"] = agree and all(measured <= limit for _, measured, _, limit in rows)
    load = os.getloadavg()[0]
    figures["load_avg_1m"] = round(load, 2)
    print(f"detection core: {n_devices} devices, {BATCH} readings a batch, {args.runs} runs, "
          f"{figures['effects_per_batch']} effects a batch, load average {load:.2f} "
          f"on {os.cpu_count()} cpus")
    print(f"engine: {head}" + (f" (kernels {warm_how}), NumPy engine beside it"
                               if head != "numpy" else f" ({warm_how})"))
    print(f"{'figure':<40} {'measured':>10} {'numpy':>8} {'limit':>8}  ok")
    for name, measured, ref, limit in rows:
        ref_s = f"{ref:>8.3f}" if ref is not None and head != "numpy" else f"{'':>8}"
        print(f"{name:<40} {measured:>10.3f} {ref_s} {limit:>8.1f}  "
              f"{'yes' if measured <= limit else 'NO'}")
    print(f"{'engines agree (Effects and state)':<40} {'yes' if agree else 'NO':>10}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "numpy": np.__version__, "numba": _numba_version()}
    figures["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


def _numba_version() -> str | None:
    try:
        import numba
    except ImportError:
        return None
    return str(numba.__version__)


if __name__ == "__main__":
    main()
