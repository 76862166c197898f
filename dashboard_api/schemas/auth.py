"""What sign-in answers: the access token of `POST /auth/token` and the caller's own identity
(`GET /auth/me`). Accounts and API keys themselves are managed in `users`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict

from dashboard_api.schemas.common import Model, RoleName


class Token(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIs...",
                    "token_type": "bearer",
                    "expires_in": 3600,
                    "role": "operator",
                }
            ]
        }
    )
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    role: RoleName


class Me(Model):
    username: str
    role: RoleName
    via: Literal["token", "api_key"]
