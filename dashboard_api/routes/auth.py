"""Sign-in: the OAuth2 password flow (form fields username, password) gives a signed access
token that expires after settings.api.token_ttl_s; /auth/me says who a credential is.

Failed sign-ins are throttled per (account, client), per client and per account
(dashboard_api.throttle): a throttled attempt is answered 429 with Retry-After before the
database or argon2 is touched. The password check runs on the bounded hash pool
(dashboard_api.hashing): when it is full, 503 with Retry-After, at once.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from dashboard_api import identity
from dashboard_api.clients import client_of
from dashboard_api.deps import AppState, Caller, State
from dashboard_api.errors import ApiError, Invalid, TooManyRequests, Unauthenticated, field_errors
from dashboard_api.hashing import HashingBusy
from dashboard_api.identity import Role
from dashboard_api.schemas import LABEL_PATTERN, Me, Token
from dashboard_api.throttle import Verdict

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/auth", tags=["auth"])

_FORM_MAX_BYTES = 4096


class _TokenForm(BaseModel):
    model_config = ConfigDict(extra="ignore")
    username: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=LABEL_PATTERN)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    grant_type: Literal["password"] | None = None


class _UnsupportedMedia(ApiError):
    status = 415


class _Busy(ApiError):
    status = 503


_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "username": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 64,
                            "pattern": LABEL_PATTERN,
                            "examples": ["dispatch.li"],
                        },
                        "password": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 256,
                            "format": "password",
                        },
                        "grant_type": {"type": "string", "enum": ["password"]},
                    },
                },
            }
        },
    },
}


async def _read_form(request: Request) -> _TokenForm:
    # Parsed here rather than with fastapi.Form, which needs python-multipart for two
    # url-encoded fields.
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise _UnsupportedMedia("send the form as application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > _FORM_MAX_BYTES:
        raise Invalid("body", f"form larger than {_FORM_MAX_BYTES} bytes", "body")
    try:
        fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        raise Invalid("body", "not a UTF-8 url-encoded form", "body") from None
    try:
        return _TokenForm.model_validate(fields)
    except ValidationError as err:
        errors = [dict(e, loc=("body", *e["loc"])) for e in err.errors()]
        fe = field_errors(errors)
        raise _form_invalid(fe) from None


def _form_invalid(errors: list[dict[str, str]]) -> Invalid:
    exc = Invalid(errors[0]["field"], errors[0]["message"], "body")
    exc.extra["errors"] = errors
    return exc


_USER = (
    "SELECT username, password_hash, role, disabled, token_version FROM users WHERE username = %s"
)
_WHY = {
    "account_client": "too many failed sign-ins for this account from your address",
    "client": "too many failed sign-ins from your address",
    "account": "too many failed sign-ins for this account from new addresses (an address"
    " that signed in to it before is not held back)",
}


def _throttled(state: AppState, verdict: Verdict, account: str, client: str) -> TooManyRequests:
    state.metrics.refuse("login_throttled")
    retry = verdict.retry_after_header
    if verdict.first_refusal:
        logger.warning(
            "login throttled user=%s client=%s scope=%s retry_after_s=%s",
            account,
            client,
            verdict.scope,
            retry,
        )
    return TooManyRequests(
        f"{_WHY[verdict.scope]}; retry in {retry} s",
        headers={"Retry-After": retry},
        scope=verdict.scope,
        retry_after_s=int(retry),
    )


@router.post(
    "/token",
    response_model=Token,
    openapi_extra=_FORM_SCHEMA,
    summary="Exchange a username and password for an access token",
    responses={
        429: {"description": "Too many failed sign-ins; see Retry-After"},
        503: {"description": "Sign-in busy or database unavailable; retry"},
    },
)
async def token(request: Request, state: State) -> Token:
    form = await _read_form(request)
    client = client_of(request.scope, state.trusted_proxies)
    account = form.username.casefold()
    throttle = state.login_throttle
    verdict = throttle.admit(account, client, state.clock().timestamp())
    if verdict.attempt is None:
        raise _throttled(state, verdict, account, client)
    attempt = verdict.attempt
    try:
        if state.hashing.full:  # refused before it costs a database round trip
            raise HashingBusy()
        async with state.pool.connection() as conn:
            row = await (await conn.execute(_USER, (form.username,))).fetchone()
        end_turn = getattr(request.state, "end_turn", None)
        if end_turn is not None:  # the rest waits on the hash pool, not the event loop
            end_turn()
        stored = row["password_hash"] if row else None
        ok = await state.hashing.run(identity.verify_password, stored, form.password)
    except HashingBusy:
        throttle.abandoned(attempt)
        state.metrics.refuse("hashing_busy")
        raise _Busy(
            "sign-in busy: too many password checks in progress; retry in 1 s",
            headers={"Retry-After": "1"},
        ) from None
    except BaseException:
        throttle.abandoned(attempt)
        raise
    if not ok or row is None or row["disabled"]:
        state.metrics.refuse("login_failed")
        logger.info("login failed user=%s client=%s", account, client)
        raise Unauthenticated("wrong username or password")
    throttle.succeeded(attempt, state.clock().timestamp())
    role = Role[row["role"]]
    ttl = state.settings.api.token_ttl_s
    access, _ = identity.issue_token(
        state.jwt_secret, row["username"], role, ttl, state.clock(), version=row["token_version"]
    )
    return Token.model_validate({"access_token": access, "expires_in": ttl, "role": role.name})


@router.get("/me", response_model=Me, summary="Who this credential belongs to")
async def me(principal: Caller) -> Me:
    return Me.model_validate(
        {"username": principal.username, "role": principal.role.name, "via": principal.via}
    )
