"""The vocabulary every resource's models share: the constrained field types (ids, labels,
free text, usernames, phones, instants within 2000..2100) and the enumerations of roles,
severities and states; the `Model` (responses, extra fields ignored) and `Body` (requests,
extra fields refused) bases; the cursor `Page`; and the RFC 9457 `Problem` every error is
answered with. The resource modules import from here and never from each other's bases.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# ---------------------------------------------------------------- field types

IDENT_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
LABEL_PATTERN = r"^[^\x00-\x1f\x7f]+$"

Ident = Annotated[str, StringConstraints(pattern=IDENT_PATTERN)]
"""Device and household ids, as the registry and the MQTT protocol allow them."""

Label = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=LABEL_PATTERN)]
"""A short single-line name: community, building, model, crew."""

Text = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=r"^[^\x00]+$")]
"""Free text written by people: comments, findings, reasons."""

Username = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{2,63}$")]
Phone = Annotated[str, StringConstraints(pattern=r"^\+?[0-9 ()-]{4,32}$")]

EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)


def _in_era(value: dt.datetime) -> dt.datetime:
    if not EARLIEST <= value <= LATEST:
        raise ValueError("must be between 2000-01-01 and 2100-01-01")
    return value.astimezone(dt.UTC)


Instant = Annotated[AwareDatetime, AfterValidator(_in_era)]
"""A time with its offset (RFC 3339), within 2000..2100."""

RoleName = Literal["viewer", "operator", "engineer", "admin"]
Severity = Literal["info", "warning", "critical"]
AlarmState = Literal["active", "acknowledged", "cleared"]
WorkOrderStatus = Literal["open", "dispatched", "on_site", "resolved", "cancelled"]
Priority = Literal["urgent", "high", "normal"]
DeviceKind = Literal["meter", "detector"]
DeviceStatus = Literal["active", "retired"]
CommandAction = Literal["valve_close", "valve_open", "self_test"]
CommandState = Literal["issued", "sent", "acked", "failed", "timeout", "escalated", "attached"]
ReopenStatus = Literal["pending", "confirmed", "superseded"]
NotificationState = Literal["pending", "sent", "failed", "confirmed", "escalated"]
AttemptState = Literal[
    "calling", "sending", "answered", "no_answer", "sent", "failed", "lost", "flagged"
]
BookingStatus = Literal["booked", "done", "cancelled"]

T = TypeVar("T")


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Body(BaseModel):
    """Request bodies refuse unknown fields: a typo is a 422, not a silent no-op."""

    model_config = ConfigDict(extra="forbid")


class Page(Model, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


# ---------------------------------------------------------------- problems


class FieldError(Model):
    field: str = Field(examples=["limit"])
    in_: str = Field(alias="in", examples=["query"])
    message: str = Field(examples=["Input should be less than or equal to 500"])
    type: str = Field(examples=["less_than_equal"])


class Problem(Model):
    """RFC 9457 problem details; `errors` lists the fields at fault for 422."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "https://gas-safety.example/problems/conflict",
                    "title": "Conflict",
                    "status": 409,
                    "detail": "work order 17 is resolved; 'dispatch' needs status open",
                }
            ]
        }
    )
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
