"""The API calls the same devices low on battery and past their service life as the gateway
does: its limits are the detection thresholds, not numbers of its own."""

from __future__ import annotations

import datetime as dt
from typing import Any

from dashboard_api.queries import add_months, device_view, health_limits
from gateway.settings import Settings


def _meter(installed: dt.date, batt: float) -> dict[str, Any]:
    return {"id": "m1", "kind": "meter", "installed_on": installed, "last_seen": None,
            "online": None, "batt_v": batt, "household_id": "h1", "model": "GM-G2.5",
            "status": "active", "fault": None, "valve": None, "ch4_lel": None,
            "community": "C1", "building": "C1-B1", "firmware": None,
            "flow_m3h": None, "vol_m3": None, "rssi": None}


def test_limits_follow_the_detection_thresholds() -> None:
    default = health_limits(Settings())
    assert (default.battery_low_v, default.meter_life_months, default.detector_life_months) \
        == (3.3, 120, 60)
    tuned = health_limits(Settings(detection={"thresholds": {
        "meter_life_years": 8, "battery_low_v": 3.5, "battery_clear_v": 3.6}}))
    today = dt.date(2026, 12, 4)
    view = device_view(_meter(dt.date(2018, 6, 1), 3.45), today, tuned)["health"]
    assert view["past_service_life"] and view["service_life_years"] == 8
    assert view["battery_low"]
    view = device_view(_meter(dt.date(2018, 6, 1), 3.45), today, default)["health"]
    assert not view["past_service_life"] and not view["battery_low"]


def test_months_are_added_as_postgresql_adds_an_interval() -> None:
    assert add_months(dt.date(2020, 2, 29), 120) == dt.date(2030, 2, 28)
    assert add_months(dt.date(2021, 1, 31), 1) == dt.date(2021, 2, 28)
    assert add_months(dt.date(2021, 12, 15), 61) == dt.date(2027, 1, 15)
