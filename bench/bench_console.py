"""The console's live board in headless Chromium: first render with N active alarms, and
whether it keeps up with a stream of new alarms.

    python bench/bench_console.py [--alarms 2000] [--rate 50] [--seconds 10]

A private stack; N households each with an active critical leak and its work order; the
API as a process (`gas-safety api`); Debian's /usr/bin/chromium through Playwright. The
first render is timed from navigation to the last of the N rows in the page. Then new
alarms are inserted (with their NOTIFY, as the gateway does) at --rate a second for
--seconds; the lag is the time from each insert to its row on the board, sampled once a
second. Writes bench/results/console.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import httpx
import psycopg
from bench_api import free_port, serve
from playwright.async_api import async_playwright

from dashboard_api.users import create_user
from gateway.ops.provision import generate_city, provision
from gateway.ops.stack import Stack

PASSWORD = "bench console password 42"
FIRST_RENDER_LIMIT_S = 1.0


def load(dsn: str, houses: list[Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for h in houses:
            cur.execute(
                "INSERT INTO alarms (device_id, household_id, kind, severity, value, raised_at)"
                " VALUES (%s, %s, 'leak', 'critical', 40, %s) RETURNING id",
                (h.detectors[0].id, h.id, now),
            )
            aid = cur.fetchone()[0]  # type: ignore[index]
            cur.execute(
                "INSERT INTO work_orders (household_id, cause, priority, title, opened_at,"
                " arrive_by, resolve_by, alarm_id) VALUES (%s, 'leak', 'urgent', 'leak', %s,"
                " %s, %s, %s)",
                (h.id, now, now + dt.timedelta(minutes=30), now + dt.timedelta(hours=4), aid),
            )


async def stream_alarms(dsn: str, houses: list[Any], rate: float, seconds: float) -> list[Any]:
    """Insert new alarms at `rate` a second (each on a detector with none open); returns
    (alarm id, inserted at) pairs."""
    out = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        start = time.monotonic()
        for i, h in enumerate(houses[: int(rate * seconds)]):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            aid = (
                await (
                    await conn.execute(
                        "INSERT INTO alarms (device_id, household_id, kind, severity, value,"
                        " raised_at) VALUES (%s, %s, 'rising', 'warning', 12, now())"
                        " RETURNING id",
                        (h.detectors[-1].id, h.id),
                    )
                ).fetchone()
            )[0]
            await conn.execute(
                "SELECT pg_notify('gas_events', %s)",
                (json.dumps({"type": "alarm.raised", "alarm_id": aid, "household_id": h.id,
                            "severity": "warning"}),),
            )
            out.append((aid, time.monotonic()))
    return out


async def browse(base: str, dsn: str, houses: list[Any], args: argparse.Namespace) -> dict:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"]
        )
        # the page's CSP forbids eval, which wait_for_function polls with
        ctx = await browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        page = await ctx.new_page()
        await page.goto(base + "/")
        await page.fill("input[name=username]", "bench.operator")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("#login-form button[type=submit]")
        await page.wait_for_selector("body[data-live=on]", timeout=30_000)
        # first render: a fresh navigation with the session already held (the tab's
        # sessionStorage), from a blank page so that unloading the board is not counted
        await page.goto("about:blank")
        started = time.perf_counter()
        await page.goto(base + "/")
        await page.wait_for_function(
            f"document.querySelectorAll('tr[data-alarm]').length >= {args.alarms}",
            timeout=60_000,
            polling=10,
        )
        first_render_s = time.perf_counter() - started
        print(f"first render of {args.alarms} alarms: {first_render_s:.3f} s", flush=True)
        phases = await page.evaluate(
            "performance.getEntriesByType('measure').map(m => [m.name, m.duration])"
        )
        nav = await page.evaluate(
            "(() => { const n = performance.getEntriesByType('navigation')[0];"
            " return [n.domContentLoadedEventEnd, n.loadEventEnd]; })()"
        )
        print(f"  page phases (ms): {phases}; DOMContentLoaded/load at {nav}")
        in_page_ms = await page.evaluate(
            "(() => { const m = performance.getEntriesByName('board.render')[0];"
            " return m.startTime + m.duration; })()")
        print(f"  board rendered {in_page_ms:.0f} ms after the navigation started (page clock)")
        await page.wait_for_selector("body[data-live=on]")

        lags: list[float] = []
        streamed: list[Any] = []

        async def sample() -> None:
            while True:
                await asyncio.sleep(1.0)
                shown = set(
                    await page.eval_on_selector_all(
                        "tr[data-alarm]", "rows => rows.map(r => Number(r.dataset.alarm))"
                    )
                )
                now = time.monotonic()
                for aid, at in list(streamed):
                    if aid in shown:
                        lags.append(now - at)
                        streamed.remove((aid, at))

        sampler = asyncio.create_task(sample())
        inserted = await stream_alarms(dsn, houses, args.rate, args.seconds)
        streamed.extend(inserted)
        # (those seen before the list was filled are counted at the next samples)
        deadline = time.monotonic() + 30
        while streamed and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        sampler.cancel()
        reads = await page.evaluate(
            "performance.getEntriesByType('measure').map(m => [m.name, Math.round(m.duration)])")
        by: dict[str, list[int]] = {}
        for name, ms in reads:
            by.setdefault(name, []).append(ms)
        print("  reads while streaming (ms, median/max/count): " + ", ".join(
            f"{k} {statistics.median(v)}/{max(v)}/{len(v)}" for k, v in by.items()), flush=True)
        await browser.close()
    return {
        "first_render_s": round(first_render_s, 3),
        "first_render_page_clock_ms": round(in_page_ms),
        "streamed": len(inserted),
        "never_shown": len(streamed),
        "lag_p50_s": round(statistics.median(lags), 2) if lags else None,
        "lag_max_s": round(max(lags), 2) if lags else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alarms", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gas-safety-bench-console-"))
    os.chmod(home, 0o755)
    stack = Stack(home)
    proc = None
    try:
        rt = stack.up()
        houses = generate_city(args.alarms, seed=3)
        provision(rt.dsn, houses, None, None)
        load(rt.dsn, houses)
        create_user(rt.dsn, "bench.operator", "operator", PASSWORD, actor="bench")
        port = free_port()
        proc = serve(home, rt.dsn, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            tok = client.post(
                "/auth/token", data={"username": "bench.operator", "password": PASSWORD}
            ).json()["access_token"]
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                r = client.get("/board", headers={"Authorization": f"Bearer {tok}"})
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            board_api_s = round(statistics.median(times), 3)
            print(f"GET /board with {args.alarms} alarms: {board_api_s} s ({len(r.content)} bytes)")
        load_before = os.getloadavg()
        figures = asyncio.run(browse(f"http://127.0.0.1:{port}", rt.dsn, houses, args))
        result = {
            "bench": "console",
            "at": dt.datetime.now(dt.UTC).isoformat(),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            },
            "alarms": args.alarms,
            "rate_per_s": args.rate,
            "seconds": args.seconds,
            "board_api_s": board_api_s,
            **figures,
            "first_render_limit_s": FIRST_RENDER_LIMIT_S,
            "ok": figures["first_render_s"] < FIRST_RENDER_LIMIT_S and not figures["never_shown"],
        }
        print(json.dumps(result, indent=2))
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "console.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0 if result["ok"] else 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        stack.down()


if __name__ == "__main__":
    sys.exit(main())
