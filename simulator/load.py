"""Load mode: N devices at R readings/s for T seconds, from several publisher processes.

Each publisher process owns one `fleet-bridge-N` connection and a disjoint share of the
devices (whole households, so every device's readings stay in order on one connection),
and paces itself to its share of the rate, pipelining QoS 1 PUBLISH packets and counting
PUBACKs (simulator/link.py). A process of its own runs the alarm probes on their bridge:
at `--probes` per second it makes a reserved detector read 45 %LEL and times the
`valve_close` the platform sends to that household's meter (and acks it). At the end it
counts what the platform stored, by device and seq, and reports losses and latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import multiprocessing as mp
import queue
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway import protocol
from simulator.truth import percentiles

STATS_EVERY_S = 0.5
PROBE_LEL = 45.0
AVG_DEVICES_PER_HOUSEHOLD = 2.4


@dataclass
class WorkerJob:
    index: int
    host: str
    port: int
    account: str
    password: str
    prefix: str
    device_ids: list[str]
    is_meter: list[bool]
    household: list[int]  # local household index per device (for the behaviour model)
    qmax: list[float]  # per local household
    seq0: list[int]
    rate: float  # readings/s for this worker; 0 = as fast as the broker takes them
    start_at: float
    duration_s: float
    seed: int
    max_inflight: int = 20_000
    batch: int = 1_000


@dataclass
class ProbeJob:
    """The alarm probes, in a process of their own: a busy load tool (display, counting,
    statistics) must not delay the moment a command is seen arriving."""

    host: str
    port: int
    account: str
    password: str
    prefix: str
    households: list[int]
    detector_topics: list[bytes]  # per probe household: its first detector's topic
    detector_ids: list[str]
    meter_ids: list[str]
    seq0: list[int]
    rate: float  # probes per second
    start_at: float
    duration_s: float


def probe_main(job: ProbeJob, out: Any) -> None:
    # The probes stand in for a detector's and a meter's own hardware: on a machine the
    # load saturates they must not time their own wait for a CPU (real-time as the gateway's
    # event loop; needs root, else nice -10, else as is).
    from gateway.priority import set_thread_priority

    set_thread_priority(10, -10, "alarm probe")
    _install_uvloop()
    try:
        out.put(("probe", -1, asyncio.run(_probe(job))))
    except Exception as err:
        out.put(("error", -1, f"probe {type(err).__name__}: {err}"))


async def _probe(job: ProbeJob) -> dict[str, Any]:
    from simulator.link import Link

    sent: dict[int, float] = {}
    lat: dict[int, float] = {}
    seqs: dict[str, tuple[int, int, int]] = {}
    bad: list[bytes] = []
    by_meter = {m: i for i, m in enumerate(job.meter_ids)}
    plen = len(job.prefix) + 1
    link: Link

    def on_message(msg: Any) -> None:
        received_at = time.time()
        device, _, channel = msg.topic[plen:].rpartition("/")
        i = by_meter.get(device)
        if channel != "cmd" or i is None:
            return
        if i in sent and i not in lat:
            lat[i] = received_at - sent[i]
        try:
            cmd = protocol.decode(protocol.Command, msg.payload)
        except protocol.Rejected:  # a malformed command is the platform's bug: not acked
            bad.append(msg.payload[:200])
            return
        ack = protocol.Ack(cmd.cmd_id, True, round(time.time(), 3), "closed", None)
        link.publish(protocol.topic(device, "ack", job.prefix).encode(), protocol.encode(ack))

    link = Link(
        job.host,
        job.port,
        job.account,
        job.account,
        job.password,
        on_message=on_message,
        reconnect=True,
    )
    await link.connect()
    await link.subscribe([(f"{job.prefix}/+/cmd", 1)])
    await asyncio.sleep(max(0.0, job.start_at - time.time()) + 1.0)
    interval = 1.0 / job.rate
    nxt = time.time()
    for i in range(len(job.households)):
        if time.time() > job.start_at + job.duration_s - 1.0:
            break
        s0 = job.seq0[i]
        p = b'{"seq":%d,"ts":%.3f,"ch4":%.1f,"fault":0}' % (s0, time.time(), PROBE_LEL)
        link.publish(job.detector_topics[i], p)
        sent[i] = time.time()
        seqs[job.detector_ids[i]] = (s0, s0, 1)
        nxt += interval
        await asyncio.sleep(max(0.0, nxt - time.time()))
    deadline = time.time() + 5.0  # late commands for the last probes
    while len(lat) < len(sent) and time.time() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    await link.wait_acked(5.0)
    await link.disconnect()
    return {
        "sent": {job.households[i]: t for i, t in sent.items()},
        "lat": {job.households[i]: t for i, t in lat.items()},
        "seqs": seqs,
        "bad": bad,
        "acked": link.stats.acked,
    }


def _install_uvloop() -> str:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    except ImportError:
        return "asyncio"


def worker_main(job: WorkerJob, out: Any) -> None:
    """Entry point of a publisher process."""
    loop_kind = _install_uvloop()
    try:
        result = asyncio.run(_worker(job, out))
        result["loop"] = loop_kind
        out.put(("final", job.index, result))
    except Exception as err:  # reported to the main process, which shows it
        out.put(("error", job.index, f"{type(err).__name__}: {err}"))


async def _worker(job: WorkerJob, out: Any) -> dict[str, Any]:
    from simulator import behaviour as bh
    from simulator.link import Link

    link = Link(
        job.host,
        job.port,
        job.account,
        job.account,
        job.password,
        max_inflight=job.max_inflight,
        reconnect=True,
        keepalive_s=30,
    )
    await link.connect()
    n = len(job.device_ids)
    is_meter = np.asarray(job.is_meter, bool)
    house = np.asarray(job.household, np.int64)
    meters = np.flatnonzero(is_meter)
    dets = np.flatnonzero(~is_meter)
    # local index of each device within its kind, for the model's columns
    kind_idx = np.empty(n, np.int64)
    kind_idx[meters] = np.arange(len(meters))
    kind_idx[dets] = np.arange(len(dets))
    model = bh.Model(
        job.seed, house[dets], np.asarray(job.qmax)[house[meters]], np.zeros(len(meters), np.int32)
    )
    topics = [f"{job.prefix}/{d}/telemetry".encode() for d in job.device_ids]
    seq = np.asarray(job.seq0, np.int64)
    first = seq.copy()
    sent_per = np.zeros(n, np.int64)
    names = [s.encode() for s in bh.VALVE_NAMES]
    cursor = 0
    sent = 0
    t_stats = 0.0
    rtt_mark = 0
    now = time.time()
    if job.start_at > now:
        await asyncio.sleep(job.start_at - now)
    t0 = time.time()
    c0 = time.process_time()
    end = t0 + job.duration_s
    behind = 0
    while True:
        now = time.time()
        if now >= end:
            break
        target = sent + job.batch if job.rate <= 0 else int(job.rate * (now - t0))
        want = target - sent
        behind = max(0, want)
        k = min(want, link.free, job.batch)
        if k > 0:
            pos = (cursor + np.arange(k)) % n
            cursor = (cursor + k) % n
            t = now
            m_sel = pos[is_meter[pos]]
            d_sel = pos[~is_meter[pos]]
            payload: dict[int, bytes] = {}
            if len(d_sel):
                ch4, fault = model.detector_lel(kind_idx[d_sel], t)
                for i, s, c, f in zip(
                    d_sel.tolist(), seq[d_sel].tolist(), ch4.tolist(), fault.tolist(), strict=True
                ):
                    payload[i] = b'{"seq":%d,"ts":%.3f,"ch4":%.2f,"fault":%d}' % (s, t, c, f)
            if len(m_sel):
                # a device appears once per round, so a batch never repeats a meter
                vol, flow, valve, batt, rssi = model.meter_reading(kind_idx[m_sel], t)
                for i, s, v, fl, vs, b, r in zip(
                    m_sel.tolist(),
                    seq[m_sel].tolist(),
                    vol.tolist(),
                    flow.tolist(),
                    valve.tolist(),
                    batt.tolist(),
                    rssi.tolist(),
                    strict=True,
                ):
                    payload[i] = (
                        b'{"seq":%d,"ts":%.3f,"vol":%.3f,"flow":%.3f,"valve":"%s",'
                        b'"batt":%.2f,"rssi":%d}' % (s, t, v, fl, names[vs], b, r)
                    )
            plist = pos.tolist()
            link.publish_many((topics[i], payload[i]) for i in plist)
            seq[pos] += 1
            sent_per[pos] += 1
            sent += k
        if now - t_stats >= STATS_EVERY_S:
            t_stats = now
            rtts = link.stats.ack_rtt_s[rtt_mark:]
            rtt_mark = len(link.stats.ack_rtt_s)
            out.put(
                (
                    "stats",
                    job.index,
                    {
                        "sent": sent,
                        "acked": link.stats.acked,
                        "inflight": len(link.inflight),
                        "behind": behind,
                        "reconnects": link.stats.reconnects,
                        "rtt_p50": float(np.percentile(rtts, 50)) if rtts else 0.0,
                        "rtt_p99": float(np.percentile(rtts, 99)) if rtts else 0.0,
                    },
                )
            )
        if link.free <= 0:
            await link.wait_space()  # the broker is behind: wait for PUBACKs
        elif job.rate <= 0 or k < want:
            await asyncio.sleep(0)  # flooding, or catching up
        else:  # on schedule: gather the next few ms (~200 readings) into one write
            await asyncio.sleep(min(0.01, max(0.002, 200.0 / job.rate)))
    t_end = time.time()
    cpu_s = time.process_time() - c0
    all_acked = await link.wait_acked(60.0)
    t_acked = time.time()
    await link.disconnect()
    rtt_all = link.stats.ack_rtt_s
    return {
        "sent": sent,
        "acked": link.stats.acked,
        "unacked": len(link.inflight),
        "all_acked": all_acked,
        "seconds": t_end - t0,
        "acked_by_s": t_acked - t0,
        "rate": sent / max(t_end - t0, 1e-9),
        "reconnects": link.stats.reconnects,
        "resent": link.stats.resent,
        "cpu_s": cpu_s,
        "rtt_ms": percentiles(rtt_all),
        "first_seq": first,
        "last_seq": seq - 1,
        "sent_per_device": sent_per,
    }


# ---------------------------------------------------------------- main process
def plan_fleet(args: argparse.Namespace, dsn: str) -> Any:
    from simulator.cli import ensure_fleet

    probes = math.ceil(args.probes * args.duration) + 5 if args.probes > 0 else 0
    households = math.ceil(args.devices / AVG_DEVICES_PER_HOUSEHOLD * 1.06) + probes
    return ensure_fleet(dsn, households, args.seed, args.prefix), probes


def main(args: argparse.Namespace) -> dict[str, Any]:
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
    probe_sent: dict[int, float] = {}
    probe_lat: dict[int, float] = {}
    probe_seq: dict[str, tuple[int, int, int]] = {}  # device -> (first, last, n)
    bad_commands: list[bytes] = []
    probe_done: dict[str, Any] = {}
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

    stats: dict[int, dict[str, Any]] = {}
    finals: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    stored_live: int | None = None

    def poll_stored() -> int:
        import psycopg

        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM detector_readings WHERE time >= %(s)s"
                " AND received_at >= %(s)s AND device_id LIKE %(p)s)"
                " + (SELECT count(*) FROM meter_readings WHERE time >= %(s)s"
                " AND received_at >= %(s)s AND device_id LIKE %(p)s)",
                {"s": dt.datetime.fromtimestamp(start_at - 1, dt.UTC), "p": args.prefix + "%"},
            ).fetchone()
        return int(row[0]) if row else 0

    def drain() -> None:
        while True:
            try:
                kind, w, payload = out.get_nowait()
            except queue.Empty:
                return
            if kind == "stats":
                stats[w] = payload
            elif kind == "final":
                finals[w] = payload
            elif kind == "probe":
                probe_done.update(payload)
                probe_sent.update(payload["sent"])
                probe_lat.update(payload["lat"])
                probe_seq.update(payload["seqs"])
                bad_commands.extend(payload["bad"])
            else:
                errors.append(f"publisher {w}: {payload}")

    def snapshot() -> dict[str, Any]:
        now = time.time()
        sent = sum(s_["sent"] for s_ in stats.values())
        lat = sorted(probe_lat.values())
        return {
            "elapsed": max(0.0, now - start_at),
            "duration": args.duration,
            "rate": sum(s_["sent"] for s_ in stats.values()) / max(now - start_at, 1e-9)
            if now > start_at
            else 0.0,
            "target": args.rate,
            "sent": sent,
            "acked": sum(s_["acked"] for s_ in stats.values()),
            "inflight": sum(s_["inflight"] for s_ in stats.values()),
            "behind": sum(s_["behind"] for s_ in stats.values()),
            "rtt_p50": max((s_["rtt_p50"] for s_ in stats.values()), default=0.0) * 1000,
            "rtt_p99": max((s_["rtt_p99"] for s_ in stats.values()), default=0.0) * 1000,
            "stored": stored_live,
            "alarm": (
                f"p50 {1000 * lat[len(lat) // 2]:.1f} ms max {1000 * lat[-1]:.1f} ms"
                if lat
                else "-"
            ),
            "probes": len(probe_sent),
            "probes_cut": len(probe_lat),
            "processes": args.processes,
            "reconnects": sum(s_["reconnects"] for s_ in stats.values()),
        }

    async def ui(live_view: Any) -> None:
        nonlocal stored_live
        last_poll = 0.0
        while True:
            drain()
            if not args.no_store_check and time.time() - last_poll > 3.0 and time.time() > start_at:
                last_poll = time.time()
                try:
                    stored_live = await asyncio.to_thread(poll_stored)
                except Exception:  # the live count is a nicety; the final count is exact
                    stored_live = None
            if live_view is not None:
                live_view.update(display.load_view(snapshot()))
            await asyncio.sleep(0.1)

    async def wait_workers() -> None:
        while len(finals) + bool(probe_done) + len(errors) < len(procs):
            await asyncio.sleep(0.2)
            if not any(p.is_alive() for p in procs):
                drain()
                break

    if live:
        with Live(display.load_view(snapshot()), refresh_per_second=4) as lv:
            uitask = asyncio.create_task(ui(lv))
            await wait_workers()
            await asyncio.sleep(0.3)
    else:
        uitask = asyncio.create_task(ui(None))
        await wait_workers()
    uitask.cancel()
    drain()
    for p in procs:
        p.join(timeout=10)

    if errors:
        raise RuntimeError("; ".join(errors))
    ids: list[str] = []
    lo: list[int] = []
    hi: list[int] = []
    n_sent: list[int] = []
    for w, devs in enumerate(jobs_dev):
        f = finals[w]
        for j, (dev, _, _) in enumerate(devs):
            if f["sent_per_device"][j]:
                ids.append(dev)
                lo.append(int(f["first_seq"][j]))
                hi.append(int(f["last_seq"][j]))
                n_sent.append(int(f["sent_per_device"][j]))
    for dev, (a, b, c) in probe_seq.items():
        ids.append(dev)
        lo.append(a)
        hi.append(b)
        n_sent.append(c)
    sent = int(sum(n_sent))
    acked = sum(f["acked"] for f in finals.values()) + probe_done.get("acked", 0)
    result: dict[str, Any] = {
        "devices": len(all_ids),
        "processes": args.processes,
        "target_rate": args.rate,
        "duration_s": args.duration,
        "sent": sent,
        "acked_by_broker": acked,
        "publish_rate": sum(f["rate"] for f in finals.values()),
        "per_process": [
            {k: v for k, v in f.items() if k not in ("first_seq", "last_seq", "sent_per_device")}
            for _, f in sorted(finals.items())
        ],
        "probes": len(probe_sent),
        "probes_cut": len(probe_lat),
        "malformed_commands": len(bad_commands),
        "alarm_latency_ms": percentiles(list(probe_lat.values())),
        # in send order, seconds since the load started: where in the run the tail comes from
        "alarm_latency_series": [
            (round(probe_sent[h] - start_at, 2), round(probe_lat[h] * 1000, 1))
            for h in sorted(probe_lat, key=probe_sent.__getitem__)
        ],
        "stored": None,
        "lost": None,
    }
    if not args.no_store_check:
        lo_a, hi_a = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        stored, waited = await asyncio.to_thread(
            storage.wait_stored, dsn, ids, lo_a, hi_a, start_at, sent, 5.0, args.settle
        )
        result["stored"] = stored
        result["lost"] = sent - stored
        result["store_wait_s"] = round(waited, 1)
        span = await asyncio.to_thread(_received_span, dsn, args.prefix, start_at)
        if span and stored:
            result["stored_rate"] = stored / max(span - start_at, 1e-9)
            result["last_stored_after_s"] = round(span - start_at, 2)
    if not args.quiet:
        print_load(result)
    return result


def _received_span(dsn: str, prefix: str, start_at: float) -> float | None:
    import psycopg

    since = dt.datetime.fromtimestamp(start_at - 1, dt.UTC)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT greatest((SELECT extract(epoch FROM max(received_at)) FROM detector_readings"
            " WHERE time >= %(s)s AND received_at >= %(s)s AND device_id LIKE %(p)s),"
            " (SELECT extract(epoch FROM max(received_at)) FROM meter_readings"
            " WHERE time >= %(s)s AND received_at >= %(s)s AND device_id LIKE %(p)s))",
            {"s": since, "p": prefix + "%"},
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def print_load(r: dict[str, Any]) -> None:
    from rich.console import Console

    from simulator.display import summary_table

    lat = r["alarm_latency_ms"]
    rows = [
        ("devices / publisher processes", f"{r['devices']:,} / {r['processes']}"),
        (
            "sent (QoS 1)",
            (f"{r['sent']:,} at {r['publish_rate']:,.0f}/s (target {r['target_rate']:,.0f}/s)"),
        ),
        ("per process", ", ".join(f"{p['rate']:,.0f}/s" for p in r["per_process"])),
        ("acknowledged by the broker", f"{r['acked_by_broker']:,}"),
        ("stored", "-" if r["stored"] is None else f"{r['stored']:,}"),
        ("lost (sent - stored)", "-" if r["lost"] is None else f"{r['lost']:,}"),
        (
            "stored readings/s end to end",
            f"{r['stored_rate']:,.0f}" if r.get("stored_rate") else "-",
        ),
        ("alarm probes cut", f"{r['probes_cut']} / {r['probes']}"),
        (
            "alarm latency (publish -> valve_close)",
            "-"
            if not lat["n"]
            else f"p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} max {lat['max']} ms",
        ),
    ]
    Console().print(summary_table("load summary", rows))
    if r["stored"] == 0:
        Console().print(
            "[yellow]nothing stored: is the gateway running (`gas-safety gateway`)?[/yellow]"
        )
