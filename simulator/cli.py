"""The scenario steps behind `gas-safety simulate`: find the stack, provision the fleet, run,
score and judge a scenario.

`simulate run` is `run_scenario` here; `simulate demo` (simulator.demo) and `simulate load`
(simulator.load) reuse the same steps. The parsers live in simulator.commands, which imports
this module and never the other way round, so the steps import no command that uses them.
A run exits 1 if a leak whose cut was due was not cut, a valve was cut in a household
without a leak, or readings were lost.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- shared setup
def stack_runtime() -> Any:
    """The running private stack, or a StackError naming the command that starts it."""
    from gateway.ops.stack import Stack, StackError

    rt = Stack().runtime()
    if rt is None:
        raise StackError(
            "no private stack found (runtime.json): run `gas-safety stack up`"
            " first, or `gas-safety simulate demo` which starts it"
        )
    return rt


def ensure_fleet(dsn: str, households: int, seed: int, prefix: str) -> Any:
    """The first `households` households with `prefix` from the registry, provisioning
    the missing ones (idempotent) so that a fresh stack works too."""
    from gateway.ops import provision
    from gateway.ops.stack import Stack
    from simulator.fleet import Fleet

    # generate_city names households `{prefix}h{k:06d}`: other fleets stay out
    fleet = Fleet.from_db(dsn, prefix + "h", limit=households)
    if fleet.households < households:
        stack = Stack()
        rt = stack.runtime()
        city = provision.generate_city(households, seed=seed, prefix=prefix)
        result = provision.provision(
            dsn, city, str(stack.passwd_file) if rt else None, rt.fleet_key if rt else None
        )
        if rt:
            stack.reload_broker()
            time.sleep(0.3)  # Mosquitto re-reads its password file on SIGHUP
        logger.info("provisioned %s", result)
        fleet = Fleet.from_db(dsn, prefix + "h", limit=households)
    return fleet


def options_from(args: argparse.Namespace) -> Any:
    from simulator.behaviour import LeakKind
    from simulator.runner import RunOptions
    from simulator.valve import ResponderShares

    try:
        kinds = tuple(LeakKind[k.strip().upper()] for k in args.kinds.split(",") if k.strip())
    except KeyError as err:
        raise SystemExit(
            f"unknown leak kind {err}; choose from seep, rupture, hose_off, riser"
        ) from None
    return RunOptions(
        leak_kinds=kinds or (LeakKind.SEEP,),
        duration_s=args.duration,
        speed=args.speed,
        interval_s=args.interval,
        leaks=args.leaks,
        faults=args.faults,
        seed=args.seed,
        chaos=args.chaos,
        responders=ResponderShares(args.slow, args.lossy, args.never_ack, args.slow_delay),
        grace_s=args.grace,
        start_hour=args.start_hour,
        resident_press_share=args.resident_press,
        type_a_share=args.type_a,
        local_close_fail=args.local_close_fail,
        tampers=args.tampers,
        outages=args.outages,
    )


def make_transport(fleet: Any, rt: Any, per_device: bool, bridges: list[int]) -> Any:
    from gateway import settings
    from simulator.transport import BridgeTransport, PerDeviceTransport

    mq = settings.load().mqtt
    if per_device:
        return PerDeviceTransport(fleet, mq.host, mq.port, rt.fleet_key, rt)
    return BridgeTransport(fleet, mq.host, mq.port, rt, tuple(bridges))


async def scenario(
    args: argparse.Namespace,
    fleet: Any,
    rt: Any,
    dsn: str,
    on_event: Any = None,
    platform_poll: Any = None,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Run one scenario to its end and score it; the shared core of `run` and `demo`."""
    from rich.live import Live

    from simulator import display, notices, storage
    from simulator.runner import FleetRun

    log = display.EventLog()

    def event(kind: str, text: str) -> None:
        log(kind, text)
        if on_event:
            on_event(kind, text)
        if args.quiet and kind != "plan":
            logger.info("%s %s", kind, text)

    seq_start = storage.last_seqs(dsn, fleet.all_device_ids())
    busy, closed = storage.platform_state(dsn, fleet.household_ids, fleet.meter_ids)
    transport = make_transport(fleet, rt, args.per_device, args.bridge)
    fr = FleetRun(
        fleet,
        transport,
        options_from(args),
        event,
        seq_start,
        args.per_device,
        {fleet.household_index[h] for h in busy},
        {fleet.meter_index[m] for m in closed},
    )
    if busy:
        event(
            "info",
            f"{len(busy)} households still have open alarms, orders or commands:"
            " no leaks injected there",
        )
    await fr.start()
    stop = stop or asyncio.Event()
    platform: dict[str, Any] = {}

    async def refresh(live: Live | None) -> None:
        while True:
            if platform_poll is not None:
                try:
                    platform.update(await asyncio.to_thread(platform_poll, fr.started_at))
                except Exception as err:  # the display must not stop the run
                    logger.debug("platform poll failed: %s", err)
            if live is not None:
                live.update(display.run_view(fr, log, platform or None))
            await asyncio.sleep(0.5)

    if args.quiet:
        task = asyncio.create_task(refresh(None))
        await fr.run(stop)
    else:
        with Live(display.run_view(fr, log), refresh_per_second=4, screen=False) as live:
            task = asyncio.create_task(refresh(live))
            await fr.run(stop)
            live.update(display.run_view(fr, log, platform or None))
    task.cancel()
    await transport.close()
    ids, lo, hi, n = fr.sent_ranges()
    expected = int(n.sum())
    stored, waited = await asyncio.to_thread(
        storage.wait_stored, dsn, ids, lo, hi, fr.started_at, expected, 5.0, 30.0
    )
    db = await asyncio.to_thread(
        notices.read_platform, dsn, fleet, fr.started_at, list(fr.truth.commands)
    )
    scores = fr.truth.score(db)
    scores["readings"] = {
        "sent": expected,
        "stored": stored,
        "lost": expected - stored,
        "waited_s": round(waited, 1),
    }
    scores["mqtt"] = fr.summary()
    if args.truth_out:
        fr.truth.to_json(args.truth_out, scores)
    return scores


def print_scores(scores: dict[str, Any]) -> None:
    from rich.console import Console

    from simulator.display import summary_table

    r = scores["readings"]
    rows = [
        ("readings sent / stored / lost", f"{r['sent']:,} / {r['stored']:,} / {r['lost']:,}"),
        (
            "leaks planned / cut due / cut",
            f"{scores['leaks']} / {scores['cut_due']} / {scores['cut']}",
        ),
        (
            "cut by the detector / by the platform",
            f"{scores['cut_by_detector']} / {scores['cut_by_platform']}"
            f" (Type A alarms whose meter failed to close: {len(scores['local_close_failed'])})",
        ),
        ("missed (cut due, valve never closed)", ", ".join(scores["missed"]) or "none"),
        ("false cuts", ", ".join(c["household_id"] for c in scores["false_cuts"]) or "none"),
        ("cuts not required (warning-level leaks)", len(scores["cut_not_required"])),
        ("due -> meter got valve_close (ms)", _pct(scores["latency_to_command_ms"])),
        ("due -> valve closed (ms)", _pct(scores["latency_to_valve_closed_ms"])),
        ("due -> ack published (ms)", _pct(scores["latency_to_ack_ms"])),
        ("detector alarm -> valve closed (ms)", _pct(scores["local_alarm_to_valve_closed_ms"])),
        (
            "detector alarm, meter failed -> platform close (ms)",
            _pct(scores["local_alarm_to_platform_close_ms"]),
        ),
        ("commands received", dict(scores["commands"]) or "none"),
        ("chaos sent", scores["chaos_sent"] or "none"),
    ]
    plat = scores.get("platform")
    if plat:
        rows += [
            ("valve_commands states", plat["valve_commands"] or "none"),
            ("due -> acked in db (ms)", _pct(plat["latency_to_acked_in_db_ms"])),
            ("alarms by kind", plat["alarms_by_kind"] or "none"),
            ("faults with an alarm", f"{plat['faults_with_alarm']} / {len(plat['faults'])}"),
            ("rejects expected vs found", plat["rejects_vs_expected"] or "none"),
        ]
        for path, p in plat["leak_paths"].items():
            lat = p["leak_to_order_s"]
            rows.append(
                (
                    f"leaks cut by {path}" if path != "not_cut" else "leaks not cut",
                    f"{p['leaks']}: work orders {p['orders']} (dispatched {p['dispatched']}),"
                    + (f" leak -> order p50 {lat['p50']} s max {lat['max']} s," if lat["n"] else "")
                    + (
                        f" first call p50 {c['p50']} s,"
                        if (c := p.get("first_call_s", {})).get("n")
                        else ""
                    )
                    + f" owner notice {p['notices']}",
                )
            )
        for e in plat["events"]:
            rows.append((e["id"], {k: v for k, v in e.items() if k != "id"}))
    Console().print(summary_table("run summary", rows))


def _pct(p: dict[str, Any]) -> str:
    if not p.get("n"):
        return "-"
    return f"p50 {p['p50']} p95 {p['p95']} p99 {p['p99']} max {p['max']} (n={p['n']})"


def verdict(scores: dict[str, Any]) -> int:
    bad = []
    if scores["missed"]:
        bad.append(f"{len(scores['missed'])} leak(s) not cut")
    if scores["false_cuts"]:
        bad.append(f"{len(scores['false_cuts'])} false cut(s)")
    if scores["readings"]["lost"]:
        bad.append(f"{scores['readings']['lost']} reading(s) lost")
    if bad:
        print("FAIL: " + "; ".join(bad), file=sys.stderr)
        return 1
    print("OK: every due cut happened, no false cut, nothing lost")
    return 0


# ---------------------------------------------------------------- run
def run_scenario(args: argparse.Namespace) -> int:
    """`simulate run`: one scored scenario against the running stack and gateway."""
    from gateway import settings

    rt = stack_runtime()
    dsn = settings.load().db.dsn
    fleet = ensure_fleet(dsn, args.households, args.seed, args.prefix)
    if fleet.households == 0:
        print("no households to simulate", file=sys.stderr)
        return 2
    scores = asyncio.run(_with_sigint(lambda stop: scenario(args, fleet, rt, dsn, stop=stop)))
    print_scores(scores)
    return verdict(scores)


async def _with_sigint(make: Any) -> Any:
    """Run a coroutine factory; the first Ctrl-C ends the scenario early but still scores it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        return await make(stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
