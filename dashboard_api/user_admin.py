"""`gas-safety user list | disable | enable | reset-password`: users from the shell.

For the operator who has the host but no admin token (the first admin locked out, an
account to stop at once). Each change is one transaction with its audit entry (actor: the
OS user, as `db retain` names it); disabling or a new password bumps the user's
token_version (the trigger of migration 0004), so their tokens and open event streams end
as when an admin does it through the API.
"""

from __future__ import annotations

import sys
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dashboard_api import identity, passwords, users


class UserError(ValueError):
    """A refused change: the message says why, in one line."""


def list_users(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT username, role, disabled, created_at,"
            " (SELECT count(*) FROM api_keys k WHERE k.user_id = u.id"
            "  AND k.revoked_at IS NULL AND k.expires_at > now())"
            " FROM users u ORDER BY username"
        ).fetchall()
    return [
        {
            "username": r[0],
            "role": r[1],
            "disabled": r[2],
            "created_at": r[3].isoformat(timespec="seconds"),
            "api_keys": r[4],
        }
        for r in rows
    ]


def _update(
    dsn: str, username: str, actor: str, sql: str, args: tuple[Any, ...], details: dict[str, Any]
) -> None:
    with psycopg.connect(dsn) as conn, conn.transaction():
        row = conn.execute(sql, (*args, username)).fetchone()
        if row is None:
            raise UserError(f"no user {username!r} (see `gas-safety user list`)")
        conn.execute(
            "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
            " VALUES (%s, 'user.update', 'user', %s, %s)",
            (actor, username, Jsonb({**details, "sessions_revoked": True, "via": "cli"})),
        )


def set_disabled(dsn: str, username: str, disabled: bool, actor: str) -> None:
    _update(
        dsn,
        username,
        actor,
        "UPDATE users SET disabled = %s WHERE username = %s RETURNING id",
        (disabled,),
        {"disabled": disabled},
    )


def reset_password(dsn: str, username: str, password: str, actor: str) -> None:
    problem = passwords.problem(password, username)
    if problem:
        raise UserError(f"password: {problem}")
    _update(
        dsn,
        username,
        actor,
        "UPDATE users SET password_hash = %s WHERE username = %s RETURNING id",
        (identity.hash_password(password),),
        {"password": "changed"},
    )


def print_users(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no users yet: `gas-safety user create NAME --role admin`")
        return
    print(f"{'USERNAME':<24} {'ROLE':<9} {'STATE':<9} {'KEYS':>4}  CREATED")
    for r in rows:
        state = "disabled" if r["disabled"] else "active"
        print(
            f"{r['username']:<24} {r['role']:<9} {state:<9} {r['api_keys']:>4}  {r['created_at']}"
        )


def ask_password() -> str | None:
    """The new password: GAS_SAFETY_NEW_PASSWORD, or asked twice at a terminal."""
    return users._ask_password()


def fail(err: Exception) -> int:
    print(f"gas-safety: {err}", file=sys.stderr)
    return 2
