"""Alarms: an alarm as listed, the acknowledgement body, and an alarm's detail with the
evidence and stored readings behind it and the work orders and valve commands that answered
it (hence the imports of `readings`, `work_orders` and `valves`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import ConfigDict, Field

from dashboard_api.schemas.common import AlarmState, Body, Model, Severity, Text
from dashboard_api.schemas.readings import DetectorPoint, MeterPoint
from dashboard_api.schemas.valves import ValveCommand
from dashboard_api.schemas.work_orders import WorkOrderPublic


class AlarmPublic(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "device_id": "d000042a",
                    "household_id": "h000042",
                    "community": "C00",
                    "building": "C00-B001",
                    "kind": "leak",
                    "severity": "critical",
                    "state": "active",
                    "value": 42.0,
                    "raised_at": "2026-11-01T10:00:00Z",
                    "cleared_at": None,
                    "flow_at_meter": True,
                    "incident_id": None,
                    "acknowledged_by": None,
                    "acknowledged_at": None,
                    "ack_comment": None,
                    "shelved_until": None,
                    "shelved_by": None,
                    "shelve_reason": None,
                }
            ]
        },
    )
    id: int
    device_id: str
    household_id: str
    community: str
    building: str
    kind: str
    severity: Severity
    state: AlarmState
    value: float | None
    raised_at: dt.datetime
    cleared_at: dt.datetime | None
    flow_at_meter: bool | None
    incident_id: int | None
    acknowledged_by: str | None
    acknowledged_at: dt.datetime | None
    ack_comment: str | None
    shelved_until: dt.datetime | None = Field(
        default=None, description="Off the console's board until then (ISA-18.2 shelving)"
    )
    shelved_by: str | None = None
    shelve_reason: str | None = None


class AckRequest(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"comment": "called the owner, crew on the way"}]},
    )
    comment: Text


class AlarmDetail(AlarmPublic):
    evidence: Any = Field(description="The readings behind the alarm, as the gateway saw them.")
    readings: list[DetectorPoint] | list[MeterPoint] = Field(
        description="The device's stored readings around raised_at (see window_s)."
    )
    work_orders: list[WorkOrderPublic]
    commands: list[ValveCommand]
