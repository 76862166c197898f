"""`gas-safety user create NAME --role ROLE`: the first admin (and any user) from the shell.

The password comes from GAS_SAFETY_NEW_PASSWORD (for scripts) or is asked twice on the
terminal; it is never a default and never echoed, it must pass dashboard_api.passwords
(length, common passwords, no username), and only its argon2 hash is stored.
"""

from __future__ import annotations

import getpass
import os
import re
import sys

import psycopg
from psycopg.types.json import Jsonb

from dashboard_api import identity, passwords

USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{2,63}")
PASSWORD_ENV = "GAS_SAFETY_NEW_PASSWORD"


def _ask_password() -> str | None:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        return from_env
    if not sys.stdin.isatty():
        print(
            f"gas-safety: no terminal to ask for the password; set {PASSWORD_ENV}", file=sys.stderr
        )
        return None
    first = getpass.getpass("password: ")
    second = getpass.getpass("again: ")
    if first != second:
        print("gas-safety: the two passwords differ", file=sys.stderr)
        return None
    return first


def create_user(dsn: str, username: str, role: str, password: str, actor: str = "cli") -> int:
    """Insert the user with an argon2 hash; return its id. ValueError when refused."""
    if not USERNAME_RE.fullmatch(username):
        raise ValueError("username: 3-64 of a-z 0-9 _ . - starting with a letter or digit")
    if role not in identity.Role.__members__:
        raise ValueError(f"role: one of {', '.join(identity.Role.__members__)}")
    problem = passwords.problem(password, username)
    if problem:
        raise ValueError(f"password: {problem}")
    with psycopg.connect(dsn) as conn, conn.transaction():
        row = conn.execute(
            "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s)"
            " ON CONFLICT (username) DO NOTHING RETURNING id",
            (username, identity.hash_password(password), role),
        ).fetchone()
        if row is None:
            raise ValueError(f"user {username} exists already")
        conn.execute(
            "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
            " VALUES (%s, 'user.create', 'user', %s, %s)",
            (actor, username, Jsonb({"role": role})),
        )
    return int(row[0])


def create_user_cli(username: str, role: str) -> int:
    from gateway import settings

    password = _ask_password()
    if password is None:
        return 2
    try:
        user_id = create_user(settings.load().db.dsn, username, role, password)
    except ValueError as err:
        print(f"gas-safety: {err}", file=sys.stderr)
        return 2
    print(f"user {username} created (id {user_id}, role {role})")
    return 0
