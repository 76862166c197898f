"""Who is calling: roles, password hashes, signed access tokens and API keys.

Pure functions with the clock passed in (`now`), so expiry is tested without sleeping.

Roles form one ladder, each including the ones below it:
    viewer   < operator          < engineer                          < admin
    reads      + acknowledges alarms,  + marks work orders on site and     + users, API keys,
               dispatches/cancels      resolved, requests a valve reopen   provisioning, quotas
               work orders, closes
               valves, manages bookings

Passwords are hashed with argon2id (argon2-cffi defaults); the rules for new ones are in
dashboard_api.passwords. Access tokens carry the user's `token_version` as claim `ver`:
changing a user's password, role or disabled flag bumps it in the database, and every
token issued before is refused from then on. API keys are 256-bit random
secrets shown once; they are stored as SHA-256 digests, which is sound for high-entropy
secrets and keeps a per-request check in microseconds (argon2 is for guessable secrets,
and would cost ~50 ms of CPU on every keyed request).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TOKEN_ISSUER = "gas-safety"
TOKEN_ALGORITHM = "HS256"
API_KEY_MARK = "gsk"


class Role(IntEnum):
    viewer = 1
    operator = 2
    engineer = 3
    admin = 4


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user, through a password token or one of their API keys."""

    user_id: int
    username: str
    role: Role
    via: str  # 'token' | 'api_key'
    token_version: int | None = None  # tokens: the `ver` they were issued with
    expires_at: dt.datetime | None = None  # when the token or key stops working
    key_id: int | None = None  # API keys: the key's row

    def may(self, role: Role) -> bool:
        return self.role >= role


class TokenError(Exception):
    """A token that cannot be used; the message says why (expired, bad signature...)."""


# ---------------------------------------------------------------- passwords

_hasher = PasswordHasher()
# Verified against when the user does not exist, so that a wrong name costs as much
# as a wrong password (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# ---------------------------------------------------------------- access tokens


def issue_token(
    secret: str, username: str, role: Role, ttl_s: int, now: dt.datetime, version: int = 1
) -> tuple[str, dt.datetime]:
    """A signed token for `username` at their current `token_version`."""
    expires = now + dt.timedelta(seconds=ttl_s)
    claims = {
        "sub": username,
        "role": role.name,
        "iss": TOKEN_ISSUER,
        "ver": version,
        "iat": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret, algorithm=TOKEN_ALGORITHM), expires


def read_token(secret: str, token: str, now: dt.datetime) -> dict[str, Any]:
    """The claims of a valid token; TokenError otherwise. The caller compares `ver` with
    the user's current token_version and re-reads the role and disabled flag."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[TOKEN_ALGORITHM],
            issuer=TOKEN_ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"], "verify_exp": False},
        )
    except jwt.PyJWTError as err:
        raise TokenError(f"invalid token ({err})") from None
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= now.timestamp():
        raise TokenError("token expired; request a new one at POST /auth/token")
    if not isinstance(claims.get("sub"), str):
        raise TokenError("invalid token (no subject)")
    if not isinstance(claims.get("ver"), int) or isinstance(claims["ver"], bool):
        raise TokenError("invalid token (no version); request a new one at POST /auth/token")
    return claims


# ---------------------------------------------------------------- API keys


def new_api_key() -> tuple[str, str, str]:
    """(the full key shown once, its public prefix, its digest to store)."""
    prefix = secrets.token_hex(6)
    key = f"{API_KEY_MARK}_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, api_key_digest(key)


def api_key_prefix(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_MARK or len(parts[1]) != 12:
        return None
    return parts[1]


def api_key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_matches(stored_digest: str, key: str) -> bool:
    return hmac.compare_digest(stored_digest, api_key_digest(key))
