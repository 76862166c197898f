"""Notifications to residents (SMS, e-mail) as listed, with their delivery state and
retries; the recipient is masked for viewers.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ConfigDict, Field

from dashboard_api.schemas.common import Model, NotificationState


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
