"""Load mode: N devices at R readings/s for T seconds, from several publisher processes.

Each publisher process owns one `fleet-bridge-N` connection and a disjoint share of the
devices (whole households, so every device's readings stay in order on one connection),
and paces itself to its share of the rate, pipelining QoS 1 PUBLISH packets and counting
PUBACKs (simulator/link.py). A process of its own runs the alarm probes on their bridge:
at `--probes` per second it makes a reserved detector read 45 %LEL and times the
`valve_close` the platform sends to that household's meter (and acks it). At the end it
counts what the platform stored, by device and seq, and reports losses and latencies.

This module plans the fleet, shares it out, starts the processes and waits for them; the
processes themselves are simulator.publisher, the live statistics, result and summary
simulator.load_report.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import time
from typing import Any

import numpy as np

from simulator.load_report import Tally, poll_stored, print_load, received_span
from simulator.publisher import ProbeJob, WorkerJob, install_uvloop, probe_main, worker_main

AVG_DEVICES_PER_HOUSEHOLD = 2.4

# bench/bench_load.py runs its own flood processes on the publishers' event loop, from here
_install_uvloop = install_uvloop


def plan_fleet(args: argparse.Namespace, dsn: str) -> Any:
    """The load fleet (provisioned if missing) and how many households the probes need:
    one each, since a probed household's valve stays cut."""
    from simulator.cli import ensure_fleet

    probes = math.ceil(args.probes * args.duration) + 5 if args.probes > 0 else 0
    households = math.ceil(args.devices / AVG_DEVICES_PER_HOUSEHOLD * 1.06) + probes
    return ensure_fleet(dsn, households, args.seed, args.prefix), probes


def main(args: argparse.Namespace) -> dict[str, Any]:
    """`gas-safety simulate load`: against the stack the settings name."""
    from gateway import settings
    from simulator.cli import stack_runtime

    s = settings.load()
    rt = stack_runtime()
    if not 1 <= args.processes <= 7:
        raise SystemExit("--processes must be 1..7 (fleet-bridge-0..6; 7 runs the probes)")
    fleet, n_probes = plan_fleet(args, s.db.dsn)
    pool = list(range(fleet.households - n_probes, fleet.households))
    return asyncio.run(run_load(args, fleet, pool, rt, s.mqtt.host, s.mqtt.port, s.db.dsn))


async def run_load(
    args: argparse.Namespace,
    fleet: Any,
    probe_pool: list[int],
    rt: Any,
    host: str,
    port: int,
    dsn: str,
    live: bool | None = None,
) -> dict[str, Any]:
    """One load run; `probe_pool` households are kept out of the load for the alarm probes
    (each probe uses one household once: a cut valve stays cut)."""
    from rich.live import Live

    from gateway import accounts
    from simulator import display, storage
    from simulator.runner import seq_origin

    live = (not args.quiet) if live is None else live
    probe_h = list(probe_pool)
    reserved = set(probe_h)
    # devices of the load households, households kept whole, trimmed to --devices
    det_of: dict[int, list[int]] = {}
    for d, h in enumerate(fleet.detector_household.tolist()):
        det_of.setdefault(h, []).append(d)
    jobs_dev: list[list[tuple[str, bool, int]]] = [[] for _ in range(args.processes)]
    count = 0
    for h in range(fleet.households):
        if count >= args.devices:
            break
        if h in reserved:
            continue
        w = h % args.processes
        jobs_dev[w].append((fleet.meter_ids[h], True, h))
        count += 1
        for d in det_of.get(h, []):
            jobs_dev[w].append((fleet.detector_ids[d], False, h))
            count += 1
    all_ids = [dev for job in jobs_dev for dev, _, _ in job]
    known = storage.last_seqs(
        dsn, all_ids + [fleet.detector_ids[det_of[h][0]] for h in probe_h if h in det_of]
    )
    origin = seq_origin(time.time())
    start_at = time.time() + 3.0
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = []
    for w, devs in enumerate(jobs_dev):
        local_h: dict[int, int] = {}
        for _, _, h in devs:
            local_h.setdefault(h, len(local_h))
        hs = sorted(local_h, key=local_h.get)  # type: ignore[arg-type]
        account = f"{accounts.BRIDGE_PREFIX}{w}"
        password = accounts.service_password_from_key(rt.fleet_key, account)
        job = WorkerJob(
            w,
            host,
            port,
            account,
            password,
            fleet.prefix,
            [d for d, _, _ in devs],
            [m for _, m, _ in devs],
            [local_h[h] for _, _, h in devs],
            [float(fleet.qmax_m3h[h]) for h in hs],
            [max(origin, known.get(d, 0)) for d, _, _ in devs],
            args.rate / args.processes,
            start_at,
            args.duration,
            args.seed,
        )
        p = ctx.Process(target=worker_main, args=(job, out), name=f"publisher-{w}", daemon=True)
        p.start()
        procs.append(p)

    # probes on their own bridge account, in their own process
    probe_account = f"{accounts.BRIDGE_PREFIX}7"
    ph = [h for h in probe_h if det_of.get(h)] if args.probes > 0 else []
    if ph:
        probe_password = accounts.service_password_from_key(rt.fleet_key, probe_account)
        pjob = ProbeJob(
            host,
            port,
            probe_account,
            probe_password,
            fleet.prefix,
            ph,
            [fleet.detector_topics[det_of[h][0]] for h in ph],
            [fleet.detector_ids[det_of[h][0]] for h in ph],
            [fleet.meter_ids[h] for h in ph],
            [max(origin, known.get(fleet.detector_ids[det_of[h][0]], 0)) for h in ph],
            args.probes,
            start_at,
            args.duration,
        )
        pp = ctx.Process(target=probe_main, args=(pjob, out), name="probes", daemon=True)
        pp.start()
        procs.append(pp)

    tally = Tally(args, start_at)

    async def ui(live_view: Any) -> None:
        last_poll = 0.0
        while True:
            tally.drain(out)
            if not args.no_store_check and time.time() - last_poll > 3.0 and time.time() > start_at:
                last_poll = time.time()
                try:
                    tally.stored_live = await asyncio.to_thread(
                        poll_stored, dsn, args.prefix, start_at
                    )
                except Exception:  # the live count is a nicety; the final count is exact
                    tally.stored_live = None
            if live_view is not None:
                live_view.update(display.load_view(tally.snapshot()))
            await asyncio.sleep(0.1)

    async def wait_workers() -> None:
        while tally.reported() < len(procs):
            await asyncio.sleep(0.2)
            if not any(p.is_alive() for p in procs):
                tally.drain(out)
                break

    if live:
        with Live(display.load_view(tally.snapshot()), refresh_per_second=4) as lv:
            uitask = asyncio.create_task(ui(lv))
            await wait_workers()
            await asyncio.sleep(0.3)
    else:
        uitask = asyncio.create_task(ui(None))
        await wait_workers()
    uitask.cancel()
    tally.drain(out)
    for p in procs:
        p.join(timeout=10)

    if tally.errors:
        raise RuntimeError("; ".join(tally.errors))
    result, ids, lo, hi = tally.result(jobs_dev, len(all_ids))
    sent = result["sent"]
    if not args.no_store_check:
        lo_a, hi_a = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        stored, waited = await asyncio.to_thread(
            storage.wait_stored, dsn, ids, lo_a, hi_a, start_at, sent, 5.0, args.settle
        )
        result["stored"] = stored
        result["lost"] = sent - stored
        result["store_wait_s"] = round(waited, 1)
        span = await asyncio.to_thread(received_span, dsn, args.prefix, start_at)
        if span and stored:
            result["stored_rate"] = stored / max(span - start_at, 1e-9)
            result["last_stored_after_s"] = round(span - start_at, 2)
    if not args.quiet:
        print_load(result)
    return result
