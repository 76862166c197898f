"""Work orders: an order as listed (with its SLA clocks and overdue flags), its detail with
the steps of its history, and the request bodies of its transitions (dispatch, on site,
resolve, cancel), each with the optional optimistic `expected_version` check.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ConfigDict, Field

from dashboard_api.schemas.common import Body, Label, Model, Priority, Text, WorkOrderStatus


class WorkOrderPublic(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": 17,
                    "household_id": "h000042",
                    "community": "C00",
                    "cause": "leak",
                    "priority": "urgent",
                    "status": "dispatched",
                    "title": "Gas leak at h000042",
                    "opened_at": "2026-11-01T10:00:00Z",
                    "arrive_by": "2026-11-01T10:30:00Z",
                    "resolve_by": "2026-11-01T14:00:00Z",
                    "crew": "crew-7",
                    "findings": None,
                    "repeats": 0,
                    "alarm_id": 7,
                    "incident_id": None,
                    "version": 2,
                    "updated_at": "2026-11-01T10:02:00Z",
                    "overdue_arrival": False,
                    "overdue_resolution": False,
                }
            ]
        },
    )
    id: int
    household_id: str
    community: str
    cause: str
    priority: Priority
    status: WorkOrderStatus
    title: str
    opened_at: dt.datetime
    arrive_by: dt.datetime
    resolve_by: dt.datetime
    crew: str | None
    findings: str | None
    repeats: int
    alarm_id: int | None
    incident_id: int | None
    cmd_id: str | None = Field(
        default=None, description="The valve cut (close command) it answers for."
    )
    version: int
    updated_at: dt.datetime
    flagged_at: dt.datetime | None = Field(
        default=None, description="The control room's flag: nobody confirmed the owner notice."
    )
    flag: str | None = None
    overdue_arrival: bool = Field(description="Not on site yet and past arrive_by.")
    overdue_resolution: bool = Field(description="Not resolved yet and past resolve_by.")


class WorkOrderStep(Model):
    id: int
    at: dt.datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str | None
    note: str | None


class WorkOrderDetail(WorkOrderPublic):
    steps: list[WorkOrderStep]


class Transition(Body):
    expected_version: int | None = Field(
        default=None,
        ge=1,
        le=2**31 - 1,
        description="Optimistic check: refused with 409 when the order changed since.",
    )


class DispatchRequest(Transition):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"crew": "crew-7", "note": "nearest emergency crew"}]},
    )
    crew: Label
    note: Text | None = None


class OnSiteRequest(Transition):
    note: Text | None = None


class ResolveRequest(Transition):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"findings": "loose hose clamp at the cooker replaced; leak test passed"}]
        },
    )
    findings: Text


class CancelRequest(Transition):
    reason: Text
