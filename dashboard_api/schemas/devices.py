"""Devices of the fleet and their health: a device as listed (`DevicePublic`, with its last
reading, battery, faults and service life), the device part of a household's registration,
the admin's device update, and the fleet summary counts of `GET /fleet/summary`.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ConfigDict, Field

from dashboard_api.schemas.common import Body, DeviceKind, DeviceStatus, Ident, Label, Model


class LastReading(Model):
    ch4_lel: float | None = None
    fault: int | None = None
    flow_m3h: float | None = None
    vol_m3: float | None = None
    valve: str | None = None
    batt_v: float | None = None
    rssi: int | None = None


class DeviceHealth(Model):
    online: bool
    last_seen: dt.datetime | None
    last_reading: LastReading | None
    battery_v: float | None
    battery_low: bool
    faults: int = Field(description="Fault bitmask of the last reading; 0 is healthy.")
    service_life_years: float
    service_life_ends: dt.date
    service_life_remaining_days: int = Field(description="Negative once past its life.")
    past_service_life: bool


class DevicePublic(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": "m000042",
                    "kind": "meter",
                    "model": "GM-G2.5",
                    "household_id": "h000042",
                    "community": "C00",
                    "building": "C00-B001",
                    "installed_on": "2019-04-02",
                    "firmware": "1.0.0",
                    "status": "active",
                    "health": {
                        "online": True,
                        "last_seen": "2026-11-01T10:00:00Z",
                        "last_reading": {
                            "flow_m3h": 0.4,
                            "vol_m3": 1234.5,
                            "valve": "open",
                            "batt_v": 3.55,
                            "rssi": -85,
                        },
                        "battery_v": 3.55,
                        "battery_low": False,
                        "faults": 0,
                        "service_life_years": 10,
                        "service_life_ends": "2029-04-02",
                        "service_life_remaining_days": 883,
                        "past_service_life": False,
                    },
                }
            ]
        },
    )
    id: str
    kind: DeviceKind
    model: str
    household_id: str
    community: str
    building: str
    installed_on: dt.date
    firmware: str
    status: DeviceStatus
    health: DeviceHealth


class DeviceCreate(Body):
    id: Ident
    kind: DeviceKind
    model: Label
    installed_on: dt.date = Field(ge=dt.date(1990, 1, 1), le=dt.date(2100, 1, 1))


class DeviceUpdate(Body):
    status: DeviceStatus | None = None
    model: Label | None = None
    firmware: Label | None = None


class KindCount(Model):
    meter: int
    detector: int


class FleetSummary(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "as_of": "2026-11-01T10:00:00Z",
                    "devices": 10000,
                    "by_kind": {"meter": 4170, "detector": 5830},
                    "online": 9950,
                    "offline": 40,
                    "never_seen": 10,
                    "past_service_life": 512,
                    "low_battery": 37,
                    "faulted": 3,
                }
            ]
        },
    )
    as_of: dt.datetime
    devices: int
    by_kind: KindCount
    online: int
    offline: int = Field(description="Seen before, offline now.")
    never_seen: int
    past_service_life: int
    low_battery: int = Field(description="Meters whose last battery reading is below 3.3 V.")
    faulted: int
