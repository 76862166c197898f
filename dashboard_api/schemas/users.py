"""Accounts and API keys as an admin manages them: creating, updating and listing users,
and issuing API keys (`ApiKeyCreated` is the only answer that carries the key itself, which
is stored hashed).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints

from dashboard_api.schemas.common import Body, Model, RoleName, Username


class UserCreate(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"username": "dispatch.li", "password": "correct horse battery", "role": "operator"}
            ]
        },
    )
    username: Username
    password: Annotated[
        str, StringConstraints(min_length=12, max_length=256, pattern=r"^[^\x00]+$")
    ]
    role: RoleName


class UserUpdate(Body):
    role: RoleName | None = None
    disabled: bool | None = None
    password: (
        Annotated[str, StringConstraints(min_length=12, max_length=256, pattern=r"^[^\x00]+$")]
        | None
    ) = None


class UserPublic(Model):
    id: int
    username: str
    role: RoleName
    disabled: bool
    created_at: dt.datetime


class ApiKeyCreate(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"username": "scada-bridge", "expires_in_days": 90}]},
    )
    username: Username
    expires_in_days: int = Field(default=90, ge=1, le=366)


class ApiKeyPublic(Model):
    id: int
    prefix: str
    username: str
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    created_at: dt.datetime


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(
        description="The key itself: shown only now, stored hashed. "
        "Send it as the `X-API-Key` header."
    )
