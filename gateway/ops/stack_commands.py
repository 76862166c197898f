"""`gas-safety stack up|down|status`: the private services, single-node by default, with a
streaming replica (`--replica`) or as the multi-node topology (`--cluster`)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _stack_up(args: argparse.Namespace) -> int:
    from gateway.ops.stack import Stack

    stack = Stack()
    if args.cluster:
        from gateway.ops.cluster_stack import ClusterStack, describe

        print(describe(ClusterStack().up()))
    else:
        rt = stack.up()
        print(f"postgres  127.0.0.1:{rt.pg_port}  (dsn in {rt.home}/runtime.json)")
        print(f"mosquitto 127.0.0.1:{rt.mqtt_port}")
    from gateway.ops.replica import Replica

    if args.replica or Replica(stack).runtime() is not None:
        # a replica once set up comes back with the stack (status counts it)
        replica = Replica(stack).up()
        print(f"replica   127.0.0.1:{replica.port}  (the API's reads that may lag)")
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from gateway.ops.cluster_stack import ClusterStack
    from gateway.ops.replica import Replica
    from gateway.ops.stack import Stack

    ClusterStack().down()  # nothing when the cluster never ran
    stack = Stack()
    Replica(stack).down()
    stack.down()
    print("stack stopped")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from gateway.ops.cluster_stack import ClusterStack, merged_status
    from gateway.ops.replica import Replica
    from gateway.ops.stack import Stack

    stack = Stack()
    status = merged_status(stack.status(), ClusterStack())
    replica = Replica(stack)
    if replica.runtime() is not None:
        status["replica"] = replica.status()
    print(json.dumps(status, indent=2))
    healthy = all(
        isinstance(v, dict) and v.get("healthy")
        for k, v in status.items()
        if k != "home" and not (isinstance(v, str) and v.startswith("not started"))
    )
    return 0 if healthy else 1


def register(subparsers: Any) -> None:
    """Add `stack` and its actions."""
    stack = subparsers.add_parser(
        "stack", help="the private Mosquitto and TimescaleDB"
    ).add_subparsers(dest="action", required=True)
    up = stack.add_parser("up", help="start both (installs nothing; see scripts/bootstrap.sh)")
    up.add_argument(
        "--cluster",
        action="store_true",
        help="the multi-node topology instead of the single broker: 3 NATS JetStream nodes,"
        " 2 edge brokers with a relay each, the same PostgreSQL (docs/cluster.md)"
        " (default: the single broker)",
    )
    up.add_argument(
        "--replica",
        action="store_true",
        help="also a streaming replica of PostgreSQL, for the API's reads that may lag;"
        " once set up, later `stack up` runs start it too (default: none)",
    )
    up.set_defaults(func=_stack_up)
    stack.add_parser("down", help="stop both cleanly").set_defaults(func=_stack_down)
    stack.add_parser("status", help="where each runs and whether it is healthy").set_defaults(
        func=_stack_status
    )
