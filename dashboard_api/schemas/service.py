"""The service's own health answer (`GET /healthz`): overall status and whether the database
and the events listener are up.
"""

from __future__ import annotations

from typing import Literal

from dashboard_api.schemas.common import Model


class Health(Model):
    status: Literal["ok", "degraded"]
    database: bool
    events_listener: bool
