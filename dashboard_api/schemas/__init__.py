"""What the operator API accepts and returns: pydantic models, by resource and role of use
(`...Create`, `...Update`, `...Public`, `...Detail`). The HTTP edge only; the gateway's
hot path has its own msgspec structs in gateway.protocol.

One module per resource (`common` holds the shared field types, bases, `Page` and `Problem`);
this package re-exports every public name, so `from dashboard_api.schemas import X` is the
way routers import them and does not depend on which module a model lives in.
"""

from __future__ import annotations

from dashboard_api.schemas.alarms import (
    AckRequest,
    AlarmDetail,
    AlarmPublic,
)
from dashboard_api.schemas.audit import (
    AuditEntry,
)
from dashboard_api.schemas.auth import (
    Me,
    Token,
)
from dashboard_api.schemas.common import (
    EARLIEST,
    IDENT_PATTERN,
    LABEL_PATTERN,
    LATEST,
    AlarmState,
    Body,
    BookingStatus,
    CommandAction,
    CommandState,
    DeviceKind,
    DeviceStatus,
    FieldError,
    Ident,
    Instant,
    Label,
    Model,
    NotificationState,
    Page,
    Phone,
    Priority,
    Problem,
    ReopenStatus,
    RoleName,
    Severity,
    T,
    Text,
    Username,
    WorkOrderStatus,
)
from dashboard_api.schemas.devices import (
    DeviceCreate,
    DeviceHealth,
    DevicePublic,
    DeviceUpdate,
    FleetSummary,
    KindCount,
    LastReading,
)
from dashboard_api.schemas.households import (
    HouseholdCreate,
    HouseholdDetail,
    HouseholdPublic,
)
from dashboard_api.schemas.notifications import (
    NotificationPublic,
)
from dashboard_api.schemas.readings import (
    Bucket,
    BucketedReadings,
    DetectorPoint,
    MeterPoint,
    RawReadings,
)
from dashboard_api.schemas.service import (
    GatewayHealth,
    Health,
)
from dashboard_api.schemas.upgrades import (
    BookingCreate,
    BookingPublic,
    QuotaPublic,
    QuotaUpdate,
    ResidentBookingRequest,
    ResidentCheck,
    ResidentView,
)
from dashboard_api.schemas.users import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    UserCreate,
    UserPublic,
    UserUpdate,
)
from dashboard_api.schemas.valves import (
    CommandAccepted,
    InspectionOpened,
    ReopenPending,
    ReopenRequestPublic,
    ValveCommand,
    ValveRequest,
)
from dashboard_api.schemas.work_orders import (
    CancelRequest,
    DispatchRequest,
    OnSiteRequest,
    ResolveRequest,
    Transition,
    WorkOrderDetail,
    WorkOrderPublic,
    WorkOrderStep,
)

__all__ = [
    "EARLIEST",
    "IDENT_PATTERN",
    "LABEL_PATTERN",
    "LATEST",
    "AckRequest",
    "AlarmDetail",
    "AlarmPublic",
    "AlarmState",
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyPublic",
    "AuditEntry",
    "Body",
    "BookingCreate",
    "BookingPublic",
    "BookingStatus",
    "Bucket",
    "BucketedReadings",
    "CancelRequest",
    "CommandAccepted",
    "CommandAction",
    "CommandState",
    "DetectorPoint",
    "DeviceCreate",
    "DeviceHealth",
    "DeviceKind",
    "DevicePublic",
    "DeviceStatus",
    "DeviceUpdate",
    "DispatchRequest",
    "FieldError",
    "FleetSummary",
    "GatewayHealth",
    "Health",
    "HouseholdCreate",
    "HouseholdDetail",
    "HouseholdPublic",
    "Ident",
    "InspectionOpened",
    "Instant",
    "KindCount",
    "Label",
    "LastReading",
    "Me",
    "MeterPoint",
    "Model",
    "NotificationPublic",
    "NotificationState",
    "OnSiteRequest",
    "Page",
    "Phone",
    "Priority",
    "Problem",
    "QuotaPublic",
    "QuotaUpdate",
    "RawReadings",
    "ReopenPending",
    "ReopenRequestPublic",
    "ReopenStatus",
    "ResidentBookingRequest",
    "ResidentCheck",
    "ResidentView",
    "ResolveRequest",
    "RoleName",
    "Severity",
    "T",
    "Text",
    "Token",
    "Transition",
    "UserCreate",
    "UserPublic",
    "UserUpdate",
    "Username",
    "ValveCommand",
    "ValveRequest",
    "WorkOrderDetail",
    "WorkOrderPublic",
    "WorkOrderStatus",
    "WorkOrderStep",
]
