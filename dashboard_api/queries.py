"""SQL shared by several routers: filter conditions, the audit trail, notifications to the
gateway and the live stream, and the device-health columns. Each router keeps the SQL only
it uses.

Every state change made through the API calls `record` inside its own transaction, so
the change, its audit row and its NOTIFY commit (or vanish) together; PostgreSQL delivers
a NOTIFY only on commit.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from dashboard_api.errors import Invalid
from dashboard_api.hub import CHANNEL, COMMANDS_CHANNEL
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class HealthLimits:
    """The gateway's own limits (its detection thresholds), so that the API and the gateway
    call the same meters' batteries low and the same devices past their service life."""

    battery_low_v: float
    meter_life_months: int
    detector_life_months: int

    def life_months(self, kind: str) -> int:
        return self.meter_life_months if kind == "meter" else self.detector_life_months


def health_limits(settings: Settings) -> HealthLimits:
    t = settings.detection.thresholds
    return HealthLimits(
        t.battery_low_v, round(t.meter_life_years * 12), round(t.detector_life_years * 12)
    )


async def record(
    conn: AsyncConnection[Any],
    actor: str,
    action: str,
    entity: str,
    entity_id: str | int,
    details: dict[str, Any],
    event: dict[str, Any] | None = None,
) -> None:
    """The audit row of a change and, when given, its live event on gas_events."""
    await conn.execute(
        "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
        " VALUES (%s, %s, %s, %s, %s)",
        (actor, action, entity, str(entity_id), Jsonb(details)),
    )
    if event is not None:
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(event, default=str)))


async def notify_command(conn: AsyncConnection[Any], cmd_id: str) -> None:
    """Wake the gateway: it LISTENs on gas_commands and publishes the command by its id."""
    await conn.execute("SELECT pg_notify(%s, %s)", (COMMANDS_CHANNEL, cmd_id))


def given(filters: Iterable[tuple[str, Any, str]], params: dict[str, Any]) -> list[str]:
    """The conditions of the filters a caller gave: (parameter name, value, SQL condition
    written in the router, never input); their values go into `params`."""
    conds = []
    for name, value, cond in filters:
        if value is not None:
            conds.append(cond)
            params[name] = value
    return conds


def between(
    column: str, since: dt.datetime | None, until: dt.datetime | None, params: dict[str, Any]
) -> list[str]:
    """The conditions `column >= since` and `column < until` of the bounds a caller gave
    (`column` written in the router, never input); `Invalid` on `since` unless it is before
    `until`."""
    if since and until and since >= until:
        raise Invalid("since", "must be before until")
    return given(
        (("since", since, f"{column} >= %(since)s"), ("until", until, f"{column} < %(until)s")),
        params,
    )


def where(conditions: list[str]) -> str:
    """`WHERE a AND b` from conditions written in the routers (constants, never input)."""
    return ("WHERE " + " AND ".join(conditions)) if conditions else ""


# ---------------------------------------------------------------- device health

DEVICE_COLUMNS = """
    d.id, d.kind, d.model, d.household_id, d.installed_on, d.firmware, d.status,
    h.community, h.building,
    s.online, s.last_seen, s.ch4_lel, s.fault, s.flow_m3h, s.vol_m3, s.valve, s.batt_v, s.rssi
"""
DEVICE_FROM = """
    FROM devices d JOIN households h ON h.id = d.household_id
    LEFT JOIN device_state s ON s.device_id = d.id
"""


def add_months(day: dt.date, months: int) -> dt.date:
    """`day` plus whole calendar months, as PostgreSQL adds an interval (the 31st of a month
    becomes the last day of a shorter one)."""
    year, month = divmod(day.month - 1 + months, 12)
    year += day.year
    month += 1
    last = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return dt.date(year, month, min(day.day, last))


def device_view(row: dict[str, Any], today: dt.date, limits: HealthLimits) -> dict[str, Any]:
    """A devices/device_state row as DevicePublic: health and service life."""
    months = limits.life_months(row["kind"])
    life = months / 12
    ends = add_months(row["installed_on"], months)
    remaining = (ends - today).days
    seen = row["last_seen"] is not None
    if not seen:
        last = None
    elif row["kind"] == "meter":
        last = {
            "flow_m3h": row["flow_m3h"],
            "vol_m3": row["vol_m3"],
            "valve": row["valve"],
            "batt_v": row["batt_v"],
            "rssi": row["rssi"],
        }
    else:
        last = {"ch4_lel": row["ch4_lel"], "fault": row["fault"]}
    batt = row["batt_v"]
    return {
        "id": row["id"],
        "kind": row["kind"],
        "model": row["model"],
        "household_id": row["household_id"],
        "community": row["community"],
        "building": row["building"],
        "installed_on": row["installed_on"],
        "firmware": row["firmware"],
        "status": row["status"],
        "health": {
            "online": bool(row["online"]),
            "last_seen": row["last_seen"],
            "last_reading": last,
            "battery_v": batt,
            "battery_low": batt is not None and batt < limits.battery_low_v,
            "faults": row["fault"] or 0,
            "service_life_years": life,
            "service_life_ends": ends,
            "service_life_remaining_days": remaining,
            "past_service_life": remaining < 0,
        },
    }


def mask(value: str | None) -> str | None:
    """Owner contact details as viewers see them: enough to tell two apart, not to call."""
    if value is None:
        return None
    if "@" in value:
        name, _, domain = value.partition("@")
        return f"{name[:1]}***@{domain}"
    return ("*" * max(len(value) - 4, 0)) + value[-4:]
