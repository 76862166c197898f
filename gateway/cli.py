"""`gas-safety`: one command for the stack, the fleet, the gateway, the API and the simulator.

Commands that destroy data show what they would destroy first and act only with `--yes`
(or a "y" typed at a terminal), and audit what they did in the same transaction. A
configuration error ends any command with one line and exit status 2, before it does
anything.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NoReturn

from gateway.logs import setup_logging

logger = logging.getLogger(__name__)

# Each installed package adds its own commands through this entry-point group (pyproject.toml):
# the gateway its stack, db, config, fleet, gateway and watch commands (`register` below),
# dashboard_api `api` and `user`, the simulator `simulate`. So the gateway imports neither its
# HTTP front nor its test fleet, and a deployment without them offers fewer commands.
COMMAND_GROUP = "gas_safety.commands"
# the gateway's own commands come first in --help, the other packages' after, by name
OWN_ENTRY_POINT = "gateway"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), like configuration errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _days(text: str) -> int:
    """--days: a whole number of days, at least 1 (0 or less would drop today's readings)."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if days < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 day, got {days}")
    return days


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"


def _confirm(question: str) -> bool:
    """Yes only when a person at a terminal says so."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _stack_up(args: argparse.Namespace) -> int:
    from gateway.ops.stack import Stack

    rt = Stack().up()
    print(f"postgres  127.0.0.1:{rt.pg_port}  (dsn in {rt.home}/runtime.json)")
    print(f"mosquitto 127.0.0.1:{rt.mqtt_port}")
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from gateway.ops.stack import Stack

    Stack().down()
    print("stack stopped")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from gateway.ops.stack import Stack

    status = Stack().status()
    print(json.dumps(status, indent=2))
    healthy = all(
        isinstance(v, dict) and v.get("healthy") for k, v in status.items() if k != "home"
    )
    return 0 if healthy else 1


def _db_migrate(args: argparse.Namespace) -> int:
    from gateway import settings
    from gateway.storage import schema

    applied = schema.migrate(settings.load().db.dsn)
    print("applied: " + (", ".join(applied) or "nothing (schema up to date)"))
    return 0


def _db_retain(args: argparse.Namespace) -> int:
    import psycopg

    from gateway import settings
    from gateway.ops import config_report, retention

    s = settings.load()
    days = args.days
    if days is None:
        days = s.db.retention_days
        source, origin = config_report.source_of(("db", "retention_days"), settings.sources())
        print(f"no --days: db.retention_days = {days} ({source}{' ' + origin if origin else ''})")
    with psycopg.connect(s.db.dsn, autocommit=True) as conn:
        plan = retention.plan(conn, days)
        print(retention.describe(plan))
        if not plan.chunks:
            print("nothing to drop")
            return 0
        if not args.yes and not _confirm(f"drop these {len(plan.chunks)} chunk(s)? [y/N] "):
            print("nothing dropped; add --yes", file=sys.stderr)
            return 1
        dropped = retention.drop(conn, plan, args.actor or _os_user())
    print(
        "dropped: "
        + ", ".join(f"{table} {len(chunks)} chunk(s)" for table, chunks in dropped.items())
    )
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from gateway import settings
    from gateway.ops import config_report

    s = settings.load()
    sources = settings.sources()
    entries = config_report.report(s, sources)
    if args.json:
        print(json.dumps(config_report.as_json(entries, sources), indent=2))
    else:
        print(config_report.as_text(entries, sources))
    return 0


def _fleet_provision(args: argparse.Namespace) -> int:
    from gateway import settings
    from gateway.ops import provision
    from gateway.ops.stack import Stack

    stack = Stack()
    rt = stack.runtime()
    city = provision.generate_city(
        args.households, seed=args.seed, prefix=args.prefix, start=args.start
    )
    result = provision.provision(
        settings.load().db.dsn,
        city,
        str(stack.passwd_file) if rt else None,
        rt.fleet_key if rt else None,
    )
    if rt:
        stack.reload_broker()
    print(json.dumps(result))
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from gateway.service import app

    return app.main()


def register(subparsers: Any) -> None:
    """Add the gateway's own commands: stack, db, config, fleet, gateway and watch."""
    from gateway.ops import watch

    stack = subparsers.add_parser(
        "stack", help="the private Mosquitto and TimescaleDB"
    ).add_subparsers(dest="action", required=True)
    stack.add_parser(
        "up", help="start both (installs nothing; see scripts/bootstrap.sh)"
    ).set_defaults(func=_stack_up)
    stack.add_parser("down", help="stop both cleanly").set_defaults(func=_stack_down)
    stack.add_parser("status", help="where each runs and whether it is healthy").set_defaults(
        func=_stack_status
    )

    db = subparsers.add_parser("db", help="schema and retention").add_subparsers(
        dest="action", required=True
    )
    db.add_parser("migrate", help="apply pending migrations").set_defaults(func=_db_migrate)
    retain = db.add_parser(
        "retain",
        help="drop reading chunks past the retention horizon",
        description="Show the reading chunks older than the horizon, "
        "then drop them (with --yes) and audit it.",
    )
    retain.add_argument(
        "--days",
        type=_days,
        default=None,
        help="keep this many days (at least 1; default: db.retention_days)",
    )
    retain.add_argument(
        "--yes",
        action="store_true",
        help="drop without asking (otherwise: only at a terminal, after y)",
    )
    retain.add_argument(
        "--actor", default=None, help="who to name in the audit log (default: the OS user)"
    )
    retain.set_defaults(func=_db_retain)

    config = subparsers.add_parser("config", help="the settings").add_subparsers(
        dest="action", required=True
    )
    check = config.add_parser(
        "check",
        help="validate the settings; show each value and where it came from (secrets masked)",
    )
    check.add_argument("--json", action="store_true", help="one JSON document")
    check.set_defaults(func=_config_check)

    fleet = subparsers.add_parser("fleet", help="the device registry").add_subparsers(
        dest="action", required=True
    )
    prov = fleet.add_parser("provision", help="create households, devices and credentials")
    prov.add_argument("--households", type=int, required=True)
    prov.add_argument("--seed", type=int, default=1)
    prov.add_argument("--prefix", default="", help="id prefix (isolates test fleets)")
    prov.add_argument("--start", type=int, default=0, help="index of the first household")
    prov.set_defaults(func=_fleet_provision)

    subparsers.add_parser("gateway", help="run the MQTT gateway").set_defaults(func=_gateway)
    watch.register(subparsers)


def command_entry_points() -> list[EntryPoint]:
    """The installed `gas_safety.commands` registrations, the gateway's first, one per name.

    A source tree and its editable install may both list the same registration; the first
    on sys.path wins, as for any distribution.
    """
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=COMMAND_GROUP):
        found.setdefault(ep.name, ep)
    return sorted(found.values(), key=lambda ep: (ep.name != OWN_ENTRY_POINT, ep.name))


def build_parser() -> argparse.ArgumentParser:
    """The whole `gas-safety` parser, from every installed package's registration.

    A package whose registration cannot be imported (installed without its dependencies)
    is left out: its commands are missing, the others work. The gateway's own commands are
    there even in a source tree that was never installed.
    """
    p = _Parser(
        prog="gas-safety", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    registrations: dict[str, Callable[[Any], None]] = {}
    for ep in command_entry_points():
        try:
            registrations[ep.name] = ep.load()
        except ImportError:
            continue
    if OWN_ENTRY_POINT not in registrations:
        registrations = {OWN_ENTRY_POINT: register, **registrations}
    for register_commands in registrations.values():
        register_commands(sub)
    return p


def _refuse(err: Exception, args: argparse.Namespace) -> int:
    """A configuration error: one line, exit 2 (JSON too where JSON was asked for)."""
    # by name: under `python -m gateway.cli` the registered handler is another module's copy
    if getattr(args, "json", False) and getattr(args, "command", None) == "config":
        print(json.dumps({"valid": False, "error": str(err)}))
    print(f"gas-safety: {err}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway import settings

    try:
        s = settings.load()
    except settings.SettingsError as err:
        return _refuse(err, args)
    setup_logging(s.log_level, s.log_json)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except settings.SettingsError as err:
        return _refuse(err, args)
    except Exception as err:  # a clear message at the outermost boundary, not a traceback
        from gateway.ops.retention import RetentionError
        from gateway.ops.stack import StackError

        if isinstance(err, StackError):
            print(f"gas-safety: {err}", file=sys.stderr)
            return 2
        if isinstance(err, RetentionError):
            print(f"gas-safety: {err}", file=sys.stderr)
            return 1
        logger.exception("command failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
