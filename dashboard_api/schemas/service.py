"""The service's own health answer (`GET /healthz`): overall status and whether the database
and the events listener are up.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dashboard_api.schemas.common import Model


class GatewayHealth(Model):
    status: Literal["ok", "degraded", "unreachable", "unknown"] = Field(
        description="The gateway's /healthz as the API reaches it on metrics_host:metrics_port"
        " (unknown: metrics_port = 0)."
    )
    broker_connected: bool | None = Field(
        description="Whether the gateway's ingest connection to the broker is up."
    )


class ReplicaHealth(Model):
    in_use: bool = Field(description="Whether reads that may lag go to the replica now")
    lag_s: float | None = Field(
        description="How far behind the primary it was at the last heartbeat (seconds)"
    )


class Health(Model):
    status: Literal["ok", "degraded"]
    database: bool
    events_listener: bool
    gateway: GatewayHealth | None = None
    read_replica: ReplicaHealth | None = Field(
        default=None, description="Only when db.read_dsn is set (dashboard_api/reads.py)"
    )
