"""Notifications to residents as listed, with their delivery state and retries, and the
call chain each walks (voice call, SMS, emergency contact, control room: one attempt row per
try); the household's emergency contact; an operator's confirmation that stops a chain.
Phone numbers are masked for viewers.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ConfigDict, Field

from dashboard_api.schemas.common import (
    AttemptState,
    Body,
    Label,
    Model,
    NotificationState,
    Phone,
    Text,
)


class NotificationPublic(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": 3,
                    "household_id": "h000042",
                    "kind": "leak",
                    "channel": "sms",
                    "recipient": "+15550000042",
                    "body": "Gas leak detected: the gas was cut off.",
                    "state": "sent",
                    "attempts": 1,
                    "created_at": "2026-11-01T10:00:00Z",
                    "next_attempt_at": "2026-11-01T10:00:00Z",
                    "delivered_at": "2026-11-01T10:00:01Z",
                    "last_error": None,
                    "alarm_id": 7,
                    "work_order_id": 17,
                }
            ]
        },
    )
    id: int
    household_id: str
    kind: str
    channel: str
    recipient: str = Field(description="Masked for viewers.")
    body: str
    state: NotificationState
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    delivered_at: dt.datetime | None
    last_error: str | None
    alarm_id: int | None
    work_order_id: int | None
    chain: list[str] | None = Field(
        default=None, description="The call chain's steps; null until the notifier took it."
    )
    step: int | None = Field(default=None, description="Index of the current or last step.")
    confirmed_at: dt.datetime | None = None
    confirmed_by: str | None = Field(
        default=None, description="An operator, or `owner:voice` when the owner answered."
    )
    finished_at: dt.datetime | None = None


class NotificationAttempt(Model):
    """One try at one step of the chain."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": 41,
                    "step": 0,
                    "step_name": "voice_owner",
                    "channel": "voice",
                    "role": "owner",
                    "recipient": "********0042",
                    "attempt": 1,
                    "call_id": "n3-voice_owner-1",
                    "state": "no_answer",
                    "started_at": "2026-11-01T10:00:00Z",
                    "finished_at": "2026-11-01T10:00:25Z",
                    "detail": None,
                }
            ]
        },
    )
    id: int
    step: int
    step_name: str
    channel: str = Field(description="voice | sms | control_room")
    role: str | None = Field(description="owner | emergency; null for the control room")
    recipient: str | None = Field(description="Masked for viewers.")
    attempt: int
    call_id: str
    state: AttemptState
    started_at: dt.datetime
    finished_at: dt.datetime | None
    detail: str | None


class NotificationDetail(NotificationPublic):
    attempt_list: list[NotificationAttempt] = Field(description="Every attempt, oldest first.")


class ConfirmRequest(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"comment": "owner called back, is outside"}]},
    )
    comment: Text


class EmergencyContactSet(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Ben Smith", "phone": "+15550000099"}]},
    )
    name: Label
    phone: Phone


class EmergencyContact(Model):
    household_id: str
    name: str | None
    phone: str | None = Field(description="Masked for viewers.")
