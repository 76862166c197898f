"""`gas-safety simulate demo | run | load`: the simulated fleet's commands.

- `demo`: the stack, a provisioned city, the gateway and the API as subprocesses, and a
  scenario with leaks shown live (valve cuts with their latency, work orders and
  notifications read from the database); Ctrl-C stops everything cleanly.
- `run`: a scenario against the running stack and gateway; exits 1 if a leak whose cut was
  due was not cut, a valve was cut in a household without a leak, or readings were lost.
- `load`: N devices at R readings/s for T seconds over several publisher processes, with
  alarm probes; exits 1 on lost readings.

Registered under the `gas_safety.commands` entry-point group, so that `gas-safety` offers
`simulate` where the simulator is installed without the gateway importing its test fleet.
The command modules load only when their command runs: `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add `simulate` to the `gas-safety` parser (the entry point of this package)."""
    sim = subparsers.add_parser("simulate", help="run the simulated fleet (demo, scenario or load)")
    add_arguments(sim)
    sim.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch `simulate <command>` to its implementation; its return is the exit status."""
    if not getattr(args, "sim_command", None):
        print("usage: gas-safety simulate demo|run|load ...", file=sys.stderr)
        return 2
    return int(args.sim_func(args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `demo`, `run` and `load` subcommands with their options and defaults."""
    sub = parser.add_subparsers(dest="sim_command", required=True)

    def scenario_args(
        p: argparse.ArgumentParser, households: int, leaks: int, duration: float, speed: float
    ) -> None:
        p.add_argument("--households", type=int, default=households)
        p.add_argument(
            "--prefix",
            default="",
            help="id prefix of the simulated households (as in `fleet provision --prefix`)",
        )
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--leaks", type=int, default=leaks, help="leak events to inject")
        p.add_argument("--faults", type=int, default=max(1, leaks // 2))
        p.add_argument("--duration", type=float, default=duration, help="wall seconds")
        p.add_argument(
            "--speed", type=float, default=speed, help="simulated seconds per wall second"
        )
        p.add_argument(
            "--interval",
            type=float,
            default=5.0,
            help="wall seconds between a device's routine readings",
        )
        p.add_argument(
            "--per-device",
            action="store_true",
            help="one MQTT connection per device (default: fleet bridges)",
        )
        p.add_argument(
            "--chaos",
            type=float,
            default=0.0,
            help="share of readings followed by a misbehaving message",
        )
        p.add_argument("--slow", type=float, default=0.05, help="share of slow-acking meters")
        p.add_argument(
            "--lossy", type=float, default=0.05, help="share of meters dropping half their commands"
        )
        p.add_argument(
            "--never-ack", type=float, default=0.02, help="share of meters that close but never ack"
        )
        p.add_argument("--slow-delay", type=float, default=8.0)
        p.add_argument(
            "--resident-press",
            type=float,
            default=0.5,
            help="share of reopen requests the resident confirms at the meter",
        )
        p.add_argument(
            "--start-hour",
            type=float,
            default=None,
            help="simulated time of day at the start (UTC hours)",
        )
        p.add_argument(
            "--bridge",
            type=int,
            nargs="+",
            default=[0, 1],
            help="fleet-bridge accounts to use (bridge mode)",
        )
        p.add_argument(
            "--grace",
            type=float,
            default=30.0,
            help="after the run, wait this long at most for due cuts",
        )
        p.add_argument(
            "--kinds",
            default="seep,rupture,hose_off,rupture,seep,riser",
            help="leak kinds to inject, in turn",
        )
        p.add_argument(
            "--type-a",
            type=float,
            default=0.6,
            help="share of detectors that close their meter themselves (Type A)",
        )
        p.add_argument(
            "--local-close-fail",
            type=float,
            default=0.25,
            help="share of leaking Type A households whose meter ignores the detector",
        )
        p.add_argument("--tampers", type=int, default=1, help="tamper events to send")
        p.add_argument(
            "--outages",
            type=int,
            default=1,
            help="detectors losing power for a while, then back with power_on",
        )
        p.add_argument("--truth-out", type=Path, default=None)
        p.add_argument("--quiet", action="store_true", help="no live display")

    demo = sub.add_parser("demo", help="everything, live: stack, gateway, API, leaks")
    scenario_args(demo, 200, 8, 180.0, 20.0)
    demo.add_argument("--no-api", action="store_true")
    demo.set_defaults(sim_func=_demo)

    run = sub.add_parser("run", help="a scenario against the running stack and gateway")
    scenario_args(run, 1000, 20, 120.0, 10.0)
    run.set_defaults(sim_func=_run)

    load = sub.add_parser("load", help="N devices at R readings/s for T seconds")
    load.add_argument("--devices", type=int, default=20_000)
    load.add_argument("--rate", type=float, default=20_000.0, help="readings/s in total")
    load.add_argument("--duration", type=float, default=30.0)
    load.add_argument("--processes", type=int, default=2, help="publisher processes (<= 7)")
    load.add_argument("--prefix", default="L", help="id prefix of the load fleet")
    load.add_argument("--seed", type=int, default=1)
    load.add_argument("--probes", type=float, default=2.0, help="leak probes per second")
    load.add_argument(
        "--settle", type=float, default=60.0, help="wait at most this long for storage to catch up"
    )
    load.add_argument("--no-store-check", action="store_true")
    load.add_argument("--json-out", type=Path, default=None)
    load.add_argument("--quiet", action="store_true")
    load.set_defaults(sim_func=_load)


def _run(args: argparse.Namespace) -> int:
    from simulator import cli

    return cli.run_scenario(args)


def _demo(args: argparse.Namespace) -> int:
    from simulator import demo

    return demo.main(args)


def _load(args: argparse.Namespace) -> int:
    from simulator import load

    result = load.main(args)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=1))
    lost = result.get("lost")
    return 1 if (lost is not None and lost > 0) or not math.isfinite(result.get("sent", 0)) else 0
