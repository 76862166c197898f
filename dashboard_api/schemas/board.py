"""The live board (the console's control-room view): what needs attention now, with what
the platform did about it, and the bodies of shelving an alarm and of incidents.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import ConfigDict, Field

from dashboard_api.schemas.common import AlarmState, Body, Model, Severity, Text, WorkOrderStatus

ValveView = Literal["close_sent", "closed", "failed", "escalated", "open_sent", "opened"]


class BoardOrder(Model):
    id: int
    status: WorkOrderStatus
    priority: str
    cause: str
    arrive_by: dt.datetime
    resolve_by: dt.datetime
    crew: str | None
    assignee: str | None = None
    arrive_in_s: float | None = Field(description="Seconds left to arrival; negative: late")
    resolve_in_s: float | None = Field(description="Seconds left to resolution; negative: late")


class BoardValve(Model):
    cmd_id: str
    action: str
    state: str
    view: ValveView = Field(description="What the board shows: sent, confirmed, failed...")
    issued_at: dt.datetime
    acked_at: dt.datetime | None


class BoardAlarm(Model):
    id: int
    device_id: str
    household_id: str
    address: str
    unit: str
    community: str
    building: str
    kind: str
    severity: Severity
    state: AlarmState
    value: float | None
    raised_at: dt.datetime
    cleared_at: dt.datetime | None
    returned_to_normal: bool = Field(description="Cleared without being acknowledged")
    incident_id: int | None
    acknowledged_by: str | None
    acknowledged_at: dt.datetime | None
    ack_comment: str | None
    shelved_until: dt.datetime | None
    shelved_by: str | None
    shelve_reason: str | None
    valve: BoardValve | None
    work_order: BoardOrder | None


class BoardIncident(Model):
    id: int
    building: str
    community: str
    kind: str
    opened_at: dt.datetime
    households: int
    alarm_ids: list[int]


class BoardCounts(Model):
    critical: int
    warning: int
    info: int
    returned_to_normal: int
    shelved: int
    lifecycle: int = Field(description="Service-life and battery notices, kept off the board")


class Board(Model):
    now: dt.datetime
    counts: BoardCounts
    alarms: list[BoardAlarm]
    incidents: list[BoardIncident]
    truncated: bool = Field(description="More alarms than the board shows (the most severe kept)")


class ShelveRequest(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"minutes": 60, "reason": "detector chattering, crew"}]},
    )
    minutes: int = Field(ge=1, le=24 * 60)
    reason: Text


class IncidentHousehold(Model):
    household_id: str
    address: str
    unit: str
    alarm_id: int
    kind: str
    severity: Severity
    state: AlarmState
    value: float | None
    raised_at: dt.datetime


class IncidentPublic(Model):
    id: int
    building: str
    community: str
    kind: str
    opened_at: dt.datetime
    closed_at: dt.datetime | None
    households: int


class IncidentDetail(IncidentPublic):
    alarms: list[IncidentHousehold]
