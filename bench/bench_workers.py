"""Partition workers: CPU per reading with 1, 2 and 4 workers, and memory per worker
against the partitions it owns.

    python bench/bench_workers.py [--quick] [--households N] [--readings N] [--rate R]
                                  [--backlog N]

A private stack (TimescaleDB) and a private three-node NATS JetStream cluster on this
machine; a city of households provisioned; for 1, 2 and 4 `gas-safety worker` processes in
turn: wait until they have split the 64 partitions, then two runs, each reading the
workers' CPU time (user + system, all their threads and their children) until every reading
is stored:
- steady: readings published into JetStream as the edge relay would (confirmed, with its
  headers) at a steady rate; the load is shared, so each worker wakes for a few readings;
- saturated: the workers stopped (SIGSTOP) while a backlog is published, then let go: every
  worker judges and stores as fast as it can, as a worker at capacity does.
On this 2-core machine throughput cannot grow with workers; what must hold is the shape:
CPU per reading of busy workers may grow by at most 15 % from 1 to 4 workers, and a
worker's memory follows the partitions (devices) it owns.
Each worker count runs `--repeat` times, alternating, and each figure is the median of its
rounds. Writes bench/results/workers.json and prints each figure beside its bound.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

import psutil  # noqa: E402
import psycopg  # noqa: E402

CPU_GROWTH_BOUND = 0.15  # CPU per reading, 4 workers against 1


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def stored(dsn: str, since: dt.datetime) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM detector_readings WHERE received_at >= %s)"
            " + (SELECT count(*) FROM meter_readings WHERE received_at >= %s)",
            (since, since),
        ).fetchone()
    return int(row[0]) if row else 0


async def publish(servers: list[str], items: list[tuple[int, str, bytes]], rate: float) -> float:
    """Publish at `rate` per second (confirmed); returns the seconds it took."""
    import nats
    from cluster_kit import relay_headers

    from gateway.protocol.log_subjects import inbound_subject

    nc = await nats.connect(servers=servers)
    js = nc.jetstream(timeout=20)
    t0 = time.monotonic()
    step = max(1, int(rate / 20))
    for i in range(0, len(items), step):
        chunk = items[i : i + step]
        await asyncio.gather(
            *(js.publish(inbound_subject(p), b, headers=relay_headers(t, b)) for p, t, b in chunk)
        )
        ahead = (i + step) / rate - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
    took = time.monotonic() - t0
    await nc.close()
    return took


def readings_for(city: list[Any], n: int, seqs: dict[str, int]) -> list[tuple[int, str, bytes]]:
    from cluster_kit import part_of, reading

    devices = [(part_of(h), d) for h in city for d in h.devices]
    rng = random.Random(1)
    out = []
    for _ in range(n):
        p, d = devices[rng.randrange(len(devices))]
        seqs[d.id] = seqs.get(d.id, 0) + 1
        out.append((p, f"gas/v1/{d.id}/telemetry", reading(d.kind, seqs[d.id])))
    return out


def measure(procs: list[psutil.Process], dsn: str, n: int, since: dt.datetime,
            start: Callable[[], float], idle_cpu_s: float) -> dict[str, Any]:
    """The workers' CPU from `start()` (which publishes, or lets the stopped workers go;
    returns the seconds it published) until `n` more readings received since `since` are
    stored."""
    base = stored(dsn, since)
    c0, t0 = sum(cpu_s(p) for p in procs), time.monotonic()
    took = start()
    deadline = time.monotonic() + 120
    while stored(dsn, since) - base < n and time.monotonic() < deadline:
        time.sleep(0.05)
    window = time.monotonic() - t0
    cpu = sum(cpu_s(p) for p in procs) - c0
    got = stored(dsn, since) - base
    return {"readings": n, "stored": got, "publish_s": round(took, 2),
            "window_s": round(window, 2), "readings_per_s": round(got / window),
            "cpu_s": round(cpu, 3), "cpu_us_per_reading": round(cpu / max(1, got) * 1e6, 1),
            # the load's own share: the window's CPU less what the workers spend idle
            "load_cpu_us_per_reading": round(
                max(0.0, cpu - idle_cpu_s * window) / max(1, got) * 1e6, 1)}


def per_worker(ws: list[Any], procs: list[psutil.Process]) -> list[dict[str, Any]]:
    """Each worker's partitions, devices, detection state and memory: RSS, and PSS / USS
    (the library pages workers on one machine share are counted once)."""
    out = []
    for w, p in zip(ws, procs, strict=True):
        h = w.health() or {}
        mem = p.memory_full_info()
        out.append({"partitions": len(h.get("partitions", [])),
                    "devices": h.get("devices", 0),
                    "engine": h.get("engine"),
                    "state_mb": h.get("state_mb", 0),
                    "rss_mb": round(mem.rss / 2**20, 1),
                    "pss_mb": round(mem.pss / 2**20, 1),
                    "uss_mb": round(mem.uss / 2**20, 1)})
    return out


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = base + slope * x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def run(k: int, stack: Any, nats_cluster: Any, city: list[Any], a: Any, seqs: dict[str, int],
        dsn: str) -> dict[str, Any]:
    from cluster_kit import WorkerProcess, wait_split

    from gateway.core.partitions import PARTITIONS

    ws = [WorkerProcess(stack, nats_cluster.servers, f"bench{k}-{i}") for i in range(k)]
    for w in ws:
        # the product's defaults, not the tests' quicker sweeps, state writes and ack timeouts
        for quick in ("GAS_SAFETY_DETECTION__SWEEP_INTERVAL_S", "GAS_SAFETY_DB__STATE_INTERVAL_S",
                      "GAS_SAFETY_RESPONSE__ACK_TIMEOUT_S"):
            w.env.pop(quick, None)
        w.env["GAS_SAFETY_DETECTION__ENGINE"] = a.engine
        if a.linger is not None:
            w.env["GAS_SAFETY_CLUSTER__FETCH_LINGER_S"] = str(a.linger)
        w.start()
    try:
        wait_split(ws, PARTITIONS, 120)
        time.sleep(2.0)  # rebuilds done, garbage settled
        procs = [psutil.Process(w.proc.pid) for w in ws if w.proc is not None]
        if a.memory_only:
            return {"workers": k, "per_worker": per_worker(ws, procs)}
        idle0 = sum(cpu_s(p) for p in procs)
        time.sleep(a.idle)
        idle_cpu_s = (sum(cpu_s(p) for p in procs) - idle0) / a.idle
        items = readings_for(city, a.readings, seqs)
        steady = measure(procs, dsn, len(items), dt.datetime.now(dt.UTC),
                         lambda: asyncio.run(publish(nats_cluster.urls, items, a.rate)),
                         idle_cpu_s)
        # saturated: the workers stopped (SIGSTOP) while a backlog fills the stream, then
        # let go; they judge and store it as fast as they can, in full batches
        backlog = readings_for(city, a.backlog, seqs)
        since = dt.datetime.now(dt.UTC)
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        try:
            asyncio.run(publish(nats_cluster.urls, backlog, 1e9))
        except BaseException:
            for p in procs:
                p.send_signal(signal.SIGCONT)
            raise

        def let_go() -> float:
            for p in procs:
                p.send_signal(signal.SIGCONT)
            return 0.0

        saturated = measure(procs, dsn, len(backlog), since, let_go, idle_cpu_s)
        return {"workers": k, **steady, "saturated": saturated,
                "idle_cpu_s_per_s": round(idle_cpu_s, 4), "per_worker": per_worker(ws, procs)}
    finally:
        for w in ws:
            w.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller run (a smoke test)")
    ap.add_argument("--households", type=int, default=3000)
    ap.add_argument("--readings", type=int, default=60_000, help="per worker count")
    ap.add_argument("--rate", type=float, default=2000.0, help="offered readings/s")
    ap.add_argument("--backlog", type=int, default=100_000,
                    help="readings per worker count for the saturated run (a backlog)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeat", type=int, default=2,
                    help="rounds over the worker counts (each figure: the median of its rounds;"
                    " other work on the machine comes and goes)")
    ap.add_argument("--engine", choices=["auto", "compiled", "numpy"], default="auto",
                    help="the workers' detection.engine")
    ap.add_argument("--memory-only", action="store_true",
                    help="only each worker's memory once the partitions are split (no load)")
    ap.add_argument("--linger", type=float, default=None,
                    help="the workers' cluster.fetch_linger_s (default: the setting's default)")
    a = ap.parse_args()
    if a.quick:
        a.households, a.readings, a.backlog, a.idle, a.repeat = 600, 12_000, 20_000, 3.0, 1

    from gateway.ops import provision
    from gateway.ops.nats_cluster import NatsCluster
    from gateway.ops.stack import Stack

    home = Path(tempfile.mkdtemp(prefix="gas-safety-bench-"))
    os.chmod(home, 0o755)
    os.environ["GAS_SAFETY_HOME"] = str(home)
    stack = Stack(home)
    nats_cluster = NatsCluster(home / "nats")
    result: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count()},
        "params": vars(a),
        "load_avg_at_start": os.getloadavg(),
        "runs": [],
    }
    try:
        rt = stack.up()
        nats_cluster.start()
        city = provision.generate_city(a.households, seed=1, prefix="W")
        provision.provision(rt.dsn, city, None, None)
        seqs: dict[str, int] = {}
        for _ in range(a.repeat):
            for k in a.workers:
                r = run(k, stack, nats_cluster, city, a, seqs, rt.dsn)
                result["runs"].append(r)
                print(json.dumps(r), flush=True)
    finally:
        nats_cluster.stop()
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
    print(f"\nbench_workers {result['when']} load average at start "
          f"{result['load_avg_at_start'][0]:.1f}")
    for mode in () if a.memory_only else ("steady", "saturated"):
        runs = {}
        for k in a.workers:
            mine = sorted((r if mode == "steady" else r["saturated"]
                           for r in result["runs"] if r["workers"] == k),
                          key=lambda r: r["cpu_us_per_reading"])
            runs[k] = dict(mine[(len(mine) - 1) // 2])  # the median (the lower one of two)
            runs[k]["rounds_us_per_reading"] = [r["cpu_us_per_reading"] for r in mine]
        print(f"  {mode}: " + ("offered " + f"{a.rate:.0f}/s" if mode == "steady" else
                               f"a backlog of {a.backlog} readings, workers let go at once"))
        for k, r in runs.items():
            print(f"    {k} worker(s): {r['stored']}/{r['readings']} stored at "
                  f"{r['readings_per_s']}/s; CPU {r['cpu_us_per_reading']} µs/reading (rounds "
                  f"{r['rounds_us_per_reading']}; {r['load_cpu_us_per_reading']} without idle"
                  " work)")
        lo, hi = min(runs), max(runs)
        if lo != hi:
            g = runs[hi]["cpu_us_per_reading"] / runs[lo]["cpu_us_per_reading"] - 1
            result[f"cpu_growth_{mode}"] = round(g, 3)
            verdict = "met" if g <= CPU_GROWTH_BOUND else "NOT met"
            print(f"    CPU per reading, {hi} workers against {lo}: {g * 100:+.1f} %; bound "
                  f"+{CPU_GROWTH_BOUND * 100:.0f} % -> {verdict}"
                  + (" (the bound's measure: every worker busy)" if mode == "saturated" else
                     " (a thin load per worker: each wakes for a few readings)"))
    for r in result["runs"]:
        sizes = ", ".join(f"{w['partitions']} partitions/{w['devices']} devices "
                          f"RSS {w['rss_mb']} PSS {w['pss_mb']} USS {w['uss_mb']} MB "
                          f"(state {w['state_mb']} MB)" for w in r["per_worker"])
        idle = ("" if a.memory_only else
                f" idle {r['idle_cpu_s_per_s'] * 100:.1f} % of a core;")
        print(f"  {r['workers']} worker(s):{idle} {sizes}")
    every = [w for r in result["runs"] for w in r["per_worker"]]
    print(f"  memory against devices owned ({a.engine} engine), least squares over"
          f" {len(every)} workers:")
    for what in ("rss_mb", "pss_mb", "uss_mb", "state_mb"):
        base, slope = fit([(w["devices"], w[what]) for w in every])
        result[f"fit_{what}"] = {"base_mb": round(base, 1),
                                 "kb_per_device": round(slope * 1024, 3)}
        print(f"    {what[:-3].upper():5}: {base:6.1f} MB + {slope * 1024:.3f} KB a device")
    out = ROOT / "bench" / "results" / "workers.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
