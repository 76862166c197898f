"""Valve commands and their authority: a command as recorded (with the gateway's
acknowledgement), the request body of a close, reopen, confirmation or inspection (with the
mass-action confirmation), what an accepted command answers, the reopen requests held for a
second person, and the inspection order opened for a cut.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ConfigDict, Field

from dashboard_api.schemas.common import (
    Body,
    CommandAction,
    CommandState,
    Model,
    ReopenStatus,
    Text,
)
from dashboard_api.schemas.work_orders import WorkOrderPublic


class ValveCommand(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "cmd_id": "op-3f2a9c0e7b5d4e3a9f1c2b3a4d5e6f70",
                    "meter_id": "m000042",
                    "household_id": "h000042",
                    "action": "valve_close",
                    "reason": "manual: smell reported",
                    "alarm_id": None,
                    "state": "acked",
                    "attempts": 1,
                    "requested_by": "dispatch.li",
                    "issued_at": "2026-11-01T10:00:00Z",
                    "sent_at": "2026-11-01T10:00:00.01Z",
                    "acked_at": "2026-11-01T10:00:00.3Z",
                    "ack_ok": True,
                    "ack_valve": "closed",
                    "ack_error": None,
                    "updated_at": "2026-11-01T10:00:00.3Z",
                }
            ]
        },
    )
    cmd_id: str
    meter_id: str
    household_id: str
    action: CommandAction
    reason: str
    alarm_id: int | None
    state: CommandState
    attempts: int
    requested_by: str
    issued_at: dt.datetime
    sent_at: dt.datetime | None
    acked_at: dt.datetime | None
    ack_ok: bool | None
    ack_valve: str | None
    ack_error: str | None
    updated_at: dt.datetime
    attached_to: str | None = Field(
        default=None, description="For state 'attached': the close in flight it joined."
    )


class ValveRequest(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "resident reports a smell of gas"}]},
    )
    reason: Text
    confirm_mass_action: bool = Field(
        default=False,
        description="Needed once an account has taken more than the mass-action "
        "threshold of valve actions within a minute, with a reason saying why.",
    )


class CommandAccepted(Model):
    command: ValveCommand
    note: str
    attached: bool = Field(
        default=False,
        description="True: a command of this meter was "
        "already in flight and this request joined it; none was added.",
    )
    work_order_id: int | None = Field(
        default=None, description="The inspection order a manual close opened (or joined)."
    )


class ReopenRequestPublic(Model):
    id: int
    meter_id: str
    household_id: str
    cut_cmd_id: str | None = Field(
        description="The close it reopens; null when the meter itself reported its valve closed."
    )
    cut_at: dt.datetime
    work_order_id: int = Field(description="The resolved order the reopen rests on.")
    resolved_by: str
    requested_by: str
    reason: str
    requested_at: dt.datetime
    status: ReopenStatus
    decided_by: str | None
    decided_at: dt.datetime | None
    decision_note: str | None
    cmd_id: str | None = Field(description="The reopen command, once confirmed.")


class ReopenRequestListed(ReopenRequestPublic):
    """A reopen request with where it is: the supervisor's list across meters."""

    address: str
    unit: str
    community: str
    building: str


class ReopenPending(Model):
    request: ReopenRequestPublic
    note: str


class InspectionOpened(Model):
    work_order: WorkOrderPublic
    created: bool = Field(
        description="False: the household's open inspection order was linked to this cut instead."
    )
    note: str
