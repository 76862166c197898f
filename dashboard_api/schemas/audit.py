"""The audit trail as an admin reads it: one entry per recorded action, with its actor,
the entity it touched and the details recorded with it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from dashboard_api.schemas.common import Model


class AuditEntry(Model):
    id: int
    at: dt.datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    details: dict[str, Any]
