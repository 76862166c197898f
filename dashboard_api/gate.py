"""The authentication gate: every request but the public few must carry a valid credential
before it reaches routing, validation or a route, so a caller without one learns nothing
(not even whether a path exists or a body is well-formed): 401, always.

Credentials, in order: `X-API-Key: <key>`; `Authorization: Bearer <key>` when the bearer
value is an API key (`gsk_...`, for scrapers such as Prometheus that send only bearer
credentials); `Authorization: Bearer <access token>` from POST /auth/token. The user row is
read on every request (one indexed lookup; GET /auth/me answers in 2-4 ms p50 with it on
a 2-CPU test machine, so nothing is cached): a token whose
`ver` is not the user's current token_version was revoked (password, role or disabled flag
changed since) and is refused, and a disabled user's keys stop at once too. Every refusal
is counted in gas_api_refused_total by reason. The principal is left in
`request.state.principal` for the role checks.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import psycopg
import psycopg_pool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from dashboard_api import identity
from dashboard_api.errors import ApiError, Unauthenticated, problem
from dashboard_api.identity import Principal, Role

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/auth/token",
        "/upgrades/resident/lookup",
        "/upgrades/resident/bookings",
        "/upgrades/resident/cancel",
        "/",  # the console's page and the OpenAPI browser: files, no data
        "/docs",
        "/resident",  # the residents' page
    }
)
# the console's scripts, styles and pinned packages; the residents' routes, which check a
# resident's session themselves (dashboard_api.resident_auth)
PUBLIC_PREFIXES = ("/console/", "/resident/")
RESIDENT_MARK = "grs_"

_USER_BY_NAME = "SELECT id, username, role, disabled, token_version FROM users WHERE username = %s"
_KEY_BY_PREFIX = """
    SELECT k.id AS key_id, k.key_hash, k.expires_at, k.revoked_at, u.id, u.username, u.role,
           u.disabled
    FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.prefix = %s"""
REVOKED = (
    "token revoked: the user's password, role or status changed after it was issued;"
    " request a new one at POST /auth/token"
)


class Refused(Unauthenticated):
    """A 401 with the reason it is counted under (one of metrics.REFUSAL_REASONS)."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        if detail is None:
            super().__init__()
        else:
            super().__init__(detail)
        self.reason = reason


async def _from_api_key(
    pool: psycopg_pool.AsyncConnectionPool[Any], key: str, now: dt.datetime
) -> Principal:
    prefix = identity.api_key_prefix(key)
    if prefix is None:
        raise Refused("api_key_invalid", "malformed API key")
    async with pool.connection() as conn:
        row = await (await conn.execute(_KEY_BY_PREFIX, (prefix,))).fetchone()
    if row is None or not identity.api_key_matches(row["key_hash"], key):
        raise Refused("api_key_invalid", "unknown API key")
    if row["revoked_at"] is not None:
        raise Refused("api_key_invalid", "API key revoked")
    if row["expires_at"] <= now:
        raise Refused("api_key_invalid", "API key expired")
    if row["disabled"]:
        raise Refused("user_disabled", "user disabled")
    return Principal(
        row["id"],
        row["username"],
        Role[row["role"]],
        "api_key",
        expires_at=row["expires_at"],
        key_id=row["key_id"],
    )


async def _from_token(
    pool: psycopg_pool.AsyncConnectionPool[Any], secret: str, token: str, now: dt.datetime
) -> Principal:
    try:
        claims = identity.read_token(secret, token, now)
    except identity.TokenError as err:
        reason = "token_expired" if "expired" in str(err) else "token_invalid"
        raise Refused(reason, str(err)) from None
    async with pool.connection() as conn:
        row = await (await conn.execute(_USER_BY_NAME, (claims["sub"],))).fetchone()
    if row is None or row["disabled"]:
        raise Refused("user_disabled", "user unknown or disabled")
    if claims["ver"] != row["token_version"]:
        logger.warning(
            "token refused reason=revoked user=%s token_version=%s current=%s",
            row["username"],
            claims["ver"],
            row["token_version"],
        )
        raise Refused("token_revoked", REVOKED)
    return Principal(
        row["id"],
        row["username"],
        Role[row["role"]],
        "token",
        token_version=claims["ver"],
        expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
    )


async def principal_from(headers: Headers, state: Any) -> Principal:
    now = state.clock()
    api_key = headers.get("x-api-key")
    scheme, _, bearer = headers.get("authorization", "").partition(" ")
    bearer = bearer.strip() if scheme.lower() == "bearer" else ""
    if api_key:
        return await _from_api_key(state.pool, api_key, now)
    if bearer.startswith(identity.API_KEY_MARK + "_"):
        return await _from_api_key(state.pool, bearer, now)
    if bearer.startswith(RESIDENT_MARK):
        raise Refused("token_invalid", "a resident's session opens only the /resident/ routes")
    if bearer:
        return await _from_token(state.pool, state.jwt_secret, bearer, now)
    raise Refused("no_credential")


class AuthGate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state.api
        try:
            principal = await principal_from(Headers(scope=scope), state)
        except ApiError as err:
            state.metrics.refuse(getattr(err, "reason", "token_invalid"))
            await problem(err.status, err.detail, headers=err.headers, **err.extra)(
                scope, receive, send
            )
            return
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as err:
            logger.warning("authentication needs the database: error=%s", err)
            await problem(503, "database unavailable, retry shortly", headers={"Retry-After": "5"})(
                scope, receive, send
            )
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
