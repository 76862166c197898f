"""Benchmark: the gateway's memory with the whole city's registry loaded.

In a private stack of its own (temporary folder) the city of `--households` households
(`gateway.ops.provision.generate_city`, as `gas-safety fleet provision` and the simulator
make it: one meter and one or two detectors each) is provisioned into PostgreSQL. A fresh
interpreter then runs the gateway's own start-up: `GatewayService._load` (the registry
and what was open, read from the database), `tuning.tune_runtime`, and the real writer
process (`_start_writer`). Its resident set (RSS) and the writer process's are read from
/proc after loading, and again after a short load: every device's reading once, fed
through `Gateway.handle` in socket reads of 500 messages, batches handed to the writer
and committed (the collector's young generations run every 20 reads, as the service's
ticker runs them every second). Printed beside the bounds (gateway 350 MB, writer 150 MB) with the
detection state's size and the peak RSS (VmHWM).

    python bench/bench_memory.py [--households 192000] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GATEWAY_BOUND_MB = 350.0
WRITER_BOUND_MB = 150.0
READ_SIZE = 500  # messages per socket read
RESULTS = Path(__file__).resolve().parent / "results"


def _status(pid: int | str) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile and AnonHugePages (transparent huge pages: NumPy
    asks for them for arrays of 4 MB and more) of a process, in MB."""
    out: dict[str, float] = {}
    for name in ("status", "smaps_rollup"):
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "AnonHugePages"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


# ---------------------------------------------------------------- the gateway's side


def _payloads(kinds: list[int], seq: int, ts: float) -> list[bytes]:
    det = b'{"seq":%d,"ts":%.3f,"ch4":%.2f,"fault":0}' % (seq, ts, 0.5)
    met = b'{"seq":%d,"ts":%.3f,"vol":%.3f,"flow":%.3f,"valve":"open"}' % (seq, ts, 12.5, 0.2)
    return [met if k == 1 else det for k in kinds]


async def _gateway_run(dsn: str, spool: str) -> dict[str, Any]:
    from gateway.protocol import topic
    from gateway.protocol.packets import Message
    from gateway.service import tuning
    from gateway.service.app import GatewayService
    from gateway.settings import DbSettings, Settings

    start = _status("self")
    settings = Settings(db=DbSettings(dsn=dsn, spool_dir=spool))
    svc = GatewayService(settings)
    svc.loop = loop = asyncio.get_running_loop()
    gw = svc.gw
    t0 = time.perf_counter()
    if hasattr(tuning, "tune_allocator"):  # as GatewayService.run does, where it does
        tuning.tune_allocator()
    await svc._load()
    load_s = time.perf_counter() - t0
    tuning.tune_runtime()
    svc.writer = writer = svc._start_writer(loop)
    gw.submit = svc._submit
    writer_pid = writer._proc.pid  # type: ignore[union-attr]
    await asyncio.sleep(3.0)  # the writer child starts and takes the registry's ids
    n = len(gw.device_ids)
    loaded = {"gateway": _status("self"), "writer": _status(writer_pid)}
    ids = [gw.device_ids[i] for i in range(n)]
    kinds = [int(k) for k in gw.state.kind[:n]]
    now = time.time()
    t1 = time.perf_counter()
    for lo in range(0, n, READ_SIZE):
        part = range(lo, min(n, lo + READ_SIZE))
        pays = _payloads([kinds[i] for i in part], 1, now)
        msgs = [
            Message(topic(ids[i], "telemetry"), p, 0, 0, False, False)
            for i, p in zip(part, pays, strict=True)
        ]
        gw.handle(msgs, now)
        if (lo // READ_SIZE) % 20 == 19:  # as the service's ticker: young collections
            gw.flush()
            gc.collect(1)
            await asyncio.sleep(0)
    gw.flush()
    del ids, kinds, msgs, pays
    while writer.pending_rows > 0 and time.perf_counter() - t1 < 300:
        await asyncio.sleep(0.2)
    feed_s = time.perf_counter() - t1
    gc.collect(1)
    await asyncio.sleep(1.0)
    after = {"gateway": _status("self"), "writer": _status(writer_pid)}
    out = {
        "devices": n,
        "state_mb": round(gw.state.nbytes() / 2**20, 1),
        "start": start,
        "loaded": loaded,
        "after_readings": after,
        "stored_rows": writer.stats.committed_rows,
        "load_s": round(load_s, 1),
        "readings_s": round(feed_s, 1),
    }
    await writer.close()
    return out


def child(dsn: str, spool: str) -> None:
    print(json.dumps(asyncio.run(_gateway_run(dsn, spool))), flush=True)


# ---------------------------------------------------------------- the bench's side


def provision_city(dsn: str, households: int, step: int = 16_000) -> int:
    from gateway.ops.provision import generate_city, provision

    devices = 0
    for lo in range(0, households, step):
        city = generate_city(min(step, households - lo), seed=1 + lo, start=lo)
        devices += provision(dsn, city, None, None)["devices"]
    return devices


def print_table(r: dict[str, Any]) -> None:
    print(f"\n{r['households']:,} households, {r['devices']:,} devices; detection state "
          f"{r['state_mb']} MB; registry load {r['load_s']} s, one reading per device "
          f"{r['readings_s']} s ({r['stored_rows']:,} rows stored)")
    print(f"{'':28} {'RSS MB':>8} {'peak MB':>8} {'bound MB':>9}  ok")
    for stage in ("loaded", "after_readings"):
        for who, bound in (("gateway", GATEWAY_BOUND_MB), ("writer", WRITER_BOUND_MB)):
            s = r[stage][who]
            ok = "yes" if s["VmRSS"] < bound else "NO"
            print(f"{who + ' ' + stage.replace('_', ' '):28} {s['VmRSS']:8.1f} "
                  f"{s['VmHWM']:8.1f} {bound:9.0f}  {ok}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--households", type=int, default=192_000)
    ap.add_argument("--keep", action="store_true", help="keep the stack's folder")
    ap.add_argument("--child", nargs=2, metavar=("DSN", "SPOOL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    from gateway.ops.stack import Stack

    home = Path(tempfile.mkdtemp(prefix="gas-safety-bench-"))
    os.chmod(home, 0o755)  # the postgres system user must reach its data folder
    os.environ["GAS_SAFETY_HOME"] = str(home)
    stack = Stack(home)
    try:
        rt = stack.up()
        t0 = time.perf_counter()
        provisioned = provision_city(rt.dsn, args.households)
        print(f"provisioned {provisioned:,} devices in {time.perf_counter() - t0:.0f} s")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        out = subprocess.run(
            [sys.executable, __file__, "--child", rt.dsn, str(home / "spool")],
            env=env, capture_output=True, text=True, timeout=1800,
        )
        if out.returncode != 0:
            print(out.stderr[-4000:], file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["households"] = args.households
        r["bounds_mb"] = {"gateway": GATEWAY_BOUND_MB, "writer": WRITER_BOUND_MB}
        print_table(r)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "memory.json").write_text(json.dumps(r, indent=2))
    finally:
        stack.down()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
