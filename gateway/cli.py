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
import traceback
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NoReturn

from gateway.logs import LogFileError, setup_logging
from gateway.ops.options import add_service_options, count_type

logger = logging.getLogger(__name__)

# Each installed package adds its own commands through this entry-point group (pyproject.toml):
# the gateway its stack, db, config, fleet, gateway and watch commands (`register` below),
# dashboard_api `api` and `user`, the simulator `simulate`. So the gateway imports neither its
# HTTP front nor its test fleet, and a deployment without them offers fewer commands.
COMMAND_GROUP = "gas_safety.commands"
# the gateway's own commands come first in --help, the other packages' after, by name
OWN_ENTRY_POINT = "gateway"


# the most households one `fleet provision` makes: ids carry six digits (h000000-h999999)
MAX_HOUSEHOLDS = 1_000_000
# `gas-safety` exit statuses, for scripts and service managers
EXIT_FAILED = 1  # the command ran and failed (or found something unhealthy)
EXIT_USAGE = 2  # a usage or configuration error: nothing was done
EXIT_STARTUP = 3  # a service could not start (a port in use): as uvicorn's own


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless it says one or has none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
            and "default" not in text
        ):
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            text += f" (default: {shown})"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), like configuration errors; defaults in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


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
        from gateway.ops.cluster_stack import ClusterStack

        stack.reload_broker()
        ClusterStack(stack).reload_brokers()  # the edge brokers share its password file
    print(json.dumps(result))
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from gateway.service import app

    return app.main()


def _worker(args: argparse.Namespace) -> int:
    from gateway.cluster import entry

    return entry.main()


def _status(args: argparse.Namespace) -> int:
    from gateway import settings
    from gateway.ops import status

    checks = status.check_all(settings.load(), timeout_s=args.timeout)
    if args.json:
        print(json.dumps(status.as_json(checks), indent=2))
    else:
        print(status.as_text(checks))
    return 0 if all(c.healthy for c in checks) else EXIT_FAILED


def register(subparsers: Any) -> None:
    """Add the gateway's own commands: stack, db, config, fleet, gateway and watch."""
    from gateway.edge import command as relay_command
    from gateway.ops import stack_commands, watch

    stack_commands.register(subparsers)

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
    add_service_options(check)
    check.set_defaults(func=_config_check)
    show = config.add_parser(
        "show",
        help="the effective settings, each with the source that set it (secrets masked)",
    )
    show.add_argument("--json", action="store_true", help="one JSON document")
    add_service_options(show)
    show.set_defaults(func=_config_check)

    fleet = subparsers.add_parser("fleet", help="the device registry").add_subparsers(
        dest="action", required=True
    )
    prov = fleet.add_parser("provision", help="create households, devices and credentials")
    prov.add_argument(
        "--households",
        type=count_type(1, MAX_HOUSEHOLDS, "households"),
        required=True,
        help=f"how many households to create (1 to {MAX_HOUSEHOLDS:,}; required)",
    )
    prov.add_argument(
        "--seed",
        type=int,
        default=1,
        help="random seed: the same seed and counts make the same registry",
    )
    prov.add_argument(
        "--prefix", default="", help="id prefix (isolates test fleets; default: none)"
    )
    prov.add_argument(
        "--start",
        type=count_type(0, MAX_HOUSEHOLDS - 1, "household index"),
        default=0,
        help="index of the first household",
    )
    prov.set_defaults(func=_fleet_provision)

    gw = subparsers.add_parser(
        "gateway",
        help="run the MQTT gateway (until SIGTERM or Ctrl-C)",
        description="Run the MQTT gateway: ingest, detection, valve commands, the writer, "
        "Prometheus metrics and /healthz on metrics_host:metrics_port.",
    )
    add_service_options(gw)
    gw.set_defaults(func=_gateway)

    wk = subparsers.add_parser(
        "worker",
        help="run a partition worker of a cluster (until SIGTERM or Ctrl-C)",
        description="Run a partition worker: take a share of the 64 building partitions "
        "(PostgreSQL advisory-lock leases), rebuild their state from the database, judge "
        "their messages from NATS JetStream (gas.in.<partition>) with the gateway's pipeline, "
        "acknowledge after COMMIT, send valve commands on gas.cmd.<meter id>. Settings: "
        "[cluster] nats_servers, worker_name, lease_poll_s, max_partitions, fetch_batch, "
        "ack_wait_s (docs/cluster.md); metrics and /healthz on metrics_host:metrics_port.",
    )
    add_service_options(wk)
    wk.set_defaults(func=_worker)
    watch.register(subparsers)
    relay_command.register(subparsers)

    st = subparsers.add_parser(
        "status",
        help="stack, gateway and API: one line each; exit 0 only when all are healthy",
        description="One line per component (the private stack's PostgreSQL and Mosquitto, "
        "or the configured servers; the gateway's /healthz; the API's /healthz). "
        "Exit status 0 when every component is healthy, 1 otherwise.",
    )
    st.add_argument("--json", action="store_true", help="one JSON document")
    st.add_argument(
        "--timeout", type=float, default=3.0, metavar="SECONDS", help="per component check"
    )
    add_service_options(st)
    st.set_defaults(func=_status)


def command_entry_points() -> list[EntryPoint]:
    """The installed `gas_safety.commands` registrations, the gateway's first, one per name.

    A source tree and its editable install may both list the same registration; the first
    on sys.path wins, as for any distribution.
    """
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=COMMAND_GROUP):
        found.setdefault(ep.name, ep)
    return sorted(found.values(), key=lambda ep: (ep.name != OWN_ENTRY_POINT, ep.name))


def version() -> str:
    """The installed distribution's version (the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("gas-safety")
    except PackageNotFoundError:
        import tomllib

        from gateway.settings import ROOT

        with (ROOT / "pyproject.toml").open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])


def build_parser() -> argparse.ArgumentParser:
    """The whole `gas-safety` parser, from every installed package's registration.

    A package whose registration cannot be imported (installed without its dependencies)
    is left out: its commands are missing, the others work. The gateway's own commands are
    there even in a source tree that was never installed.
    """
    p = _Parser(prog="gas-safety", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument(
        "--debug",
        action="store_true",
        help="on an unexpected error, show the traceback (default: one line)",
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
    return EXIT_USAGE


def _apply_service_options(args: argparse.Namespace) -> str | None:
    """--config and --log-level as the variables they stand for; an error line, or None."""
    from gateway import settings

    config = getattr(args, "config", None)
    if config is not None:
        path = os.path.abspath(config)
        if not os.path.isfile(path):
            what = "is not a file" if os.path.exists(path) else "no such file"
            return f"--config {config}: {what}"
        os.environ[settings.CONFIG_ENV] = path
    level = getattr(args, "log_level", None)
    if level is not None:
        os.environ[settings.ENV_PREFIX + "LOG_LEVEL"] = level
    return None


def one_line(err: BaseException) -> str:
    """An exception as one line: its first line, with its kind when that says something."""
    text = (str(err).strip().splitlines() or [""])[0]
    kind = type(err).__name__
    return f"{kind}: {text}" if text else kind


def _is_database_error(err: Exception) -> bool:
    """psycopg's "server away" (imported only when psycopg already is)."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(err, psycopg.OperationalError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway import settings

    problem = _apply_service_options(args)
    if problem is not None:
        print(f"gas-safety: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        s = settings.load()
    except settings.SettingsError as err:
        return _refuse(err, args)
    try:
        setup_logging(s.log_level, s.log_json, s.log_file, s.log_max_mb, s.log_backups)
    except LogFileError as err:
        print(f"gas-safety: {err}", file=sys.stderr)
        return EXIT_USAGE
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

        if args.debug:
            traceback.print_exc()
        if isinstance(err, StackError):
            print(f"gas-safety: {err}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(err, RetentionError):
            print(f"gas-safety: {err}", file=sys.stderr)
            return EXIT_FAILED
        if _is_database_error(err):
            print(
                f"gas-safety {args.command}: cannot reach the database: {one_line(err)}"
                " (check db.dsn with `gas-safety config show`, then `gas-safety status`)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        hint = "" if args.debug else " (--debug shows the traceback)"
        print(f"gas-safety {args.command}: {one_line(err)}{hint}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
