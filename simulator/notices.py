"""The owner's notices and the work orders of households, as the platform recorded them.

One function per table, so that a run's score follows the schema in one place: a notice's
`outcome` is today its delivery state (pending, sent, failed); a call chain with per-step
outcomes would be read here and summarised into the same `outcome`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any


def read_notices(conn: Any, household_ids: Sequence[str], since: dt.datetime) -> dict[str, list]:
    """Notices created since `since` by household, oldest first: kind, channel, outcome,
    attempts, created_at and delivered_at (epoch seconds), error."""
    rows = conn.execute(
        "SELECT household_id, kind, channel, state, attempts,"
        " extract(epoch FROM created_at)::float8 AS created,"
        " extract(epoch FROM delivered_at)::float8 AS delivered, last_error"
        " FROM notifications WHERE household_id = ANY(%s) AND created_at >= %s"
        " ORDER BY created_at, id",
        (list(household_ids), since),
    ).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for h, kind, channel, state, attempts, created, delivered, error in _tuples(rows):
        out.setdefault(h, []).append(
            {
                "kind": kind,
                "channel": channel,
                "outcome": state,
                "attempts": attempts,
                "created_at": created,
                "delivered_at": delivered,
                "error": error,
            }
        )
    return out


def read_orders(conn: Any, household_ids: Sequence[str], since: dt.datetime) -> dict[str, list]:
    """Work orders opened since `since` by household, oldest first: cause, priority, status,
    opened_at and dispatched_at (epoch seconds of the step to `dispatched`, or None)."""
    rows = conn.execute(
        "SELECT w.household_id, w.cause, w.priority, w.status,"
        " extract(epoch FROM w.opened_at)::float8 AS opened,"
        " (SELECT extract(epoch FROM min(s.at))::float8 FROM work_order_steps s"
        "   WHERE s.work_order_id = w.id AND s.to_status = 'dispatched') AS dispatched"
        " FROM work_orders w WHERE w.household_id = ANY(%s) AND w.opened_at >= %s"
        " ORDER BY w.opened_at, w.id",
        (list(household_ids), since),
    ).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for h, cause, priority, status, opened, dispatched in _tuples(rows):
        out.setdefault(h, []).append(
            {
                "cause": cause,
                "priority": priority,
                "status": status,
                "opened_at": opened,
                "dispatched_at": dispatched,
            }
        )
    return out


def _tuples(rows: list[Any]) -> list[tuple[Any, ...]]:
    """Rows as tuples, from a tuple or a dict row factory alike."""
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]
