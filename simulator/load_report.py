"""What a load run's processes report: the live statistics, the final result, the summary.

The publisher and probe processes (simulator.publisher) put their progress on one queue;
`Tally` drains it, gives the live view its snapshot (simulator.display.load_view) and, at
the end, sums the per-process results into the run's result and the (device, seq) ranges
whose storage the run then counts. It is apart from simulator.load so that the bookkeeping
can be read without the process orchestration around it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import queue
import time
from typing import Any

from simulator.truth import percentiles


class Tally:
    """What the processes of one run have reported so far."""

    def __init__(self, args: argparse.Namespace, start_at: float) -> None:
        self.args = args
        self.start_at = start_at
        self.stats: dict[int, dict[str, Any]] = {}
        self.finals: dict[int, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.probe_sent: dict[int, float] = {}
        self.probe_lat: dict[int, float] = {}
        self.probe_seq: dict[str, tuple[int, int, int]] = {}  # device -> (first, last, n)
        self.bad_commands: list[bytes] = []
        self.probe_done: dict[str, Any] = {}
        self.stored_live: int | None = None

    def drain(self, out: Any) -> None:
        """Take everything queued on `out` now, without waiting."""
        while True:
            try:
                kind, w, payload = out.get_nowait()
            except queue.Empty:
                return
            if kind == "stats":
                self.stats[w] = payload
            elif kind == "final":
                self.finals[w] = payload
            elif kind == "probe":
                self.probe_done.update(payload)
                self.probe_sent.update(payload["sent"])
                self.probe_lat.update(payload["lat"])
                self.probe_seq.update(payload["seqs"])
                self.bad_commands.extend(payload["bad"])
            else:
                self.errors.append(f"publisher {w}: {payload}")

    def reported(self) -> int:
        """How many processes have finished (with a result or an error)."""
        return len(self.finals) + bool(self.probe_done) + len(self.errors)

    def snapshot(self) -> dict[str, Any]:
        """The live view's numbers, summed over the publishers' latest statistics."""
        args, start_at, stats = self.args, self.start_at, self.stats
        now = time.time()
        sent = sum(s_["sent"] for s_ in stats.values())
        lat = sorted(self.probe_lat.values())
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
            "stored": self.stored_live,
            "alarm": (
                f"p50 {1000 * lat[len(lat) // 2]:.1f} ms max {1000 * lat[-1]:.1f} ms"
                if lat
                else "-"
            ),
            "probes": len(self.probe_sent),
            "probes_cut": len(self.probe_lat),
            "processes": args.processes,
            "reconnects": sum(s_["reconnects"] for s_ in stats.values()),
        }

    def result(
        self, jobs_dev: list[list[tuple[str, bool, int]]], devices: int
    ) -> tuple[dict[str, Any], list[str], list[int], list[int]]:
        """The run's result (storage not yet counted), and the devices it sent for with the
        first and last seq of each: the ranges the storage count looks for."""
        args, start_at, finals = self.args, self.start_at, self.finals
        probe_sent, probe_lat = self.probe_sent, self.probe_lat
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
        for dev, (a, b, c) in self.probe_seq.items():
            ids.append(dev)
            lo.append(a)
            hi.append(b)
            n_sent.append(c)
        sent = int(sum(n_sent))
        acked = sum(f["acked"] for f in finals.values()) + self.probe_done.get("acked", 0)
        result: dict[str, Any] = {
            "devices": devices,
            "processes": args.processes,
            "target_rate": args.rate,
            "duration_s": args.duration,
            "sent": sent,
            "acked_by_broker": acked,
            "publish_rate": sum(f["rate"] for f in finals.values()),
            "per_process": [
                {
                    k: v
                    for k, v in f.items()
                    if k not in ("first_seq", "last_seq", "sent_per_device")
                }
                for _, f in sorted(finals.items())
            ],
            "probes": len(probe_sent),
            "probes_cut": len(probe_lat),
            "malformed_commands": len(self.bad_commands),
            "alarm_latency_ms": percentiles(list(probe_lat.values())),
            # in send order, seconds since the load started: where in the run the tail comes from
            "alarm_latency_series": [
                (round(probe_sent[h] - start_at, 2), round(probe_lat[h] * 1000, 1))
                for h in sorted(probe_lat, key=probe_sent.__getitem__)
            ],
            "stored": None,
            "lost": None,
        }
        return result, ids, lo, hi


def poll_stored(dsn: str, prefix: str, start_at: float) -> int:
    """Readings of this run stored so far (for the live view; the final count is exact)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM detector_readings WHERE time >= %(s)s"
            " AND received_at >= %(s)s AND device_id LIKE %(p)s)"
            " + (SELECT count(*) FROM meter_readings WHERE time >= %(s)s"
            " AND received_at >= %(s)s AND device_id LIKE %(p)s)",
            {"s": dt.datetime.fromtimestamp(start_at - 1, dt.UTC), "p": prefix + "%"},
        ).fetchone()
    return int(row[0]) if row else 0


def received_span(dsn: str, prefix: str, start_at: float) -> float | None:
    """When the run's last stored reading was received: the end of the stored rate's span."""
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
    """The run's result as a table, for a person at the terminal."""
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
