"""Benchmark of the operator API over a year of data (ARCHITECTURE section 6 style).

What is loaded, into a private stack of its own (never the developer's `.stack`):
  * a city of 10,000 devices (about 4,170 households: a meter and one or two detectors);
  * a year of readings for every device at one reading every 6 hours (~14.6 M rows);
  * a full-resolution year, one reading every 5 minutes (the detectors' heartbeat), for a
    subset of 20 detectors and 20 meters (~4.2 M rows): the bucketed-year query runs on them;
  * 20,000 alarms, 8,000 work orders (3 steps each), 30,000 notifications, 5,000 valve
    commands, device_state for every device.
A full-resolution year for the whole fleet (10,000 x 105,120 = 1.05 billion rows) does not
fit in minutes of loading on 2 cores; per-device queries only touch one device's rows
through the (device_id, time, seq) index, so the subset shows the per-device cost of a
full-resolution year faithfully, while the 6-hour fleet sizes the tables and chunks.

Readings are generated inside PostgreSQL (INSERT ... SELECT over generate_series, one day
at a time so each day's chunk index stays in memory, two loaders in parallel): faster
than streaming them through COPY from Python on 2 cores.

The daily rollups (dashboard_api.rollup) are then backfilled, as the API's rollup worker
would, and timed. Then `gas-safety api` (dashboard_api.main.main) runs as its own process
and one client measures sequential requests (keep-alive, a JWT as operators use): p50/p99
per endpoint, against 50 ms p99 for lists and details and 100 ms for a bucketed year
(whole-day buckets; narrower buckets over a year read raw rows and are shown for
reference). Prints a table and writes bench/results/api.json.

    python bench/bench_api.py [--devices 10000] [--days 365] [--requests 300] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashboard_api import rollup
from dashboard_api.users import create_user
from gateway.ops.provision import Household, generate_city, provision
from gateway.ops.stack import Stack, free_port

RESULTS = Path(__file__).resolve().parent / "results"
LIST_P99_MS = 50.0
DETAIL_P99_MS = 50.0
BUCKET_YEAR_P99_MS = 100.0
COARSE_STEP_S = 6 * 3600
FINE_STEP_S = 300
END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PASSWORD = "bench password 1234"

_DETECTOR_DAY = """
INSERT INTO detector_readings (time, device_id, seq, ch4_lel, fault, received_at)
SELECT ts, id, (extract(epoch FROM ts) / %(step)s)::bigint,
       (abs(hashtext(id || ts::text)) %% 400) / 100.0,
       CASE WHEN abs(hashtext(ts::text || id)) %% 5000 = 0 THEN 1 ELSE 0 END, ts
FROM (SELECT d.id, gs + make_interval(secs => abs(hashtext(d.id)) %% %(step)s) AS ts
      FROM unnest(%(ids)s::text[]) AS d(id),
           generate_series(%(day)s::timestamptz,
                           %(day)s::timestamptz + interval '1 day' - interval '1 second',
                           make_interval(secs => %(step)s)) AS gs) x
"""
_METER_DAY = """
INSERT INTO meter_readings (time, device_id, seq, vol_m3, flow_m3h, valve, batt_v, rssi,
                            received_at)
SELECT ts, id, (extract(epoch FROM ts) / %(step)s)::bigint,
       (extract(epoch FROM ts) - 1.7e9) / 3600.0 * 0.05,
       (abs(hashtext(id || ts::text)) %% 150) / 100.0, 0,
       3.65 - (extract(epoch FROM ts) - 1.7e9) / 3.0e9, -80 - abs(hashtext(id)) %% 30, ts
FROM (SELECT d.id, gs + make_interval(secs => abs(hashtext(d.id)) %% %(step)s) AS ts
      FROM unnest(%(ids)s::text[]) AS d(id),
           generate_series(%(day)s::timestamptz,
                           %(day)s::timestamptz + interval '1 day' - interval '1 second',
                           make_interval(secs => %(step)s)) AS gs) x
"""

_REGISTRY_DATA = """
INSERT INTO device_state (device_id, online, last_seen, ch4_lel, fault, flow_m3h, vol_m3,
                          valve, batt_v, rssi)
SELECT id, abs(hashtext(id)) %% 100 >= 3, %(end)s - make_interval(secs => abs(hashtext(id)) %% 900),
       CASE WHEN kind = 'detector' THEN 1.0 END, CASE WHEN kind = 'detector' THEN 0 END,
       CASE WHEN kind = 'meter' THEN 0.4 END, CASE WHEN kind = 'meter' THEN 1234.5 END,
       CASE WHEN kind = 'meter' THEN 'open' END,
       CASE WHEN kind = 'meter' THEN 3.2 + (abs(hashtext(id)) %% 50) / 100.0 END,
       CASE WHEN kind = 'meter' THEN -85 END
FROM devices;

WITH det AS (SELECT array_agg(id ORDER BY id) AS ids, count(*) AS n FROM devices
             WHERE kind = 'detector')
INSERT INTO alarms (device_id, household_id, kind, severity, state, value, raised_at,
                    cleared_at, evidence, flow_at_meter, acknowledged_by, acknowledged_at)
SELECT d.id, d.household_id,
       (ARRAY['leak', 'prealarm', 'fault', 'offline'])[1 + i %% 4],
       (ARRAY['critical', 'warning', 'info', 'warning'])[1 + i %% 4],
       CASE WHEN i >= least(300, det.n) THEN 'cleared' WHEN i %% 3 = 0 THEN 'acknowledged'
            ELSE 'active' END,
       20 + i %% 50,
       %(end)s - make_interval(secs => (i * 1571) %% (365 * 86400)),
       CASE WHEN i >= least(300, det.n)
            THEN %(end)s - make_interval(secs => (i * 1571) %% (365 * 86400))
                              + interval '2 hours' END,
       jsonb_build_array(jsonb_build_object('ch4', 20 + i %% 50)), i %% 2 = 0,
       CASE WHEN i %% 3 = 0 THEN 'operator.one' END,
       CASE WHEN i %% 3 = 0 THEN %(end)s - make_interval(secs => (i * 1571) %% (365 * 86400))
                                 + interval '5 minutes' END
FROM generate_series(1, 20000) i, det,
     LATERAL (SELECT id, household_id FROM devices
              WHERE id = det.ids[1 + CASE WHEN i < least(300, det.n) THEN i
                                          ELSE (i * 7919) %% det.n END])
         AS d;

WITH hh AS (SELECT array_agg(id ORDER BY id) AS ids, count(*) AS n FROM households)
INSERT INTO work_orders (household_id, cause, priority, status, title, opened_at, arrive_by,
                         resolve_by, crew, findings, alarm_id, version)
SELECT hh.ids[1 + CASE WHEN i < least(1500, hh.n) THEN i ELSE (i * 7919) %% hh.n END],
       (ARRAY['leak', 'overflow', 'fault', 'offline', 'valve_fault'])[1 + i %% 5],
       (ARRAY['urgent', 'high', 'normal'])[1 + i %% 3],
       CASE WHEN i < least(1500, hh.n) THEN (ARRAY['open', 'dispatched', 'on_site'])[1 + i %% 3]
            WHEN i %% 7 = 0 THEN 'cancelled' ELSE 'resolved' END,
       'bench order ' || i,
       %(end)s - make_interval(secs => (i * 3967) %% (365 * 86400)),
       %(end)s - make_interval(secs => (i * 3967) %% (365 * 86400)) + interval '30 minutes',
       %(end)s - make_interval(secs => (i * 3967) %% (365 * 86400)) + interval '4 hours',
       'crew-' || (i %% 40), CASE WHEN i >= least(1500, hh.n) THEN 'bench findings' END,
       CASE WHEN i <= 20000 THEN i END, 3
FROM generate_series(1, 8000) i, hh;

INSERT INTO work_order_steps (work_order_id, at, actor, action, from_status, to_status, note)
SELECT w.id, w.opened_at + make_interval(mins => s * 10),
       (ARRAY['gateway', 'operator.one', 'engineer.one'])[s + 1],
       (ARRAY['open', 'dispatch', 'on_site'])[s + 1],
       (ARRAY[NULL, 'open', 'dispatched'])[s + 1],
       (ARRAY['open', 'dispatched', 'on_site'])[s + 1], NULL
FROM work_orders w, generate_series(0, 2) s;

WITH hh AS (SELECT array_agg(id ORDER BY id) AS ids, count(*) AS n FROM households)
INSERT INTO notifications (household_id, kind, channel, recipient, body, dedupe_key, state,
                           attempts, created_at, delivered_at, alarm_id)
SELECT hh.ids[1 + (i * 7919) %% hh.n], 'leak', 'sms', '+1555' || lpad(i::text, 7, '0'),
       'Gas leak detected: the gas was cut off.', 'bench-' || i,
       (ARRAY['sent', 'sent', 'sent', 'failed', 'pending'])[1 + i %% 5], 1,
       %(end)s - make_interval(secs => (i * 1049) %% (365 * 86400)),
       CASE WHEN i %% 5 < 3 THEN %(end)s - make_interval(secs => (i * 1049) %% (365 * 86400))
                                 + interval '2 seconds' END,
       1 + i %% 20000
FROM generate_series(1, 30000) i, hh;

WITH m AS (SELECT array_agg(id ORDER BY id) AS ids, count(*) AS n FROM devices
           WHERE kind = 'meter')
INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason, state, attempts,
                            requested_by, issued_at, sent_at, acked_at, ack_ok, ack_valve)
SELECT 'bench-' || i, d.id, d.household_id, 'valve_close', 'leak', 'acked', 1, 'gateway',
       %(end)s - make_interval(secs => (i * 2029) %% (365 * 86400)),
       %(end)s - make_interval(secs => (i * 2029) %% (365 * 86400)),
       %(end)s - make_interval(secs => (i * 2029) %% (365 * 86400)) + interval '300 ms',
       true, 'closed'
FROM generate_series(1, 5000) i, m,
     LATERAL (SELECT id, household_id FROM devices WHERE id = m.ids[1 + (i * 13) %% m.n]) d;
"""


def load(dsn: str, devices: int, days: int, fine_each: int) -> dict[str, Any]:
    started = time.perf_counter()
    households: list[Household] = []
    n = 0
    while sum(len(h.devices) for h in households) < devices:
        households = generate_city(int(devices / 2.4) + n, seed=11)
        n += 50
    # Trim to the device count: drop whole households from the end, then detectors.
    kept: list[Household] = []
    count = 0
    for h in households:
        if count + len(h.devices) > devices:
            break
        kept.append(h)
        count += len(h.devices)
    provision(dsn, kept, None, None)
    detectors = sorted(d.id for h in kept for d in h.detectors)
    meters = sorted(h.meter.id for h in kept)
    fine_det, fine_met = detectors[:fine_each], meters[:fine_each]
    coarse_det, coarse_met = detectors[fine_each:], meters[fine_each:]
    first_day = END - dt.timedelta(days=days)
    day_list = [first_day + dt.timedelta(days=i) for i in range(days)]

    errors: list[BaseException] = []

    def loader(which: int) -> None:
        try:
            _load_days(which)
        except (psycopg.Error, OSError) as err:  # reported by the main thread
            errors.append(err)

    def _load_days(which: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = off")
            for day in day_list[which::2]:
                for sql, ids, step in ((_DETECTOR_DAY, coarse_det, COARSE_STEP_S),
                                       (_METER_DAY, coarse_met, COARSE_STEP_S),
                                       (_DETECTOR_DAY, fine_det, FINE_STEP_S),
                                       (_METER_DAY, fine_met, FINE_STEP_S)):
                    params = {"ids": ids, "step": step, "day": day}
                    conn.execute(sql, params)  # type: ignore[arg-type]

    threads = [threading.Thread(target=loader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    done = 0
    while any(t.is_alive() for t in threads):
        time.sleep(5)
        done += 5
        print(f"  loading readings ... {done} s", flush=True)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    readings_s = time.perf_counter() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in _REGISTRY_DATA.split(";\n\n"):
            conn.execute(statement, {"end": END})  # type: ignore[arg-type]
        conn.execute("VACUUM ANALYZE")
        rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in ("households", "devices", "detector_readings", "meter_readings",
                          "alarms", "work_orders", "work_order_steps", "notifications",
                          "valve_commands")}
        chunks = conn.execute("SELECT count(*) FROM timescaledb_information.chunks").fetchone()
    return {"rows": rows, "chunks": chunks[0] if chunks else None,
            "load_s": round(time.perf_counter() - started, 1),
            "readings_load_s": round(readings_s, 1),
            "fine_detectors": fine_det, "fine_meters": fine_met,
            "coarse_detectors": coarse_det[:50], "coarse_meters": coarse_met[:50],
            "households": [h.id for h in kept], "communities": sorted({h.community for h in kept}),
            "devices": [d.id for h in kept for d in h.devices]}


async def backfill_rollups(dsn: str) -> int:
    """What the API's rollup worker does in the background, done before measuring."""
    days = 0
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        while await rollup.step(conn, dt.datetime.now(dt.UTC).date()) is not None:
            days += 1
    return days


def serve(home: Path, dsn: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GAS_SAFETY_HOME": str(home), "GAS_SAFETY_DB__DSN": dsn,
           "GAS_SAFETY_ENVIRONMENT": "test", "GAS_SAFETY_LOG_LEVEL": "WARNING",
           "GAS_SAFETY_API__PORT": str(port), "GAS_SAFETY_API__JWT_SECRET": "b" * 40,
           "GAS_SAFETY_API__MAX_POINTS": "10000"}
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys; from dashboard_api.main import main; sys.exit(main())"],
                            env=env, cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API did not start")


def measure(client: httpx.Client, paths: list[str], requests: int) -> dict[str, float]:
    for path in paths[:20]:  # warm-up: connections, prepared statements, caches
        client.get(path).raise_for_status()
    times = []
    for i in range(requests):
        path = paths[i % len(paths)]
        t0 = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text[:200]}")
    times.sort()
    return {"p50_ms": round(times[len(times) // 2], 2),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
            "max_ms": round(times[-1], 2), "requests": requests,
            "bytes": len(r.content)}


def scenarios(data: dict[str, Any], ids: dict[str, list[Any]]
              ) -> list[tuple[str, str, float | None, list[str]]]:
    rnd = random.Random(5)

    def window(days_back: int, days: int) -> str:
        start = END - dt.timedelta(days=days_back)
        end = start + dt.timedelta(days=days)
        return f"start={start.isoformat()}&end={end.isoformat()}".replace("+", "%2B")

    def pick(xs: list[Any], k: int = 50) -> list[Any]:
        return [rnd.choice(xs) for _ in range(k)]

    year, day = window(365, 365), window(2, 1)
    communities = data["communities"]
    return [
        ("list", "GET /households?limit=50", LIST_P99_MS,
         [f"/households?limit=50&community={c}" for c in communities] + ["/households?limit=50"]),
        ("list", "GET /devices?limit=50 (health)", LIST_P99_MS,
         ["/devices?limit=50", "/devices?limit=50&kind=meter", "/devices?limit=50&online=false"]),
        ("list", "GET /alarms?limit=50", LIST_P99_MS,
         ["/alarms?limit=50", "/alarms?limit=50&active=true",
          "/alarms?limit=50&severity=critical"]),
        ("list", "GET /alarms?community=..", LIST_P99_MS,
         [f"/alarms?limit=50&community={c}" for c in communities]),
        ("list", "GET /work-orders?limit=50", LIST_P99_MS,
         ["/work-orders?limit=50", "/work-orders?limit=50&status=open",
          "/work-orders?limit=50&overdue=true"]),
        ("list", "GET /notifications?limit=50", LIST_P99_MS,
         ["/notifications?limit=50", "/notifications?limit=50&state=failed"]),
        ("list", "GET /notifications?household_id=..", LIST_P99_MS,
         [f"/notifications?household_id={h}" for h in pick(data["households"])]),
        ("list", "GET /fleet/summary (10k devices)", LIST_P99_MS, ["/fleet/summary"]),
        ("detail", "GET /households/{id}", DETAIL_P99_MS,
         [f"/households/{h}" for h in pick(data["households"])]),
        ("detail", "GET /devices/{id}", DETAIL_P99_MS,
         [f"/devices/{d}" for d in pick(data["devices"])]),
        ("detail", "GET /alarms/{id} (+readings)", DETAIL_P99_MS,
         [f"/alarms/{a}" for a in pick(ids["alarms"])]),
        ("detail", "GET /work-orders/{id} (+steps)", DETAIL_P99_MS,
         [f"/work-orders/{w}" for w in pick(ids["work_orders"])]),
        ("detail", "GET /valves/{meter}/commands", DETAIL_P99_MS,
         [f"/valves/{m}/commands" for m in pick(ids["command_meters"])]),
        ("readings", "raw day, 5-min detector (288 pts)", DETAIL_P99_MS,
         [f"/devices/{d}/readings?{day}&limit=1000" for d in data["fine_detectors"]]),
        ("readings", "bucketed year 1d, 5-min detector", BUCKET_YEAR_P99_MS,
         [f"/devices/{d}/readings/buckets?bucket=1d&{year}" for d in data["fine_detectors"]]),
        ("readings", "bucketed year 1d, 5-min meter", BUCKET_YEAR_P99_MS,
         [f"/devices/{d}/readings/buckets?bucket=1d&{year}" for d in data["fine_meters"]]),
        ("readings", "bucketed year 7d, 5-min meter", BUCKET_YEAR_P99_MS,
         [f"/devices/{d}/readings/buckets?bucket=7d&{year}" for d in data["fine_meters"]]),
        ("readings", "bucketed year 1d, 6-h detector", BUCKET_YEAR_P99_MS,
         [f"/devices/{d}/readings/buckets?bucket=1d&{year}" for d in data["coarse_detectors"]]),
        # Buckets narrower than a day read the raw rows: shown for reference, not judged.
        ("reference", "bucketed year 6h, 5-min detector (raw)", None,
         [f"/devices/{d}/readings/buckets?bucket=6h&{year}" for d in data["fine_detectors"]]),
        ("reference", "bucketed year 1h, 5-min detector (raw, 8760)", None,
         [f"/devices/{d}/readings/buckets?bucket=1h&{year}" for d in data["fine_detectors"]]),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--fine", type=int, default=20, help="full-resolution detectors and meters")
    ap.add_argument("--requests", type=int, default=300, help="per endpoint")
    ap.add_argument("--keep", action="store_true", help="leave the stack and its data")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gas-safety-bench-api-"))
    os.chmod(home, 0o755)
    stack = Stack(home)
    proc = None
    try:
        print(f"stack in {home}")
        rt = stack.up()
        print(f"loading {args.devices} devices x {args.days} days ...", flush=True)
        data = load(rt.dsn, args.devices, args.days, args.fine)
        print(f"loaded in {data['load_s']} s: {data['rows']}")
        started = time.perf_counter()
        days_rolled = asyncio.run(backfill_rollups(rt.dsn))
        rollup_s = round(time.perf_counter() - started, 1)
        print(f"daily rollups: {days_rolled} days in {rollup_s} s")
        create_user(rt.dsn, "bench.operator", "operator", PASSWORD, actor="bench")
        with psycopg.connect(rt.dsn) as conn:
            ids = {
                "alarms": [r[0] for r in conn.execute(
                    "SELECT id FROM alarms ORDER BY random() LIMIT 200")],
                "work_orders": [r[0] for r in conn.execute(
                    "SELECT id FROM work_orders ORDER BY random() LIMIT 200")],
                "command_meters": [r[0] for r in conn.execute(
                    "SELECT DISTINCT meter_id FROM valve_commands LIMIT 200")],
            }
        port = free_port()
        proc = serve(home, rt.dsn, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            token = client.post("/auth/token", data={"username": "bench.operator",
                                                     "password": PASSWORD}).json()
            client.headers["Authorization"] = f"Bearer {token['access_token']}"
            load_before = os.getloadavg()
            rows: list[dict[str, Any]] = []
            for group, name, limit, paths in scenarios(data, ids):
                m = measure(client, paths, args.requests)
                rows.append({"group": group, "figure": name, **m, "limit_p99_ms": limit,
                             "ok": None if limit is None else m["p99_ms"] < limit})
                print(f"  {name:44s} p50 {m['p50_ms']:7.2f} ms  p99 {m['p99_ms']:7.2f} ms",
                      flush=True)
            load_after = os.getloadavg()
        width = max(len(r["figure"]) for r in rows)
        print(f"\n{'figure':{width}} | measured p50 / p99 | limit (p99) | ok")
        print(f"{'-' * width}-|--------------------|-------------|---")
        for r in rows:
            bound = "     -   " if r["limit_p99_ms"] is None else f"{r['limit_p99_ms']:6.0f} ms "
            ok = {None: "-", True: "yes", False: "NO"}[r["ok"]]
            print(f"{r['figure']:{width}} | {r['p50_ms']:6.2f} / {r['p99_ms']:6.2f} ms  |"
                  f" {bound}  | {ok}")
        result: dict[str, Any] = {
            "bench": "api", "at": dt.datetime.now(dt.UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_before": load_before, "loadavg_after": load_after},
            "loaded": {k: data[k] for k in ("rows", "chunks", "load_s", "readings_load_s")},
            "rollups": {"days": days_rolled, "backfill_s": rollup_s},
            "cadence": {"fleet_step_s": COARSE_STEP_S, "fine_step_s": FINE_STEP_S,
                        "fine_devices": len(data["fine_detectors"]) + len(data["fine_meters"]),
                        "days": args.days, "devices": args.devices},
            "requests_per_figure": args.requests, "figures": rows,
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "api.json").write_text(json.dumps(result, indent=2, default=str))
        print(f"\nwritten {RESULTS / 'api.json'}")
        return 0 if all(r["ok"] is not False for r in rows) else 1
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.keep:
            stack.down()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
