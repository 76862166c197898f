"""The publisher processes of load mode, and the alarm-probe process beside them.

Each publisher process owns one `fleet-bridge-N` connection and a disjoint share of the
devices (whole households, so every device's readings stay in order on one connection),
and paces itself to its share of the rate, pipelining QoS 1 PUBLISH packets and counting
PUBACKs (simulator/link.py). A process of its own runs the alarm probes on their bridge:
at `--probes` per second it makes a reserved detector read 45 %LEL and times the
`valve_close` the platform sends to that household's meter (and acks it). They live apart
from simulator.load (which plans, starts and counts them) so that a spawned process imports
only what it runs; each reports on the queue it is given: ("stats" | "final" | "probe" |
"error", index, payload).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway import protocol
from simulator.truth import percentiles

STATS_EVERY_S = 0.5
PROBE_LEL = 45.0


@dataclass
class WorkerJob:
    """One publisher process's share of the load (picklable: it crosses a spawn)."""

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
    install_uvloop()
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


def install_uvloop() -> str:
    """uvloop's event loop where it is installed: a publisher's pace is bound by its loop."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    except ImportError:
        return "asyncio"


def worker_main(job: WorkerJob, out: Any) -> None:
    """Entry point of a publisher process."""
    loop_kind = install_uvloop()
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
