"""The standard load benchmark, with the bounds it is compared with, measured in the same run.

    python bench/bench_load.py [--quick]

Starts a private stack of its own (Mosquitto + TimescaleDB in a temporary folder), then:
1. bounds: the broker's relay ceiling (the fastest publisher and subscriber this project can
   build in Python: pipelined QoS 1 over several processes, a subscriber parsing whole chunks
   and writing all its PUBACKs at once) and the COPY ceiling of the same database (binary
   COPY of pre-built 10 k-row batches into a scratch hypertable with the readings' unique
   (device_id, time, seq) index);
2. the publisher itself: readings/s per process and in total with nobody subscribed;
3. the gateway (`gas-safety gateway`, when it exists) under the standard load: 20 k devices,
   readings at a fixed offered rate, alarm probes, then stored/lost/latency and the CPU of
   every process and the gateway's memory; alarm latency when idle;
4. the baseline (bench/baseline_gateway.py) under the peers' load (20 k devices, 50 k
   readings), for the ratio;
5. fleet scale: the whole 192 k-household city (≈ 400 k devices) in the simulator's memory.
Writes bench/results/load.json and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import psutil

from gateway.ops.stack import free_port
from gateway.pipeline.metrics import scrape

RESULTS = ROOT / "bench" / "results"
PROBES_PER_S = 10.0


# ---------------------------------------------------------------- relay ceiling
def _flood_publisher(host: str, port: int, account: str, password: str, n: int,
                     start_at: float, out: Any) -> None:
    from simulator.link import Link
    from simulator.load import _install_uvloop

    _install_uvloop()

    async def go() -> None:
        link = Link(host, port, account, account, password, max_inflight=int(os.environ.get("RELAY_WINDOW", "20000")))
        await link.connect()
        topics = [f"gas/v1/relay{account[-1]}x{i:04d}/telemetry".encode() for i in range(1000)]
        payload = b'{"seq":123456,"ts":1764000000.123,"ch4":1.23,"fault":0}'
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0, sent = time.time(), 0
        c0 = time.process_time()
        while sent < n:
            k = min(2_000, link.free, n - sent)
            if k <= 0:
                await link.wait_space()
                continue
            link.publish_many((topics[(sent + j) % 1000], payload) for j in range(k))
            sent += k
            await asyncio.sleep(0)
        await link.wait_acked(60)
        out.put(("pub", sent / (time.time() - t0), time.process_time() - c0))
        await link.disconnect()

    asyncio.run(go())


def _fast_subscriber(host: str, port: int, account: str, password: str, n: int,
                     out: Any, ready: Any) -> None:
    """Counts QoS 1 PUBLISHes from whole chunks and acks them with one write per chunk."""
    from simulator import wire
    from simulator.load import _install_uvloop

    _install_uvloop()

    class Sub(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.count = 0
            self.t_first = 0.0
            self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            self.connack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.suback: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: Any) -> None:
            import socket

            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                          socket.TCP_NODELAY, 1)
            self.t = transport

        def data_received(self, data: bytes) -> None:
            from gateway.protocol.packets import parse_packets  # the gateway's own framing

            data = bytes(self.buf) + data if self.buf else data
            packets, used = parse_packets(data)
            self.buf = bytearray(data[used:])
            acks = []
            count = 0
            for first, body in packets:
                if first & 0xF0 == 0x30:
                    tl = (body[0] << 8) | body[1]
                    if first & 0x06:
                        acks.append(b"\x40\x02" + bytes(body[2 + tl:4 + tl]))
                    count += 1
                elif first == 0x20:
                    self.connack.set_result(None)
                elif first == 0x90:
                    self.suback.set_result(None)
            if acks:
                self.t.write(b"".join(acks))
            if count:
                if not self.count:
                    self.t_first = time.time()
                self.count += count
                if self.count >= n and not self.done.done():
                    self.done.set_result(time.time())

    async def go() -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(Sub, host, port)
        proto.t.write(wire.connect(account, account, password, 60, True))
        await proto.connack
        proto.t.write(wire.subscribe(1, [("gas/v1/+/telemetry", 1)]))
        await proto.suback
        c0 = time.process_time()
        ready.set()
        try:
            t_end = await asyncio.wait_for(proto.done, 120)
        except TimeoutError:
            t_end = time.time()
        out.put(("sub", proto.count / max(t_end - proto.t_first, 1e-9), proto.count,
                 time.process_time() - c0))

    asyncio.run(go())


def relay_ceiling(rt: Any, mq_pid: int, n_per_pub: int, publishers: int) -> dict[str, Any]:
    from gateway.ops import credentials

    ctx = mp.get_context("spawn")
    out, ready = ctx.Queue(), ctx.Event()
    sub = ctx.Process(target=_fast_subscriber, args=(
        "127.0.0.1", rt.mqtt_port, credentials.MONITOR,
        credentials.service_password(rt, credentials.MONITOR), n_per_pub * publishers, out,
        ready))
    sub.start()
    ready.wait(30)
    start_at = time.time() + 1.5
    pubs = []
    for i in range(publishers):
        acct = f"{credentials.BRIDGE_PREFIX}{i}"
        p = ctx.Process(target=_flood_publisher, args=(
            "127.0.0.1", rt.mqtt_port, acct, credentials.service_password(rt, acct), n_per_pub,
            start_at, out))
        p.start()
        pubs.append(p)
    broker = psutil.Process(mq_pid)
    b0 = broker.cpu_times()
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    results = [out.get(timeout=180) for _ in range(publishers + 1)]
    wall = time.time() - t0
    b1 = broker.cpu_times()
    for p in (*pubs, sub):
        p.join(10)
    subr = next(r for r in results if r[0] == "sub")
    pubr = [r for r in results if r[0] == "pub"]
    return {
        "qos": 1, "publishers": publishers, "messages": n_per_pub * publishers,
        "relayed_per_s": round(subr[1]), "received": subr[2],
        "publish_per_s": [round(r[1]) for r in pubr],
        "subscriber_cpu_pct": round(100 * subr[3] / wall, 1),
        "broker_cpu_pct": round(100 * ((b1.user + b1.system) - (b0.user + b0.system)) / wall, 1),
    }


# ---------------------------------------------------------------- COPY ceiling
def copy_ceiling(dsn: str, batches: int, rows: int = 10_000) -> dict[str, Any]:
    import psycopg

    rowdt = np.dtype([("nf", ">i2"), ("t_l", ">i4"), ("t", ">i8"), ("id_l", ">i4"),
                      ("id", "S10"), ("seq_l", ">i4"), ("seq", ">i8"), ("ch4_l", ">i4"),
                      ("ch4", ">f4"), ("fault_l", ">i4"), ("fault", ">i4"), ("rx_l", ">i4"),
                      ("rx", ">i8"), ("flags_l", ">i4"), ("flags", ">i2")])
    devices = np.array([b"b%09d" % i for i in range(20_000)], "S10")
    now_us = int((time.time() - 946_684_800) * 1e6)
    payloads = []
    for b in range(batches):  # built before the clock starts: this bounds the database
        a = np.zeros(rows, rowdt)
        k = np.arange(rows) + b * rows
        a["nf"] = 7
        a["t_l"], a["id_l"], a["seq_l"], a["ch4_l"] = 8, 10, 8, 4
        a["fault_l"], a["rx_l"], a["flags_l"] = 4, 8, 2
        a["t"] = now_us + k * 50
        a["id"] = devices[k % len(devices)]
        a["seq"] = k // len(devices)
        a["ch4"] = 1.5
        a["rx"] = now_us + k * 50
        payloads.append(b"PGCOPY\n\xff\r\n\x00" + bytes(8) + a.tobytes() + b"\xff\xff")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE TABLE bench_copy (LIKE detector_readings INCLUDING DEFAULTS)")
        conn.execute("SELECT create_hypertable('bench_copy', 'time', chunk_time_interval =>"
                      " interval '1 day', create_default_indexes => false)")
        conn.execute("CREATE UNIQUE INDEX bench_copy_key ON bench_copy (device_id, time, seq)")
    t0 = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for p in payloads:
            with conn.cursor() as cur, cur.copy("COPY bench_copy (time, device_id, seq, ch4_lel,"
                                                " fault, received_at, flags) FROM STDIN"
                                                " (FORMAT BINARY)") as cp:
                cp.write(p)
            conn.commit()
    wall = time.perf_counter() - t0
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM bench_copy").fetchone()
        n = int(row[0]) if row else 0
        conn.execute("DROP TABLE bench_copy")
    assert n == batches * rows, n
    return {"rows": n, "batch_rows": rows, "rows_per_s": round(n / wall),
            "unique_index": "(device_id, time, seq)"}


# ---------------------------------------------------------------- load runs
def _pg_pids(stack: Any) -> list[int]:
    try:
        pid = int((stack.pg_data / "postmaster.pid").read_text().split()[0])
        p = psutil.Process(pid)
        return [pid, *(c.pid for c in p.children(recursive=True))]
    except (OSError, psutil.Error, ValueError):
        return []


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs: on a VM, the time the hypervisor gave elsewhere."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def _with_children(pid: int) -> list[int]:
    """The gateway and its writer process (gateway/writer_process.py): one consumer."""
    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children())]
    except psutil.Error:
        return [pid]


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def load_run(stack: Any, rt: Any, fleet: Any, probe_pool: list[int], devices: int, rate: float,
             duration: float, probes: float, processes: int, settle: float,
             consumer_pid: int | None, label: str, store_check: bool = True) -> dict[str, Any]:
    from simulator import load

    args = argparse.Namespace(devices=devices, rate=rate, duration=duration,
                              processes=processes, prefix="L", seed=1, probes=probes,
                              settle=settle, no_store_check=not store_check, quiet=True)
    mq_pid = stack._mq_pid()
    pg = _pg_pids(stack)
    c_mq, c_pg = _cpu([mq_pid]), _cpu(pg)
    consumer = _with_children(consumer_pid) if consumer_pid else []
    c_gw = _cpu(consumer)
    rss_max = 0
    steal_max = 0.0  # the worst second
    stop = False

    def sample_rss() -> None:
        nonlocal rss_max, steal_max
        last = _cpu_ticks()
        while not stop:
            if consumer_pid:
                rss_max = max(rss_max, _rss(consumer))
            time.sleep(0.5)
            now = _cpu_ticks()
            if now[1] > last[1]:
                steal_max = max(steal_max, 100 * (now[0] - last[0]) / (now[1] - last[1]))
            last = now

    import threading

    th = threading.Thread(target=sample_rss, daemon=True)
    th.start()
    t0 = time.time()
    ticks0 = _cpu_ticks()
    r = asyncio.run(load.run_load(args, fleet, probe_pool, rt, "127.0.0.1", rt.mqtt_port, rt.dsn,
                                  live=False))
    wall = time.time() - t0
    ticks1 = _cpu_ticks()
    stop = True
    # latency figures mean little while the hypervisor takes the CPU away: recorded beside
    r["cpu_steal_pct"] = {"mean": round(100 * (ticks1[0] - ticks0[0])
                                        / max(ticks1[1] - ticks0[1], 1), 1),
                          "worst_half_second": round(steal_max, 1)}
    r["label"] = label
    r["wall_s"] = round(wall, 1)
    r["cpu_pct"] = {
        "broker": round(100 * (_cpu([mq_pid]) - c_mq) / wall, 1),
        "postgres": round(100 * (_cpu(_pg_pids(stack)) - c_pg) / wall, 1),
        "publishers": [round(100 * p["cpu_s"] / max(p["seconds"], 1e-9), 1)
                       for p in r["per_process"]],
    }
    if consumer_pid:
        r["cpu_pct"]["consumer"] = round(100 * (_cpu(consumer) - c_gw) / wall, 1)
        r["consumer_rss_mb"] = round(rss_max / 2**20, 1)
    return r


def _steal_note(run: dict[str, Any]) -> str:
    st = run.get("cpu_steal_pct") or {}
    return f"CPU steal {st.get('mean')} % (worst 0.5 s {st.get('worst_half_second')} %)"


def histogram_delta(before: dict[str, float], after: dict[str, float],
                    name: str) -> dict[str, Any]:
    """Count, mean and bucket-bounded p50/p99/max of a histogram between two scrapes (ms)."""
    prefix = f'{name}_bucket{{le="'
    buckets = sorted((float(k[len(prefix):-2]), after[k] - before.get(k, 0.0))
                     for k in after if k.startswith(prefix) and not k.endswith('"+Inf"}'))
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    if count <= 0:
        return {"n": 0}

    def upper(q: float) -> str:  # the bucket bound the q-quantile lies under
        for le, c in buckets:
            if c >= q * count:
                return f"<= {le * 1000:g}"
        return f"> {buckets[-1][0] * 1000:g}"

    return {"n": int(count), "mean": round(1000 * total / count, 3), "p50": upper(0.5),
            "p99": upper(0.99), "p999": upper(0.999), "max": upper(1.0),
            "over_ms": {f"{le * 1000:g}": int(count - c) for le, c in buckets}}


def start_child(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    fh = open(log, "ab")
    p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
    fh.close()
    return p


def stop_child(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


# ---------------------------------------------------------------- fleet scale
def _fleet_scale(out: Any) -> None:
    import tracemalloc

    from gateway.ops.provision import generate_city
    from simulator import behaviour as bh
    from simulator.fleet import Fleet
    from simulator.scenario import plan

    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    city = generate_city(192_000, seed=1)
    t_gen = time.perf_counter() - t0
    tracemalloc.start()
    t1 = time.perf_counter()
    fleet = Fleet.from_households(city)
    del city
    model = bh.Model(1, fleet.detector_household, fleet.qmax_m3h, fleet.meter_age_days)
    model.inj = plan(fleet, model.background, 1, 200, 100, 0.0, 3600.0).injection
    t_build = time.perf_counter() - t1
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = psutil.Process().memory_info().rss
    t = 1_795_000_000.0
    t2 = time.perf_counter()
    ch4, _ = model.detector_lel(np.arange(fleet.detectors), t)
    model.meter_reading(np.arange(fleet.households), t)
    t_round = time.perf_counter() - t2
    t3 = time.perf_counter()
    payloads = [b'{"seq":%d,"ts":%.3f,"ch4":%.2f,"fault":%d}' % (1, t, c, 0)
                for c in ch4[:100_000].tolist()]
    t_fmt = (time.perf_counter() - t3) / len(payloads)
    out.put({"households": fleet.households, "devices": fleet.devices,
             "memory_mb_traced": round(traced / 2**20, 1),
             "rss_growth_mb": round((rss1 - rss0) / 2**20, 1),
             "generate_city_s": round(t_gen, 1), "build_s": round(t_build, 1),
             "readings_all_devices_ms": round(1000 * t_round, 1),
             "format_payload_us": round(1e6 * t_fmt, 2)})


def fleet_scale() -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_fleet_scale, args=(out,))
    p.start()
    r = out.get(timeout=600)
    p.join(30)
    return r


# ---------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=20_000.0, help="offered readings/s")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--idle-duration", type=float, default=60.0,
                    help="seconds of the quiet run (10 probes/s: 60 s gives p99 a few samples "
                         "above it, not the maximum)")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["relay", "copy", "publisher", "gateway", "baseline", "fleet"])
    a = ap.parse_args()
    if a.quick:
        a.duration = a.idle_duration = 8.0
    from gateway.ops.stack import Stack

    home = Path(tempfile.mkdtemp(prefix="gas-safety-bench-"))
    os.chmod(home, 0o755)
    os.environ["GAS_SAFETY_HOME"] = str(home)
    env = dict(os.environ)
    stack = Stack(home)
    result: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "mem_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "params": vars(a),
        # Other work on the machine skews every figure: recorded so a reader can tell.
        "load_avg_at_start": os.getloadavg(),
    }
    children: list[subprocess.Popen[bytes]] = []
    try:
        print(f"bench: private stack in {home}", flush=True)
        rt = stack.up()
        mq_pid = stack._mq_pid()
        assert mq_pid is not None
        if "relay" not in a.skip:
            n = 100_000 if a.quick else 300_000
            result["relay_ceiling"] = relay_ceiling(rt, mq_pid, n, 2)
            print("relay ceiling:", result["relay_ceiling"], flush=True)
        if "copy" not in a.skip:
            result["copy_ceiling"] = copy_ceiling(rt.dsn, 20 if a.quick else 60)
            print("copy ceiling:", result["copy_ceiling"], flush=True)

        from simulator.load import plan_fleet

        # probe households: a pool kept out of the load, a fresh slice for every run
        # probes: 10 a second under full load, so that p99 rests on a few hundred of them
        fargs = argparse.Namespace(devices=a.devices, probes=PROBES_PER_S,
                                   duration=a.duration + a.idle_duration + 20,
                                   seed=1, prefix="L")
        fleet, n_probes = plan_fleet(fargs, rt.dsn)
        pool = list(range(fleet.households - n_probes, fleet.households))

        def probe_slice(n: int) -> list[int]:
            out = pool[:n]
            del pool[:n]
            return out

        if "publisher" not in a.skip:
            pubs = {}
            for procs in (1, 2):
                r = load_run(stack, rt, fleet, [], a.devices, 0.0, 5.0 if a.quick else 10.0,
                             0.0, procs, 0.0, None, f"publisher x{procs}", store_check=False)
                pubs[procs] = {"total_per_s": round(r["publish_rate"]),
                               "per_process_per_s": [round(p["rate"]) for p in r["per_process"]],
                               "publisher_cpu_pct": r["cpu_pct"]["publishers"],
                               "broker_cpu_pct": r["cpu_pct"]["broker"]}
                print(f"publisher x{procs}:", pubs[procs], flush=True)
            result["publisher"] = pubs

        logs = home / "logs"
        logs.mkdir(exist_ok=True)
        if "gateway" not in a.skip:
            if importlib.util.find_spec("gateway.service") is None:
                result["gateway"] = {"skipped": "gateway/service.py does not exist yet"}
            else:
                exe = shutil.which("gas-safety", path=str(Path(sys.executable).parent)) or \
                    "gas-safety"
                metrics_port = free_port()
                gw = start_child([exe, "gateway"], logs / "gateway.log",
                                 {**env, "GAS_SAFETY_METRICS_PORT": str(metrics_port)})
                children.append(gw)
                # ready: connected to the broker (its first start may compile the kernels)
                deadline = time.time() + 90
                while gw.poll() is None and time.time() < deadline and \
                        scrape(metrics_port).get("gas_mqtt_connected") != 1.0:
                    time.sleep(0.2)
                time.sleep(1.0)
                if gw.poll() is not None:
                    result["gateway"] = {"failed": f"exited with {gw.returncode}; see "
                                                   f"{logs / 'gateway.log'}"}
                else:
                    m0 = scrape(metrics_port)
                    idle = load_run(stack, rt, fleet,
                                    probe_slice(int(PROBES_PER_S * a.idle_duration) + 5),
                                    2_000, 200.0, a.idle_duration, PROBES_PER_S, 1, 20.0,
                                    gw.pid, "gateway idle")
                    m1 = scrape(metrics_port)
                    full = load_run(stack, rt, fleet,
                                    probe_slice(int(PROBES_PER_S * a.duration) + 5),
                                    a.devices, a.rate, a.duration, PROBES_PER_S, a.processes,
                                    60.0, gw.pid, "gateway full load")
                    m2 = scrape(metrics_port)
                    # inside the gateway: how late its event loop ran, and read -> command
                    for run, (x, y) in ((idle, (m0, m1)), (full, (m1, m2))):
                        run["gateway_loop_lag_ms"] = histogram_delta(x, y, "gas_loop_lag_seconds")
                        run["gateway_alarm_latency_ms"] = histogram_delta(
                            x, y, "gas_alarm_latency_seconds")
                        run["gateway_handle_ms"] = histogram_delta(x, y, "gas_handle_seconds")
                        run["gateway_ingest_lag_ms"] = histogram_delta(
                            x, y, "gas_ingest_lag_seconds")
                        run["fast_lane_cuts"] = int(y.get("gas_fast_lane_cuts_total", 0)
                                                    - x.get("gas_fast_lane_cuts_total", 0))
                        print(f"{run['label']}: loop lag {run['gateway_loop_lag_ms']}; "
                              f"in-gateway alarm {run['gateway_alarm_latency_ms']}; "
                              f"ingest lag {run['gateway_ingest_lag_ms']}; "
                              f"fast lane cuts {run['fast_lane_cuts']}", flush=True)
                    result["gateway"] = {"idle": idle, "load": full}
                    print("gateway idle alarm latency:", idle["alarm_latency_ms"],
                          _steal_note(idle), flush=True)
                    print("gateway load:", {k: full.get(k) for k in (
                        "sent", "stored", "lost", "stored_rate", "alarm_latency_ms",
                        "cpu_pct", "consumer_rss_mb", "cpu_steal_pct")}, flush=True)
                stop_child(gw)
                children.remove(gw)
        if "baseline" not in a.skip:
            bl = start_child([sys.executable, str(ROOT / "bench" / "baseline_gateway.py")],
                             logs / "baseline.log", env)
            children.append(bl)
            time.sleep(3)
            # the peers' load: 20 k devices, 50 k readings
            n_readings = 20_000 if a.quick else 50_000
            base = load_run(stack, rt, fleet, probe_slice(15), a.devices, n_readings / 10.0,
                            10.0, 1.0, 1, 300.0, bl.pid, "baseline")
            result["baseline"] = base
            print("baseline:", {k: base.get(k) for k in (
                "sent", "stored", "lost", "stored_rate", "alarm_latency_ms", "cpu_pct")},
                flush=True)
            stop_child(bl)
            children.remove(bl)
        if "fleet" not in a.skip:
            result["fleet_scale"] = fleet_scale()
            print("fleet scale:", result["fleet_scale"], flush=True)
    finally:
        for c in children:
            stop_child(c)
        stack.down()
        if (home / "logs" / "gateway.log").exists():  # kept for a look after the run
            shutil.copy(home / "logs" / "gateway.log", RESULTS.parent / "results" /
                        "gateway-last.log") if RESULTS.exists() else None
        shutil.rmtree(home, ignore_errors=True)
    result["load_avg_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(result, indent=1, default=str))
    print_table(result)
    return 0


def print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="bench_load (same machine, same run)", title_justify="left")
    t.add_column("measure")
    t.add_column("figure", justify="right")
    t.add_column("bound / compared with")
    relay = r.get("relay_ceiling", {})
    copy = r.get("copy_ceiling", {})
    relay_s = f"broker relay ceiling {relay.get('relayed_per_s', 0):,}/s QoS 1" if relay else "-"
    copy_s = f"COPY ceiling {copy.get('rows_per_s', 0):,} rows/s" if copy else "-"
    pub = r.get("publisher", {})
    for procs, p in pub.items():
        t.add_row(f"publisher, {procs} process(es), QoS 1", f"{p['total_per_s']:,}/s",
                  f"per process {p['per_process_per_s']}; {relay_s}")
    gw = r.get("gateway", {})
    for label, run in (("gateway", gw.get("load")), ("baseline gateway", r.get("baseline"))):
        if not run:
            continue
        lat = run["alarm_latency_ms"]
        t.add_row(f"{label}: stored readings/s end to end",
                  f"{run.get('stored_rate') or 0:,.0f}", f"{relay_s}; {copy_s}")
        t.add_row(f"{label}: sent / stored / lost",
                  f"{run['sent']:,} / {run['stored'] or 0:,} / {run['lost']}", "lost must be 0")
        t.add_row(f"{label}: alarm latency p50/p95/p99/max ms",
                  f"{lat['p50']}/{lat['p95']}/{lat['p99']}/{lat['max']}" if lat["n"] else "-",
                  f"probes cut {run['probes_cut']}/{run['probes']}; "
                  f"target p99 <= 10 ms at full load; {_steal_note(run)}")
        t.add_row(f"{label}: CPU % (consumer, broker, postgres, publishers)",
                  f"{run['cpu_pct'].get('consumer')}, {run['cpu_pct']['broker']}, "
                  f"{run['cpu_pct']['postgres']}, {run['cpu_pct']['publishers']}",
                  f"consumer RSS {run.get('consumer_rss_mb')} MB")
    if gw.get("idle"):
        lat = gw["idle"]["alarm_latency_ms"]
        t.add_row("gateway idle: alarm latency p50/p99/max ms",
                  f"{lat['p50']}/{lat['p99']}/{lat['max']}" if lat["n"] else "-",
                  f"probes cut {gw['idle']['probes_cut']}/{gw['idle']['probes']}; "
                  f"target p99 <= 2 ms idle; {_steal_note(gw['idle'])}")
    elif gw:
        t.add_row("gateway", "-", str(gw))
    fs = r.get("fleet_scale")
    if fs:
        t.add_row("fleet scale: whole city in simulator memory",
                  f"{fs['memory_mb_traced']} MB", f"{fs['households']:,} households, "
                                                  f"{fs['devices']:,} devices; one reading of "
                                                  f"each: {fs['readings_all_devices_ms']} ms")
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
