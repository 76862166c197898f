"""`gas-safety api` and `gas-safety user create`: the operator API's commands.

Registered under the `gas_safety.commands` entry-point group, so that `gas-safety` offers
them where the API is installed without the gateway importing its HTTP front. The API and
its database code load only when a command runs: `--help` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

# the names of dashboard_api.identity.Role, lowest first; spelt out so that --help loads no crypto
ROLES = ["viewer", "operator", "engineer", "admin"]


def register(subparsers: Any) -> None:
    """Add `api` and `user create` to the `gas-safety` parser (this package's entry point)."""
    subparsers.add_parser("api", help="run the operator API").set_defaults(func=_api)

    user = subparsers.add_parser("user", help="API users").add_subparsers(
        dest="action", required=True
    )
    create = user.add_parser("create", help="create a user (asks for the password)")
    create.add_argument("username")
    create.add_argument("--role", choices=ROLES, default="admin")
    create.set_defaults(func=_user_create)


def _api(args: argparse.Namespace) -> int:
    from dashboard_api import main

    return main.main()


def _user_create(args: argparse.Namespace) -> int:
    from dashboard_api import users

    return users.create_user_cli(args.username, args.role)
