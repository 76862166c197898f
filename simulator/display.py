"""Live terminal views (rich) of a scenario run and of a load run, and their summaries."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from simulator.truth import cut_by, cut_due

STYLE = {
    "leak": "bold red",
    "alarm": "yellow",
    "command": "bold green",
    "valve": "green",
    "fault": "magenta",
    "plan": "dim",
    "platform": "cyan",
    "info": "white",
}


class EventLog:
    def __init__(self, size: int = 14) -> None:
        self.lines: deque[tuple[float, str, str]] = deque(maxlen=size)

    def __call__(self, kind: str, text: str) -> None:
        if kind == "plan":
            return
        self.lines.append((time.time(), kind, text))

    def render(self, t0: float) -> Text:
        out = Text()
        for at, kind, text in self.lines:
            out.append(f"{at - t0:7.1f}s ", "dim")
            out.append(f"{kind:<8} ", STYLE.get(kind, ""))
            out.append(text + "\n")
        return out


def run_view(run: Any, log: EventLog, platform: dict[str, Any] | None = None) -> Group:
    now = time.time()
    tr = run.truth
    due = sum(1 for lk in tr.leaks if cut_due(lk))
    local = sum(1 for lk in tr.leaks if cut_by(lk) == "detector")
    cut = sum(1 for lk in tr.leaks if cut_by(lk) is not None)
    lat = sorted(
        1000 * (lk.close_received_at - lk.cut_due_publish)
        for lk in tr.leaks
        if lk.close_received_at is not None and lk.cut_due_publish is not None
    )
    head = Table.grid(padding=(0, 3))
    head.add_row(
        f"[b]elapsed[/b] {now - run.started_at:6.1f}s",
        f"[b]sim clock[/b] {time.strftime('%H:%M:%S', time.gmtime(run.clock.sim(now)))}"
        f" (x{run.opts.speed:g})",
        f"[b]published[/b] {run.published:,}",
        f"[b]broker acked[/b] {run.transport.acked:,}",
        f"[b]in flight[/b] {run.transport.inflight:,}",
    )
    head.add_row(
        f"[b]leaks[/b] {len(tr.leaks)} planned",
        f"[b]cut due[/b] {due}",
        f"[b]cut[/b] [green]{cut}[/green] ({local} by the detector)",
        "[b]latency[/b] "
        + (f"p50 {lat[len(lat) // 2]:.1f} ms max {lat[-1]:.1f} ms" if lat else "-"),
        f"[b]chaos[/b] {sum(tr.chaos.values()):,}",
    )
    parts: list[Any] = [
        Panel(head, title="gas-safety simulated fleet"),
        Panel(log.render(run.started_at), title="what happens"),
    ]
    if platform:
        parts.append(platform_table(platform))
    return Group(*parts)


def platform_table(p: dict[str, Any]) -> Panel:
    t = Table(show_header=True, header_style="bold cyan", expand=True)
    t.add_column("valve commands")
    t.add_column("work orders")
    t.add_column("notifications")
    rows = max(
        len(p.get("valve_commands", [])),
        len(p.get("work_orders", [])),
        len(p.get("notifications", [])),
        1,
    )
    for i in range(min(rows, 8)):
        t.add_row(
            *(
                p.get(k, [])[i] if i < len(p.get(k, [])) else ""
                for k in ("valve_commands", "work_orders", "notifications")
            )
        )
    return Panel(t, title="the platform (from the database)")


def load_view(s: dict[str, Any]) -> Panel:
    t = Table.grid(padding=(0, 3))
    t.add_row(
        f"[b]elapsed[/b] {s['elapsed']:6.1f}s / {s['duration']:.0f}s",
        f"[b]rate[/b] {s['rate']:,.0f}/s (target {s['target']:,.0f})",
        f"[b]sent[/b] {s['sent']:,}",
        f"[b]PUBACKed[/b] {s['acked']:,}",
    )
    t.add_row(
        f"[b]backlog[/b] {s['behind']:,} unsent, {s['inflight']:,} in flight",
        f"[b]PUBACK rtt[/b] p50 {s['rtt_p50']:.1f} ms p99 {s['rtt_p99']:.1f} ms",
        f"[b]stored[/b] {s['stored']:,}" if s.get("stored") is not None else "",
        f"[b]alarm latency[/b] {s['alarm']}",
    )
    t.add_row(
        f"[b]probes[/b] {s['probes_cut']}/{s['probes']} cut",
        f"[b]processes[/b] {s['processes']}",
        f"[b]reconnects[/b] {s['reconnects']}",
        "",
    )
    return Panel(t, title="gas-safety load")


def summary_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, str(v))
    return t
