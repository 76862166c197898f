"""What the operator API accepts and returns: pydantic models, by resource and role of use
(`...Create`, `...Update`, `...Public`, `...Detail`). The HTTP edge only; the gateway's
hot path has its own msgspec structs in gateway.protocol.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Generic, Literal, TypeVar

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
NotificationState = Literal["pending", "sent", "failed"]
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


# ---------------------------------------------------------------- auth and users


class Token(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIs...",
                    "token_type": "bearer",
                    "expires_in": 3600,
                    "role": "operator",
                }
            ]
        }
    )
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    role: RoleName


class Me(Model):
    username: str
    role: RoleName
    via: Literal["token", "api_key"]


class UserCreate(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"username": "dispatch.li", "password": "correct horse battery", "role": "operator"}
            ]
        },
    )
    username: Username
    password: Annotated[
        str, StringConstraints(min_length=12, max_length=256, pattern=r"^[^\x00]+$")
    ]
    role: RoleName


class UserUpdate(Body):
    role: RoleName | None = None
    disabled: bool | None = None
    password: (
        Annotated[str, StringConstraints(min_length=12, max_length=256, pattern=r"^[^\x00]+$")]
        | None
    ) = None


class UserPublic(Model):
    id: int
    username: str
    role: RoleName
    disabled: bool
    created_at: dt.datetime


class ApiKeyCreate(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"username": "scada-bridge", "expires_in_days": 90}]},
    )
    username: Username
    expires_in_days: int = Field(default=90, ge=1, le=366)


class ApiKeyPublic(Model):
    id: int
    prefix: str
    username: str
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    created_at: dt.datetime


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(
        description="The key itself: shown only now, stored hashed. "
        "Send it as the `X-API-Key` header."
    )


# ---------------------------------------------------------------- fleet


class LastReading(Model):
    ch4_lel: float | None = None
    fault: int | None = None
    flow_m3h: float | None = None
    vol_m3: float | None = None
    valve: str | None = None
    batt_v: float | None = None
    rssi: int | None = None


class DeviceHealth(Model):
    online: bool
    last_seen: dt.datetime | None
    last_reading: LastReading | None
    battery_v: float | None
    battery_low: bool
    faults: int = Field(description="Fault bitmask of the last reading; 0 is healthy.")
    service_life_years: int
    service_life_ends: dt.date
    service_life_remaining_days: int = Field(description="Negative once past its life.")
    past_service_life: bool


class DevicePublic(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": "m000042",
                    "kind": "meter",
                    "model": "GM-G2.5",
                    "household_id": "h000042",
                    "community": "C00",
                    "building": "C00-B001",
                    "installed_on": "2019-04-02",
                    "firmware": "1.0.0",
                    "status": "active",
                    "health": {
                        "online": True,
                        "last_seen": "2026-11-01T10:00:00Z",
                        "last_reading": {
                            "flow_m3h": 0.4,
                            "vol_m3": 1234.5,
                            "valve": "open",
                            "batt_v": 3.55,
                            "rssi": -85,
                        },
                        "battery_v": 3.55,
                        "battery_low": False,
                        "faults": 0,
                        "service_life_years": 10,
                        "service_life_ends": "2029-04-02",
                        "service_life_remaining_days": 883,
                        "past_service_life": False,
                    },
                }
            ]
        },
    )
    id: str
    kind: DeviceKind
    model: str
    household_id: str
    community: str
    building: str
    installed_on: dt.date
    firmware: str
    status: DeviceStatus
    health: DeviceHealth


class DeviceCreate(Body):
    id: Ident
    kind: DeviceKind
    model: Label
    installed_on: dt.date = Field(ge=dt.date(1990, 1, 1), le=dt.date(2100, 1, 1))


class DeviceUpdate(Body):
    status: DeviceStatus | None = None
    model: Label | None = None
    firmware: Label | None = None


class HouseholdPublic(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": "h000042",
                    "address": "2 C00 Road, unit 3-03",
                    "community": "C00",
                    "building": "C00-B001",
                    "unit": "3-03",
                    "owner_name": "Ana Garcia",
                    "owner_phone": "+15550000042",
                    "owner_email": "h000042@example.org",
                    "qmax_m3h": 4.0,
                    "created_at": "2026-11-01T00:00:00Z",
                    "devices": 2,
                }
            ]
        },
    )
    id: str
    address: str
    community: str
    building: str
    unit: str
    owner_name: str
    owner_phone: str = Field(description="Masked for viewers.")
    owner_email: str | None = Field(description="Masked for viewers.")
    qmax_m3h: float
    created_at: dt.datetime
    devices: int


class HouseholdDetail(HouseholdPublic):
    device_list: list[DevicePublic]
    active_alarms: int
    open_work_orders: int


class HouseholdCreate(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "h900001",
                    "address": "1 Harbour Road, unit 1-01",
                    "community": "C09",
                    "building": "C09-B001",
                    "unit": "1-01",
                    "owner_name": "Mina Kim",
                    "owner_phone": "+15559000001",
                    "owner_email": None,
                    "qmax_m3h": 4.0,
                    "devices": [
                        {
                            "id": "m900001",
                            "kind": "meter",
                            "model": "GM-G2.5",
                            "installed_on": "2026-10-01",
                        },
                        {
                            "id": "d900001a",
                            "kind": "detector",
                            "model": "LD-100",
                            "installed_on": "2026-10-01",
                        },
                    ],
                }
            ]
        },
    )
    id: Ident
    address: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=LABEL_PATTERN)]
    community: Label
    building: Label
    unit: Label
    owner_name: Label
    owner_phone: Phone
    owner_email: (
        Annotated[str, StringConstraints(max_length=200, pattern=r"^[^@\s\x00]+@[^@\s\x00]+$")]
        | None
    ) = None
    qmax_m3h: float = Field(ge=0.1, le=1000)
    devices: list[DeviceCreate] = Field(min_length=1, max_length=8)


class KindCount(Model):
    meter: int
    detector: int


class FleetSummary(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "as_of": "2026-11-01T10:00:00Z",
                    "devices": 10000,
                    "by_kind": {"meter": 4170, "detector": 5830},
                    "online": 9950,
                    "offline": 40,
                    "never_seen": 10,
                    "past_service_life": 512,
                    "low_battery": 37,
                    "faulted": 3,
                }
            ]
        },
    )
    as_of: dt.datetime
    devices: int
    by_kind: KindCount
    online: int
    offline: int = Field(description="Seen before, offline now.")
    never_seen: int
    past_service_life: int
    low_battery: int = Field(description="Meters whose last battery reading is below 3.3 V.")
    faulted: int


# ---------------------------------------------------------------- readings


class DetectorPoint(Model):
    time: dt.datetime
    seq: int
    ch4_lel: float
    fault: int
    flags: int


class MeterPoint(Model):
    time: dt.datetime
    seq: int
    vol_m3: float
    flow_m3h: float
    valve: Literal["open", "closed", "fault"]
    batt_v: float
    rssi: int
    flags: int


class RawReadings(Model):
    device_id: str
    kind: DeviceKind
    start: dt.datetime
    end: dt.datetime
    points: list[DetectorPoint] | list[MeterPoint]
    next_cursor: str | None = Field(description="More readings in the window: pass as `cursor`.")


class Bucket(Model):
    """min/max/avg of the device's main value (ch4 %LEL or flow m3/h) in one bucket."""

    bucket: dt.datetime
    count: int
    min: float
    max: float
    avg: float
    fault_any: int | None = Field(default=None, description="Detectors: OR of fault masks.")
    vol_m3_last: float | None = Field(default=None, description="Meters: last volume.")
    batt_v_min: float | None = Field(default=None, description="Meters: lowest battery.")


class BucketedReadings(Model):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "device_id": "d000042a",
                    "kind": "detector",
                    "value": "ch4_lel",
                    "start": "2026-10-01T00:00:00Z",
                    "end": "2026-10-02T00:00:00Z",
                    "bucket_s": 3600,
                    "buckets": [
                        {
                            "bucket": "2026-10-01T00:00:00Z",
                            "count": 12,
                            "min": 0.0,
                            "max": 1.5,
                            "avg": 0.4,
                            "fault_any": 0,
                        }
                    ],
                }
            ]
        },
    )
    device_id: str
    kind: DeviceKind
    value: Literal["ch4_lel", "flow_m3h"]
    start: dt.datetime
    end: dt.datetime
    bucket_s: int
    buckets: list[Bucket]


# ---------------------------------------------------------------- alarms


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


class AckRequest(Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"comment": "called the owner, crew on the way"}]},
    )
    comment: Text


# ---------------------------------------------------------------- work orders


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


# ---------------------------------------------------------------- valves


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


class ReopenPending(Model):
    request: ReopenRequestPublic
    note: str


class InspectionOpened(Model):
    work_order: WorkOrderPublic
    created: bool = Field(
        description="False: the household's open inspection order was linked to this cut instead."
    )
    note: str


# ---------------------------------------------------------------- alarms, detail


class AlarmDetail(AlarmPublic):
    evidence: Any = Field(description="The readings behind the alarm, as the gateway saw them.")
    readings: list[DetectorPoint] | list[MeterPoint] = Field(
        description="The device's stored readings around raised_at (see window_s)."
    )
    work_orders: list[WorkOrderPublic]
    commands: list[ValveCommand]


# ---------------------------------------------------------------- notifications


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


# ---------------------------------------------------------------- upgrades


class QuotaPublic(Model):
    community: str
    places: int
    booked: int
    remaining: int


class QuotaUpdate(Body):
    places: int = Field(ge=0, le=1_000_000)


class ResidentCheck(Body):
    """A resident has no login: the household id with the owner's phone number on file is
    the (lightweight) proof, as on the programme's letter."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"household_id": "h000042", "phone": "+15550000042"}]},
    )
    household_id: Ident
    phone: Phone


class ResidentBookingRequest(ResidentCheck):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "household_id": "h000042",
                    "phone": "+15550000042",
                    "slot_start": "2026-12-03T09:00:00+08:00",
                }
            ]
        },
    )
    slot_start: Instant


class BookingCreate(Body):
    household_id: Ident
    slot_start: Instant


class BookingPublic(Model):
    id: int
    community: str
    household_id: str
    slot_start: dt.datetime
    status: BookingStatus
    created_by: str
    created_at: dt.datetime


class ResidentView(QuotaPublic):
    booking: BookingPublic | None


# ---------------------------------------------------------------- audit


class AuditEntry(Model):
    id: int
    at: dt.datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    details: dict[str, Any]


class Health(Model):
    status: Literal["ok", "degraded"]
    database: bool
    events_listener: bool
