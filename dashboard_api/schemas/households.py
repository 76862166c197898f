"""Households: a household as listed (owner contact masked for viewers), its detail with its
devices and open counts, and the admin's registration of a household with its devices.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints

from dashboard_api.schemas.common import LABEL_PATTERN, Body, Ident, Label, Model, Phone
from dashboard_api.schemas.devices import DeviceCreate, DevicePublic


class HouseholdPublic(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": "h000042",
                    "address": "2 C00 Road, unit 3-03",
                    "community": "C00",
                    "building": "C00-B001",
                    "unit": "3-03",
                    "owner_name": "Ana Garcia",
                    "owner_phone": "+15550000042",
                    "owner_email": "h000042@example.org",
                    "qmax_m3h": 4.0,
                    "created_at": "2026-11-01T00:00:00Z",
                    "devices": 2,
                }
            ]
        },
    )
    id: str
    address: str
    community: str
    building: str
    unit: str
    owner_name: str
    owner_phone: str = Field(description="Masked for viewers.")
    owner_email: str | None = Field(description="Masked for viewers.")
    qmax_m3h: float
    created_at: dt.datetime
    devices: int


class HouseholdDetail(HouseholdPublic):
    device_list: list[DevicePublic]
    active_alarms: int
    open_work_orders: int


class HouseholdCreate(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "h900001",
                    "address": "1 Harbour Road, unit 1-01",
                    "community": "C09",
                    "building": "C09-B001",
                    "unit": "1-01",
                    "owner_name": "Mina Kim",
                    "owner_phone": "+15559000001",
                    "owner_email": None,
                    "qmax_m3h": 4.0,
                    "devices": [
                        {
                            "id": "m900001",
                            "kind": "meter",
                            "model": "GM-G2.5",
                            "installed_on": "2026-10-01",
                        },
                        {
                            "id": "d900001a",
                            "kind": "detector",
                            "model": "LD-100",
                            "installed_on": "2026-10-01",
                        },
                    ],
                }
            ]
        },
    )
    id: Ident
    address: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=LABEL_PATTERN)]
    community: Label
    building: Label
    unit: Label
    owner_name: Label
    owner_phone: Phone
    owner_email: (
        Annotated[str, StringConstraints(max_length=200, pattern=r"^[^@\s\x00]+@[^@\s\x00]+$")]
        | None
    ) = None
    qmax_m3h: float = Field(ge=0.1, le=1000)
    devices: list[DeviceCreate] = Field(min_length=1, max_length=8)
