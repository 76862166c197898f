"""The dashboard API's settings (`[api]`): its address, tokens, paging and valve-action
limits. Kept apart from gateway.settings, which names the section; strict like every
section: an unknown key refuses to start.
"""

from __future__ import annotations

import zoneinfo
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_STRICT = ConfigDict(extra="forbid")


class ApiSettings(BaseModel):
    model_config = _STRICT

    host: str = "127.0.0.1"
    port: int = 8080
    jwt_secret: SecretStr | None = None
    token_ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)
    max_points: int = 10_000
    max_range_days: int = 400
    # Proxies ("10.0.0.0/8", "127.0.0.1") whose X-Forwarded-For names the client (clients.py)
    trusted_proxies: list[str] = Field(default_factory=list)
    # Valve actions by one account within a minute: past the threshold each needs
    # `confirm_mass_action` and a reason this long; at the limit the account gets 429.
    valve_mass_action_threshold: int = Field(default=10, ge=1)
    valve_rate_limit_per_minute: int = Field(default=30, ge=1)
    valve_mass_reason_min_chars: int = Field(default=20, ge=1, le=500)
    # The console: the utility's time zone (IANA name) its pages show times in, and the
    # language a first visit sees ("zh-CN" or "en").
    time_zone: str = "Asia/Shanghai"
    console_language: Literal["zh-CN", "en"] = "zh-CN"

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name such as Asia/Shanghai)"
            ) from None
        return value

    @model_validator(mode="after")
    def _valve_limits(self) -> ApiSettings:
        if self.valve_rate_limit_per_minute <= self.valve_mass_action_threshold:
            raise ValueError(
                "valve_rate_limit_per_minute must be above valve_mass_action_threshold"
            )
        return self
