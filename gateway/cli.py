"""`gas-safety`: one command for the stack, the fleet, the gateway, the API and the simulator."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from gateway.logs import setup_logging


def _stack_up(args: argparse.Namespace) -> int:
    from gateway.stack import Stack

    rt = Stack().up()
    print(f"postgres  127.0.0.1:{rt.pg_port}  (dsn in {rt.home}/runtime.json)")
    print(f"mosquitto 127.0.0.1:{rt.mqtt_port}")
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from gateway.stack import Stack

    Stack().down()
    print("stack stopped")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from gateway.stack import Stack

    status = Stack().status()
    print(json.dumps(status, indent=2))
    healthy = all(isinstance(v, dict) and v.get("healthy") for k, v in status.items() if k != "home")
    return 0 if healthy else 1


def _db_migrate(args: argparse.Namespace) -> int:
    from gateway import schema, settings

    applied = schema.migrate(settings.load().db.dsn)
    print("applied: " + (", ".join(applied) or "nothing (schema up to date)"))
    return 0


def _db_retain(args: argparse.Namespace) -> int:
    from gateway import schema, settings

    s = settings.load()
    days = args.days or s.db.retention_days
    print(json.dumps(schema.drop_old_chunks(s.db.dsn, days)))
    return 0


def _fleet_provision(args: argparse.Namespace) -> int:
    from gateway import provision, settings
    from gateway.stack import Stack

    stack = Stack()
    rt = stack.runtime()
    city = provision.generate_city(args.households, seed=args.seed, prefix=args.prefix,
                                   start=args.start)
    result = provision.provision(settings.load().db.dsn, city,
                                 str(stack.passwd_file) if rt else None,
                                 rt.fleet_key if rt else None)
    if rt:
        stack.reload_broker()
    print(json.dumps(result))
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from gateway import service

    return service.main()


def _api(args: argparse.Namespace) -> int:
    from dashboard_api import main as api_main

    return api_main.main()


def _user_create(args: argparse.Namespace) -> int:
    from dashboard_api import users

    return users.create_user_cli(args.username, args.role)


def _simulate(args: argparse.Namespace) -> int:
    from simulator import cli as sim_cli

    return sim_cli.run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gas-safety", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the private Mosquitto and TimescaleDB").add_subparsers(
        dest="action", required=True)
    stack.add_parser("up", help="start both (installs nothing; see scripts/bootstrap.sh)"
                     ).set_defaults(func=_stack_up)
    stack.add_parser("down", help="stop both cleanly").set_defaults(func=_stack_down)
    stack.add_parser("status", help="where each runs and whether it is healthy"
                     ).set_defaults(func=_stack_status)

    db = sub.add_parser("db", help="schema and retention").add_subparsers(dest="action",
                                                                         required=True)
    db.add_parser("migrate", help="apply pending migrations").set_defaults(func=_db_migrate)
    retain = db.add_parser("retain", help="drop reading chunks past the retention horizon")
    retain.add_argument("--days", type=int, default=None)
    retain.set_defaults(func=_db_retain)

    fleet = sub.add_parser("fleet", help="the device registry").add_subparsers(dest="action",
                                                                              required=True)
    prov = fleet.add_parser("provision", help="create households, devices and credentials")
    prov.add_argument("--households", type=int, required=True)
    prov.add_argument("--seed", type=int, default=1)
    prov.add_argument("--prefix", default="", help="id prefix (isolates test fleets)")
    prov.add_argument("--start", type=int, default=0, help="index of the first household")
    prov.set_defaults(func=_fleet_provision)

    sub.add_parser("gateway", help="run the MQTT gateway").set_defaults(func=_gateway)
    sub.add_parser("api", help="run the operator API").set_defaults(func=_api)

    user = sub.add_parser("user", help="API users").add_subparsers(dest="action", required=True)
    create = user.add_parser("create", help="create a user (asks for the password)")
    create.add_argument("username")
    create.add_argument("--role", choices=["viewer", "operator", "engineer", "admin"],
                        default="admin")
    create.set_defaults(func=_user_create)

    sim = sub.add_parser("simulate", help="run the simulated fleet (demo, scenario or load)")
    try:
        from simulator import cli as sim_cli

        sim_cli.add_arguments(sim)
    except ImportError:  # the simulator is optional for the gateway's own deployments
        pass
    sim.set_defaults(func=_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway import settings

    s = settings.load()
    setup_logging(s.log_level, s.log_json)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a clear message at the outermost boundary, not a traceback
        from gateway.stack import StackError

        if isinstance(err, StackError):
            print(f"gas-safety: {err}", file=sys.stderr)
            return 2
        logging.getLogger("gas-safety").exception("command failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
