"""The console's aggregate reads: the city schematic (`GET /city`: communities -> buildings
-> households, each household in one state), the fleet health by community
(`GET /fleet/health`) and a household's audit trail."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from dashboard_api.schemas.common import Model

HouseholdState = Literal["leak", "valve_cut", "offline", "past_life", "ok"]
"""The worst of a household's conditions, in this order: an active gas alarm (leak), its
meter's valve closed, a device offline or never seen (unprotected), a device past its
service life."""


class StateCounts(Model):
    leak: int = 0
    valve_cut: int = 0
    offline: int = 0
    past_life: int = 0
    ok: int = 0


class CityCommunity(Model):
    community: str
    households: int
    buildings: int
    states: StateCounts


class CityHousehold(Model):
    id: str
    unit: str
    state: HouseholdState


class CityBuilding(Model):
    building: str
    households: int
    states: StateCounts
    household_list: list[CityHousehold] = Field(
        default_factory=list, description="Only when the request names a community."
    )


class City(Model):
    as_of: dt.datetime
    households: int
    states: StateCounts
    communities: list[CityCommunity] = Field(
        description="Every community; only the named one when the request names one."
    )
    community: str | None = Field(description="The community the buildings belong to.")
    buildings: list[CityBuilding] = Field(
        description="The named community's buildings and their households; empty otherwise."
    )


class FleetHealthRow(Model):
    community: str
    households: int
    offline_households: int = Field(description="With a device offline or never seen.")
    unprotected_households: int = Field(description="With no detector online.")
    never_seen: int = Field(description="Devices that never reported.")
    offline_devices: int = Field(description="Devices that reported once and are offline.")
    low_battery: int = Field(description="Meters whose battery is below the gateway's limit.")
    past_life_meters: int
    past_life_detectors: int


class FleetHealth(Model):
    as_of: dt.datetime
    meter_life_years: float
    detector_life_years: float
    battery_low_v: float
    communities: list[FleetHealthRow]
