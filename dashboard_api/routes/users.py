"""Users and API keys (admin only). A key is shown once at creation, stored as a digest,
expires, and can be revoked; revocation and expiry take effect on the next request.

New passwords follow dashboard_api.passwords (422 with the rule broken). Changing a user's
password, role or disabled flag bumps their token_version (a trigger, migration 0004):
every access token issued before is refused from the next request, and their open event
streams end within a second or two; the audit entry records the revocation.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Path, status

from dashboard_api import identity, pagination, passwords
from dashboard_api.deps import Admin, AppState, Conn, State
from dashboard_api.errors import ApiError, Conflict, Invalid, NotFound
from dashboard_api.hashing import HashingBusy
from dashboard_api.params import Cursor, Limit, row_id
from dashboard_api.queries import record, where
from dashboard_api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    Page,
    UserCreate,
    UserPublic,
    UserUpdate,
)

logger = logging.getLogger(__name__)

router = APIRouter(tags=["users"])

UsernamePath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{2,63}$")]

_USER_COLS = "id, username, role, disabled, created_at"
_KEY_COLS = "k.id, k.prefix, u.username, k.expires_at, k.revoked_at, k.created_at"


@router.get("/users", response_model=Page[UserPublic], summary="List users")
async def list_users(
    conn: Conn, _: Admin, limit: Limit = pagination.DEFAULT_LIMIT, cursor: Cursor = None
) -> dict[str, Any]:
    after = pagination.decode(cursor, str, int)
    conds, params = [], {"n": limit + 1}
    if after:
        conds.append("(username, id) > (%(ck)s, %(ci)s)")
        params.update(ck=after[0], ci=after[1])
    rows = await (
        await conn.execute(
            f"SELECT {_USER_COLS} FROM users {where(conds)} ORDER BY username, id LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["username"], r["id"]))
    return {"items": items, "next_cursor": nxt}


class _Busy(ApiError):
    status = 503


async def _new_hash(state: AppState, password: str, username: str) -> str:
    reason = passwords.problem(password, username)
    if reason is not None:
        state.metrics.refuse("password_rejected")
        raise Invalid("password", reason, "body")
    try:
        return await state.hashing.run(identity.hash_password, password)
    except HashingBusy:
        state.metrics.refuse("hashing_busy")
        raise _Busy("password hashing busy; retry in 1 s", headers={"Retry-After": "1"}) from None


@router.post(
    "/users",
    response_model=UserPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Create a user",
)
async def create_user(body: UserCreate, conn: Conn, admin: Admin, state: State) -> dict[str, Any]:
    password_hash = await _new_hash(state, body.password, body.username)
    async with conn.transaction():
        row = await (
            await conn.execute(
                f"INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s)"
                f" ON CONFLICT (username) DO NOTHING RETURNING {_USER_COLS}",
                (body.username, password_hash, body.role),
            )
        ).fetchone()
        if row is None:
            raise Conflict(f"user {body.username} exists already")
        await record(
            conn, admin.username, "user.create", "user", body.username, {"role": body.role}
        )
    return row


@router.patch(
    "/users/{username}",
    response_model=UserPublic,
    summary="Change a user's role, password or disabled flag (ends their sessions)",
)
async def update_user(
    username: UsernamePath, body: UserUpdate, conn: Conn, admin: Admin, state: State
) -> dict[str, Any]:
    password_hash = None
    if body.password is not None:
        password_hash = await _new_hash(state, body.password, username)
    async with conn.transaction():
        # Serialise admin changes so two of them cannot together remove the last admin.
        await conn.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
        before = await (
            await conn.execute("SELECT token_version FROM users WHERE username = %s", (username,))
        ).fetchone()
        if before is None:
            raise NotFound(f"no user {username}")
        row = await (
            await conn.execute(
                f"UPDATE users SET role = coalesce(%s, role), disabled = coalesce(%s, disabled),"
                f" password_hash = coalesce(%s, password_hash) WHERE username = %s"
                f" RETURNING {_USER_COLS}, token_version",
                (body.role, body.disabled, password_hash, username),
            )
        ).fetchone()
        assert row is not None
        admins = await (
            await conn.execute(
                "SELECT count(*) AS n FROM users WHERE role = 'admin' AND NOT disabled"
            )
        ).fetchone()
        if admins is None or admins["n"] == 0:
            raise Conflict("refused: this would leave no enabled admin")
        changes: dict[str, Any] = body.model_dump(exclude_none=True, exclude={"password"})
        if body.password is not None:
            changes["password"] = "changed"
        if row["token_version"] != before["token_version"]:
            changes["sessions_revoked"] = True
            changes["token_version"] = row["token_version"]
        await record(conn, admin.username, "user.update", "user", username, changes)
    if row["token_version"] != before["token_version"]:
        logger.warning(
            "sessions revoked user=%s token_version=%d by=%s changed=%s",
            username,
            row["token_version"],
            admin.username,
            ",".join(k for k in ("role", "disabled", "password") if k in changes),
        )
    return row


@router.get("/api-keys", response_model=Page[ApiKeyPublic], summary="List API keys")
async def list_keys(
    conn: Conn, _: Admin, limit: Limit = pagination.DEFAULT_LIMIT, cursor: Cursor = None
) -> dict[str, Any]:
    after = pagination.decode(cursor, int, int)
    conds, params = [], {"n": limit + 1}
    if after:
        conds.append("k.id < %(ci)s")
        params["ci"] = after[1]
    rows = await (
        await conn.execute(
            f"SELECT {_KEY_COLS} FROM api_keys k JOIN users u ON u.id = k.user_id {where(conds)}"
            " ORDER BY k.id DESC LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["id"], r["id"]))
    return {"items": items, "next_cursor": nxt}


@router.post(
    "/api-keys",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key for a user (the key is shown only in this response)",
)
async def create_key(body: ApiKeyCreate, conn: Conn, admin: Admin, state: State) -> dict[str, Any]:
    key, prefix, digest = identity.new_api_key()
    expires = state.clock() + dt.timedelta(days=body.expires_in_days)
    async with conn.transaction():
        user = await (
            await conn.execute(
                "SELECT id, disabled FROM users WHERE username = %s", (body.username,)
            )
        ).fetchone()
        if user is None:
            raise NotFound(f"no user {body.username}")
        try:
            row = await (
                await conn.execute(
                    "INSERT INTO api_keys (user_id, prefix, key_hash, expires_at)"
                    " VALUES (%s, %s, %s, %s) RETURNING id, prefix, expires_at, revoked_at,"
                    " created_at",
                    (user["id"], prefix, digest, expires),
                )
            ).fetchone()
        except psycopg.errors.UniqueViolation:  # a 48-bit prefix collision: vanishingly rare
            raise Conflict("key prefix collision; try again") from None
        assert row is not None
        await record(
            conn,
            admin.username,
            "api_key.create",
            "api_key",
            row["id"],
            {"username": body.username, "prefix": prefix, "expires_at": expires.isoformat()},
        )
    return {**row, "username": body.username, "key": key}


@router.delete("/api-keys/{key_id}", response_model=ApiKeyPublic, summary="Revoke an API key")
async def revoke_key(
    key_id: Annotated[int, row_id()], conn: Conn, admin: Admin, state: State
) -> dict[str, Any]:
    async with conn.transaction():
        row = await (
            await conn.execute(
                f"SELECT {_KEY_COLS} FROM api_keys k JOIN users u ON u.id = k.user_id"
                " WHERE k.id = %s FOR UPDATE OF k",
                (key_id,),
            )
        ).fetchone()
        if row is None:
            raise NotFound(f"no API key {key_id}")
        if row["revoked_at"] is not None:
            raise Conflict(f"API key {key_id} was revoked at {row['revoked_at'].isoformat()}")
        now = state.clock()
        await conn.execute("UPDATE api_keys SET revoked_at = %s WHERE id = %s", (now, key_id))
        await record(
            conn,
            admin.username,
            "api_key.revoke",
            "api_key",
            key_id,
            {"prefix": row["prefix"], "username": row["username"]},
        )
    return {**row, "revoked_at": now}
