"""Who is calling: roles, password hashes, signed access tokens and API keys.

Pure functions with the clock passed in (`now`), so expiry is tested without sleeping.

Roles form one ladder, each including the ones below it:
    viewer   < operator          < engineer                          < admin
    reads      + acknowledges alarms,  + marks work orders on site and     + users, API keys,
               dispatches/cancels      resolved, requests a valve reopen   provisioning, quotas
               work orders, closes
               valves, manages bookings

Passwords are hashed with argon2id (argon2-cffi defaults). API keys are 256-bit random
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

MIN_PASSWORD_LEN = 12
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

    def may(self, role: Role) -> bool:
        return self.role >= role


class TokenError(Exception):
    """A token that cannot be used; the message says why (expired, bad signature...)."""


# ---------------------------------------------------------------- passwords

_hasher = PasswordHasher()
# Verified against when the user does not exist, so that a wrong name costs as much
# as a wrong password (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None when it is acceptable."""
    if len(password) < MIN_PASSWORD_LEN:
        return f"at least {MIN_PASSWORD_LEN} characters"
    if len(password) > 256:
        return "at most 256 characters"
    if "\x00" in password:
        return "no NUL characters"
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# ---------------------------------------------------------------- access tokens

def issue_token(secret: str, username: str, role: Role, ttl_s: int,
                now: dt.datetime) -> tuple[str, dt.datetime]:
    expires = now + dt.timedelta(seconds=ttl_s)
    claims = {"sub": username, "role": role.name, "iss": TOKEN_ISSUER,
              "iat": int(now.timestamp()), "exp": int(expires.timestamp()),
              "jti": secrets.token_hex(8)}
    return jwt.encode(claims, secret, algorithm=TOKEN_ALGORITHM), expires


def read_token(secret: str, token: str, now: dt.datetime) -> dict[str, Any]:
    """The claims of a valid token; TokenError otherwise. The role is re-read from the
    users table by the caller, so a demoted or disabled user loses access at once."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[TOKEN_ALGORITHM], issuer=TOKEN_ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"], "verify_exp": False})
    except jwt.PyJWTError as err:
        raise TokenError(f"invalid token ({err})") from None
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= now.timestamp():
        raise TokenError("token expired; request a new one at POST /auth/token")
    if not isinstance(claims.get("sub"), str):
        raise TokenError("invalid token (no subject)")
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
