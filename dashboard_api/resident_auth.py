"""Resident sign-in with a one-time code sent by SMS to the owner's phone on file, and the
resident's session: a bearer token that opens the household's own pages (/resident/...)
and nothing else.

Codes: 6 random digits (`secrets`), kept as HMAC-SHA256 under the API's secret (a stolen
table does not give them up to a 10^6 guess loop), valid for CODE_TTL_S, used once, dead
after MAX_ATTEMPTS wrong tries, and replaced by the next one issued. Issuing is limited per
household (HOUSEHOLD_CODES in HOUSEHOLD_WINDOW_S) and per client (CLIENT_CODES in
CLIENT_WINDOW_S), counted from the codes table so several API workers share the count;
wrong codes are limited per client too (`AppState.code_limiter`). Issue, delivery
failure, verification, every failure and refusal, and sign-out are written to the audit
log (actor `resident:<household>`).

Sessions: `grs_` + 256 random bits, shown once, stored as SHA-256 (high-entropy, so a fast
digest is enough), valid SESSION_TTL_S, ended by sign-out. The gate refuses them on every
operator route; `household_of` accepts nothing else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from typing import Any

from psycopg import AsyncConnection

from dashboard_api.attempts import retry_after_header
from dashboard_api.deps import AppState
from dashboard_api.errors import ApiError, TooManyRequests
from dashboard_api.gate import RESIDENT_MARK
from dashboard_api.queries import record

logger = logging.getLogger(__name__)

CODE_TTL_S = 300
MAX_ATTEMPTS = 5
HOUSEHOLD_CODES, HOUSEHOLD_WINDOW_S = 3, 900
CLIENT_CODES, CLIENT_WINDOW_S = 10, 3600
SESSION_TTL_S = 1800
SESSION_MARK = RESIDENT_MARK

_TEXT = {
    "zh-CN": "【燃气安全】您的登录验证码是 {code}，{minutes} 分钟内有效。请勿告诉他人。",
    "en": "gas-safety: your sign-in code is {code}, valid for {minutes} minutes. Do not share it.",
}
NO_CODE = "no code is waiting for this household: request a new one"


class CodeRefused(ApiError):
    """A 401 for a code that cannot sign in; `reason` says which (no_code, expired, wrong)."""

    status = 401


class SmsUnavailable(ApiError):
    status = 503


def code_digest(secret: str, household_id: str, code: str) -> str:
    key = hashlib.sha256(("resident-code:" + secret).encode()).digest()
    return hmac.new(key, f"{household_id}:{code}".encode(), hashlib.sha256).hexdigest()


def session_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def masked(phone: str) -> str:
    return "***" + phone[-4:]


def _actor(household_id: str) -> str:
    return f"resident:{household_id}"


async def _window(
    conn: AsyncConnection[Any], column: str, value: str, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    row = await (
        await conn.execute(
            f"SELECT count(*) AS n, min(created_at) AS first FROM resident_codes"
            f" WHERE {column} = %s AND created_at > %s",
            (value, since),
        )
    ).fetchone()
    assert row is not None
    return row["n"], row["first"]


async def issue(
    conn: AsyncConnection[Any], state: AppState, household: dict[str, Any], client: str
) -> tuple[int, str]:
    """A new code for `household` (its id and the code), or 429 when it had its share."""
    now = state.clock()
    hid = household["id"]
    refusal: tuple[str, str, float] | None = None
    async with conn.transaction():
        # one issuer per household at a time: the count and the insert cannot interleave
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("resident-code:" + hid,))
        limits = (
            ("household", "household_id", hid, HOUSEHOLD_CODES, HOUSEHOLD_WINDOW_S),
            ("client", "client", client, CLIENT_CODES, CLIENT_WINDOW_S),
        )
        for scope, column, value, most, window_s in limits:
            n, first = await _window(conn, column, value, now - dt.timedelta(seconds=window_s))
            if n >= most and first is not None:
                wait = (first + dt.timedelta(seconds=window_s) - now).total_seconds()
                refusal = (scope, f"{most} codes per {window_s // 60} minutes", wait)
                break
        if refusal is not None:
            await record(
                conn,
                _actor(hid),
                "resident.code_refused",
                "household",
                hid,
                {"client": client, "scope": refusal[0], "limit": refusal[1]},
            )
        else:
            code = f"{secrets.randbelow(10**6):06d}"
            await conn.execute(
                "UPDATE resident_codes SET spent_at = %s, spent_how = 'superseded'"
                " WHERE household_id = %s AND spent_at IS NULL",
                (now, hid),
            )
            row = await (
                await conn.execute(
                    "INSERT INTO resident_codes (household_id, code_hash, client, created_at,"
                    " expires_at) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    (
                        hid,
                        code_digest(state.jwt_secret, hid, code),
                        client,
                        now,
                        now + dt.timedelta(seconds=CODE_TTL_S),
                    ),
                )
            ).fetchone()
            assert row is not None
            await record(
                conn,
                _actor(hid),
                "resident.code_issued",
                "household",
                hid,
                {"client": client, "code_id": row["id"], "to": masked(household["owner_phone"])},
            )
    if refusal is not None:
        scope, limit, wait = refusal
        state.metrics.refuse("resident_throttled")
        retry = retry_after_header(wait)
        raise TooManyRequests(
            f"too many codes requested for this {scope} ({limit}); try again in {retry} s",
            headers={"Retry-After": retry},
            scope=scope,
            retry_after_s=int(retry),
        )
    assert row is not None
    return int(row["id"]), code


async def deliver(state: AppState, household: dict[str, Any], code_id: int, code: str) -> None:
    """Text the code to the owner's phone; 503 (the code spent) when the gateway fails. No
    pooled connection is held while the gateway answers (up to its timeout)."""
    hid = household["id"]
    lang = state.settings.api.console_language
    body = _TEXT[lang].format(code=code, minutes=CODE_TTL_S // 60)
    sent = await state.sms.send(
        {
            "call_id": f"otp-{code_id}",
            "to": household["owner_phone"],
            "body": body,
            "kind": "resident_code",
            "household_id": hid,
            "role": "owner",
        }
    )
    if sent.ok:
        return
    logger.warning("resident code undelivered household=%s detail=%s", hid, sent.detail)
    async with state.pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE resident_codes SET spent_at = %s, spent_how = 'undelivered'"
            " WHERE id = %s AND spent_at IS NULL",
            (state.clock(), code_id),
        )
        await record(
            conn,
            _actor(hid),
            "resident.code_undelivered",
            "household",
            hid,
            {"code_id": code_id, "detail": sent.detail},
        )
    raise SmsUnavailable(
        f"the code could not be sent by SMS ({sent.detail}); try again later",
        headers={"Retry-After": "30"},
    )


async def verify(
    conn: AsyncConnection[Any], state: AppState, household_id: str, code: str, client: str
) -> dict[str, Any]:
    """A session for `household_id` when `code` is its waiting code; 401 or 429 if not."""
    now = state.clock()
    limiter = state.code_limiter
    wait = limiter.retry_after(client, now.timestamp())
    if wait > 0:
        retry = retry_after_header(wait)
        async with conn.transaction():
            await record(
                conn,
                _actor(household_id),
                "resident.code_refused",
                "household",
                household_id,
                {"client": client, "scope": "client_failures"},
            )
        state.metrics.refuse("resident_throttled")
        raise TooManyRequests(
            f"too many wrong codes from your address; try again in {retry} s",
            headers={"Retry-After": retry},
            scope="client",
            retry_after_s=int(retry),
        )
    failure: tuple[str, str] | None = None
    token = ""
    left = 0
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT id, code_hash, expires_at, attempts FROM resident_codes"
                " WHERE household_id = %s AND spent_at IS NULL ORDER BY id DESC LIMIT 1"
                " FOR UPDATE",
                (household_id,),
            )
        ).fetchone()
        code_id = row["id"] if row else None
        if row is None:
            failure = ("no_code", NO_CODE)
        elif row["expires_at"] <= now:
            await conn.execute(
                "UPDATE resident_codes SET spent_at = %s, spent_how = 'expired' WHERE id = %s",
                (now, code_id),
            )
            failure = ("expired", "the code has expired: request a new one")
        elif not hmac.compare_digest(
            row["code_hash"], code_digest(state.jwt_secret, household_id, code)
        ):
            left = MAX_ATTEMPTS - row["attempts"] - 1
            await conn.execute(
                "UPDATE resident_codes SET attempts = attempts + 1,"
                " spent_at = CASE WHEN %s THEN %s END,"
                " spent_how = CASE WHEN %s THEN 'exhausted' END WHERE id = %s",
                (left <= 0, now, left <= 0, code_id),
            )
            failure = (
                ("exhausted", "wrong code, and no attempts left: request a new one")
                if left <= 0
                else ("wrong", f"wrong code; {left} attempts left")
            )
        else:
            await conn.execute(
                "UPDATE resident_codes SET spent_at = %s, spent_how = 'used' WHERE id = %s",
                (now, code_id),
            )
            token = SESSION_MARK + secrets.token_urlsafe(32)
            await conn.execute(
                "INSERT INTO resident_sessions (household_id, token_hash, code_id, created_at,"
                " expires_at) VALUES (%s, %s, %s, %s, %s)",
                (
                    household_id,
                    session_digest(token),
                    code_id,
                    now,
                    now + dt.timedelta(seconds=SESSION_TTL_S),
                ),
            )
        action = "resident.code_verified" if failure is None else "resident.code_failed"
        details: dict[str, Any] = {"client": client, "code_id": code_id}
        if failure is not None:
            details["reason"] = failure[0]
        await record(conn, _actor(household_id), action, "household", household_id, details)
    if failure is not None:
        limiter.fail(client, now.timestamp())
        state.metrics.refuse("resident_failed")
        raise CodeRefused(failure[1], reason=failure[0], attempts_left=max(left, 0))
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": SESSION_TTL_S,
        "household_id": household_id,
    }


async def household_of(conn: AsyncConnection[Any], token: str, now: dt.datetime) -> str | None:
    """The household a live resident session token opens; None for anything else."""
    if not token.startswith(SESSION_MARK):
        return None
    row = await (
        await conn.execute(
            "SELECT household_id FROM resident_sessions WHERE token_hash = %s"
            " AND ended_at IS NULL AND expires_at > %s",
            (session_digest(token), now),
        )
    ).fetchone()
    return row["household_id"] if row else None


async def end_session(
    conn: AsyncConnection[Any], token: str, household_id: str, now: dt.datetime
) -> None:
    async with conn.transaction():
        await conn.execute(
            "UPDATE resident_sessions SET ended_at = %s WHERE token_hash = %s AND ended_at IS NULL",
            (now, session_digest(token)),
        )
        await record(
            conn, _actor(household_id), "resident.signed_out", "household", household_id, {}
        )
