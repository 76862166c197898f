"""`gas-safety api` and `gas-safety user ...`: the operator API's commands.

Registered under the `gas_safety.commands` entry-point group, so that `gas-safety` offers
them where the API is installed without the gateway importing its HTTP front. The API and
its database code load only when a command runs: `--help` stays fast.
"""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

# the names of dashboard_api.identity.Role, lowest first; spelt out so that --help loads no crypto
ROLES = ["viewer", "operator", "engineer", "admin"]
PASSWORD_ENV = "GAS_SAFETY_NEW_PASSWORD"  # as dashboard_api.users reads it
_PASSWORD_HELP = (
    f"The password is read from {PASSWORD_ENV} when set (for scripts; unset it afterwards), "
    "otherwise asked twice at the terminal. It must have at least 12 characters, not be a "
    "common password and not contain the user name."
)


def _service_options(p: argparse.ArgumentParser) -> None:
    """--config and --log-level, as the gateway's long-running commands take them (applied
    by gateway.cli.main before the settings are read)."""
    p.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="settings file (default: $GAS_SAFETY_CONFIG, else ./gas-safety.toml if present)",
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default=argparse.SUPPRESS,
        help="log level (default: the log_level setting, INFO)",
    )


def register(subparsers: Any) -> None:
    """Add `api` and `user` to the `gas-safety` parser (this package's entry point)."""
    api = subparsers.add_parser(
        "api",
        help="run the operator API (until SIGTERM or Ctrl-C)",
        description="Serve the operator API on api.host:api.port (exit status 3 when that "
        "address is in use).",
    )
    _service_options(api)
    api.set_defaults(func=_api)

    user = subparsers.add_parser("user", help="API users").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = user.add_parser(
        "create",
        help="create a user (asks for the password)",
        description="Create an API user. " + _PASSWORD_HELP,
    )
    create.add_argument("username", help="3-64 of a-z 0-9 _ . - (starting with a letter or digit)")
    create.add_argument(
        "--role",
        choices=ROLES,
        required=True,
        help="what the user may do; each role includes those before it (required)",
    )
    create.set_defaults(func=_user_create)

    listing = user.add_parser("list", help="every user: role, active or disabled, API keys")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    listing.set_defaults(func=_user_list)

    for action, disabled, text in (
        ("disable", True, "stop a user at once: their tokens and event streams end"),
        ("enable", False, "let a disabled user sign in again"),
    ):
        p = user.add_parser(action, help=text)
        p.add_argument("username", help="the user's name (see `user list`)")
        p.add_argument(
            "--actor", default=None, help="who to name in the audit log (default: the OS user)"
        )
        p.set_defaults(func=_user_set_disabled, disabled=disabled)

    reset = user.add_parser(
        "reset-password",
        help="give a user a new password (ends their sessions)",
        description="Set a new password. " + _PASSWORD_HELP,
    )
    reset.add_argument("username", help="the user's name (see `user list`)")
    reset.add_argument(
        "--actor", default=None, help="who to name in the audit log (default: the OS user)"
    )
    reset.set_defaults(func=_user_reset_password)


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return str(args.actor)
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"


def _dsn() -> str:
    from gateway import settings

    return settings.load().db.dsn


def _api(args: argparse.Namespace) -> int:
    from dashboard_api import main

    return main.main()


def _user_create(args: argparse.Namespace) -> int:
    from dashboard_api import users

    return users.create_user_cli(args.username, args.role)


def _user_list(args: argparse.Namespace) -> int:
    from dashboard_api import user_admin

    user_admin.print_users(user_admin.list_users(_dsn()), args.json)
    return 0


def _user_set_disabled(args: argparse.Namespace) -> int:
    from dashboard_api import user_admin

    try:
        user_admin.set_disabled(_dsn(), args.username, args.disabled, _actor(args))
    except user_admin.UserError as err:
        return user_admin.fail(err)
    state = "disabled (tokens and streams ended)" if args.disabled else "enabled"
    print(f"user {args.username} {state}")
    return 0


def _user_reset_password(args: argparse.Namespace) -> int:
    from dashboard_api import user_admin

    password = user_admin.ask_password()
    if password is None:
        return 2
    try:
        user_admin.reset_password(_dsn(), args.username, password, _actor(args))
    except user_admin.UserError as err:
        return user_admin.fail(err)
    print(f"user {args.username}: password changed (sessions ended)")
    return 0
