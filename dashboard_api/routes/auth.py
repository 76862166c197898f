"""Sign-in: the OAuth2 password flow (form fields username, password) gives a signed access
token that expires after settings.api.token_ttl_s; /auth/me says who a credential is."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import parse_qsl

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from dashboard_api import identity
from dashboard_api.deps import Caller, State
from dashboard_api.errors import ApiError, Invalid, Unauthenticated, field_errors
from dashboard_api.identity import Role
from dashboard_api.schemas import LABEL_PATTERN, Me, Token

router = APIRouter(prefix="/auth", tags=["auth"])

_FORM_MAX_BYTES = 4096


class _TokenForm(BaseModel):
    model_config = ConfigDict(extra="ignore")
    username: Annotated[str, StringConstraints(min_length=1, max_length=64,
                                               pattern=LABEL_PATTERN)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    grant_type: Literal["password"] | None = None


class _UnsupportedMedia(ApiError):
    status = 415


_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {
            "schema": {
                "type": "object", "required": ["username", "password"],
                "properties": {
                    "username": {"type": "string", "minLength": 1, "maxLength": 64,
                                 "pattern": LABEL_PATTERN,
                                 "examples": ["dispatch.li"]},
                    "password": {"type": "string", "minLength": 1, "maxLength": 256,
                                 "format": "password"},
                    "grant_type": {"type": "string", "enum": ["password"]},
                },
            },
        }},
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


_USER = "SELECT username, password_hash, role, disabled FROM users WHERE username = %s"


@router.post("/token", response_model=Token, openapi_extra=_FORM_SCHEMA,
             summary="Exchange a username and password for an access token")
async def token(request: Request, state: State) -> Token:
    form = await _read_form(request)
    async with state.pool.connection() as conn:
        row = await (await conn.execute(_USER, (form.username,))).fetchone()
    stored = row["password_hash"] if row else None
    ok = await anyio.to_thread.run_sync(identity.verify_password, stored, form.password)
    if not ok or row is None or row["disabled"]:
        raise Unauthenticated("wrong username or password")
    role = Role[row["role"]]
    ttl = state.settings.api.token_ttl_s
    access, _ = identity.issue_token(state.jwt_secret, row["username"], role, ttl, state.clock())
    return Token.model_validate({"access_token": access, "expires_in": ttl, "role": role.name})


@router.get("/me", response_model=Me, summary="Who this credential belongs to")
async def me(principal: Caller) -> Me:
    return Me.model_validate({"username": principal.username, "role": principal.role.name,
                              "via": principal.via})
