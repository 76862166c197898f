"""Dispatch: work orders as the dispatcher's board and the engineer's phone show them (with
the household's address, the assigned engineer's account and the time left on each SLA
clock), the assignment body, and the engineers an order can go to.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ConfigDict, Field

from dashboard_api.schemas.common import (
    Body,
    Label,
    Model,
    Priority,
    Text,
    Username,
    WorkOrderStatus,
)


class OrderCard(Model):
    id: int
    household_id: str
    address: str
    community: str
    building: str
    cause: str
    priority: Priority
    status: WorkOrderStatus
    title: str
    opened_at: dt.datetime
    arrive_by: dt.datetime
    resolve_by: dt.datetime
    crew: str | None
    assignee: str | None = Field(description="The engineer's account the order is assigned to")
    findings: str | None
    alarm_id: int | None
    version: int
    updated_at: dt.datetime
    arrive_in_s: float | None = Field(description="Seconds left to arrival; negative: late")
    resolve_in_s: float | None = Field(description="Seconds left to resolution; negative: late")
    overdue: bool


class OrderDevice(Model):
    id: str
    kind: str
    model: str


class MyOrder(OrderCard):
    devices: list[OrderDevice]
    meter_id: str | None


class DispatchBoard(Model):
    now: dt.datetime
    orders: list[OrderCard]


class EngineerPublic(Model):
    username: str
    role: str
    open_orders: int


class AssignRequest(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"engineer": "eng.wang", "crew": "crew-3"}]},
    )
    engineer: Username
    crew: Label | None = None
    note: Text | None = None
    expected_version: int | None = Field(default=None, ge=1)
