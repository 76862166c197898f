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
        p.add_argument(
            "--households",
            type=_count(1, 1_000_000, "households"),
            default=households,
            help="simulated households (provisioned first when missing)",
        )
        p.add_argument(
            "--prefix",
            default="",
            help="id prefix of the simulated households (as in `fleet provision --prefix`)",
        )
        p.add_argument("--seed", type=int, default=1, help="random seed of the city and the run")
        p.add_argument(
            "--leaks", type=_count(0, 100_000, "leaks"), default=leaks, help="leak events to inject"
        )
        p.add_argument(
            "--faults",
            type=_count(0, 100_000, "faults"),
            default=max(1, leaks // 2),
            help="device faults to inject (sensor faults, stuck readings)",
        )
        p.add_argument("--duration", type=_positive(), default=duration, help="wall seconds to run")
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
        p.add_argument(
            "--slow-delay",
            type=float,
            default=8.0,
            help="seconds a slow-acking meter waits before its ack",
        )
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
            type=_share("--type-a"),
            default=0.6,
            help="share of detectors that close their meter themselves (Type A), 0 to 1",
        )
        p.add_argument(
            "--local-close-fail",
            type=_share("--local-close-fail"),
            default=0.25,
            help="share of leaking Type A households whose meter ignores the detector, 0 to 1",
        )
        p.add_argument(
            "--tampers", type=_count(0, 10_000, "tampers"), default=1, help="tamper events to send"
        )
        p.add_argument(
            "--outages",
            type=_count(0, 10_000, "outages"),
            default=1,
            help="detectors losing power for a while, then back with power_on",
        )
        p.add_argument(
            "--truth-out",
            type=Path,
            default=None,
            help="write the injected events (the ground truth) to this JSON file",
        )
        p.add_argument("--quiet", action="store_true", help="no live display")

    demo = sub.add_parser("demo", help="everything, live: stack, gateway, API, leaks")
    scenario_args(demo, 200, 8, 180.0, 20.0)
    demo.add_argument("--no-api", action="store_true", help="do not start the operator API")
    demo.set_defaults(sim_func=_demo)

    run = sub.add_parser("run", help="a scenario against the running stack and gateway")
    scenario_args(run, 1000, 20, 120.0, 10.0)
    run.set_defaults(sim_func=_run)

    load = sub.add_parser("load", help="N devices at R readings/s for T seconds")
    load.add_argument(
        "--devices",
        type=_count(1, 1_000_000, "devices"),
        default=20_000,
        help="simulated devices (provisioned first when missing)",
    )
    load.add_argument(
        "--rate", type=_positive(), default=20_000.0, help="readings/s in total, all devices"
    )
    load.add_argument("--duration", type=_positive(), default=30.0, help="wall seconds to publish")
    load.add_argument(
        "--processes", type=_count(1, 7, "processes"), default=2, help="publisher processes"
    )
    load.add_argument("--prefix", default="L", help="id prefix of the load fleet")
    load.add_argument("--seed", type=int, default=1, help="random seed of the load fleet")
    load.add_argument("--probes", type=float, default=2.0, help="leak probes per second")
    load.add_argument(
        "--settle", type=float, default=60.0, help="wait at most this long for storage to catch up"
    )
    load.add_argument(
        "--no-store-check",
        action="store_true",
        help="do not count the stored readings afterwards (publish only)",
    )
    load.add_argument(
        "--json-out", type=Path, default=None, help="write the results to this JSON file"
    )
    load.add_argument("--quiet", action="store_true", help="no live display")
    load.set_defaults(sim_func=_load)


def _count(low: int, high: int, what: str) -> Any:
    """An argparse type: a whole number of `what` from low to high, refused in one line."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number of {what}: {text!r}") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"{what}: from {low:,} to {high:,}, got {n:,}")
        return n

    return parse


def _share(option: str) -> Any:
    """An argparse type: a fraction from 0 to 1."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(x) and 0 <= x <= 1):
            raise argparse.ArgumentTypeError(f"{option}: a share from 0 to 1, got {text}")
        return x

    return parse


def _positive() -> Any:
    """An argparse type: a finite number above 0."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(x) and x > 0):
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return x

    return parse


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
