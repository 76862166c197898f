"""Resident self-service: the one-time code's request and answer, the code's check and the
session it opens, and what the signed-in resident sees (household, usage, notices)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import ConfigDict, StringConstraints

from dashboard_api.schemas.common import Body, Ident, Model
from dashboard_api.schemas.upgrades import BookingPublic, QuotaPublic

Code = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]


class CodeSent(Model):
    sent_to: str  # the owner's phone, masked: ***0042
    expires_in: int  # seconds


class CodeCheck(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"household_id": "h000042", "code": "042917"}]},
    )
    household_id: Ident
    code: Code


class ResidentSession(Model):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int
    household_id: str


class ResidentHome(Model):
    household_id: str
    address: str
    community: str
    building: str
    unit: str
    quota: QuotaPublic | None
    booking: BookingPublic | None


class UsagePoint(Model):
    period: str  # "2026-12-05" (by day) or "2026-12" (by month), in the utility's zone
    volume_m3: float


class Usage(Model):
    by: Literal["day", "month"]
    time_zone: str
    items: list[UsagePoint]
    total_m3: float


class ResidentNotice(Model):
    id: int
    kind: str
    channel: str
    body: str
    state: str
    created_at: dt.datetime
    delivered_at: dt.datetime | None
