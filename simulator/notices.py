"""What the platform recorded for a simulated fleet: commands, alarms, work orders, notices.

`read_platform` gathers it for a run's score; one function per table, so that the score
follows the schema in one place. A notice's `outcome` summarises its call chain (the
notice's state and its `notification_attempts` rows) in words: "answered at voice_owner",
"voice_owner no_answer -> sms_owner sent (pending)", or the bare delivery state of a
notice no step was tried for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.fleet import Fleet


def read_notices(conn: Any, household_ids: Sequence[str], since: dt.datetime) -> dict[str, list]:
    """Notices created since `since` by household, oldest first: kind, channel, state,
    outcome (the chain in words, see `chain_outcome`), attempts, created_at, delivered_at
    and first_attempt_at (epoch seconds: the chain's first call or text), error."""
    rows = conn.execute(
        "SELECT household_id, id, kind, channel, state, attempts,"
        " extract(epoch FROM created_at)::float8 AS created,"
        " extract(epoch FROM delivered_at)::float8 AS delivered, last_error"
        " FROM notifications WHERE household_id = ANY(%s) AND created_at >= %s"
        " ORDER BY created_at, id",
        (list(household_ids), since),
    ).fetchall()
    tuples = _tuples(rows)
    steps: dict[int, list[tuple[str, str, float]]] = {}
    if tuples:
        for nid, name, state, started in _tuples(
            conn.execute(
                "SELECT notification_id, step_name, state,"
                " extract(epoch FROM started_at)::float8 AS started"
                " FROM notification_attempts WHERE notification_id = ANY(%s) ORDER BY id",
                ([t[1] for t in tuples],),
            ).fetchall()
        ):
            steps.setdefault(nid, []).append((name, state, started))
    out: dict[str, list[dict[str, Any]]] = {}
    for h, nid, kind, channel, state, attempts, created, delivered, error in tuples:
        tried = steps.get(nid, [])
        out.setdefault(h, []).append(
            {
                "kind": kind,
                "channel": channel,
                "state": state,
                "outcome": chain_outcome(state, [(n, st) for n, st, _ in tried]),
                "attempts": attempts,
                "created_at": created,
                "delivered_at": delivered,
                "first_attempt_at": tried[0][2] if tried else None,
                "error": error,
            }
        )
    return out


def chain_outcome(state: str, attempts: Sequence[tuple[str, str]]) -> str:
    """A notice's chain in words, from its state and its attempts (step name, state) in
    order: "answered at voice_owner" when a call was answered, else each step tried with
    its last attempt's state ("voice_owner no_answer -> sms_owner sent"), and the notice's
    state when the chain has not finished (pending) or ended elsewhere (escalated)."""
    for name, st in attempts:
        if st == "answered":
            return f"answered at {name}"
    if not attempts:
        return state
    last: dict[str, str] = {}
    for name, st in attempts:
        last[name] = st  # steps in the order first tried, each with its last state
    words = " -> ".join(f"{n} {st}" for n, st in last.items())
    return words if state in ("sent", "failed") else f"{words} ({state})"


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


def read_platform(
    dsn: str, fleet: Fleet, since_wall: float, cmd_ids: list[str] | None = None
) -> dict[str, Any]:
    """What the platform recorded for this fleet since `since_wall` (epoch seconds), and
    when it issued the commands `cmd_ids` the meters received."""
    import psycopg
    from psycopg.rows import dict_row

    since = dt.datetime.fromtimestamp(since_wall - 1, dt.UTC)
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT cmd_id, meter_id, household_id, action, state,"
            " extract(epoch FROM issued_at)::float8 AS issued_at,"
            " extract(epoch FROM sent_at)::float8 AS sent_at,"
            " extract(epoch FROM acked_at)::float8 AS acked_at"
            " FROM valve_commands WHERE meter_id = ANY(%s) AND issued_at >= %s",
            (fleet.meter_ids, since),
        ).fetchall()
        out["valve_commands"] = rows
        out["issued_at"] = {
            r["cmd_id"]: r["issued"]
            for r in conn.execute(
                "SELECT cmd_id, extract(epoch FROM issued_at)::float8 AS issued FROM valve_commands"
                " WHERE cmd_id = ANY(%s)",
                (cmd_ids or [],),
            ).fetchall()
        }
        out["alarms"] = conn.execute(
            "SELECT device_id, household_id, kind, extract(epoch FROM raised_at)::float8"
            " AS raised_at FROM alarms WHERE household_id = ANY(%s) AND raised_at >= %s",
            (fleet.household_ids, since),
        ).fetchall()
        devices = fleet.all_device_ids()
        out["orders"] = read_orders(conn, fleet.household_ids, since)
        out["notices"] = read_notices(conn, fleet.household_ids, since)
        out["unconfirmed_cmds"] = [
            r["cmd_id"]
            for r in conn.execute(
                "SELECT details->>'cmd_id' AS cmd_id FROM audit_log"
                " WHERE action = 'cut.unconfirmed' AND entity_id = ANY(%s) AND at >= %s",
                (fleet.household_ids, since),
            ).fetchall()
        ]
        out["power_on"] = {
            r["device_id"]
            for r in conn.execute(
                "SELECT DISTINCT device_id FROM device_events WHERE type = 'power_on'"
                " AND device_id = ANY(%s) AND received_at >= %s",
                (fleet.detector_ids, since),
            ).fetchall()
        }
        rej = conn.execute(
            "SELECT reason, count(*) AS n FROM rejects WHERE time >= %s"
            " AND (device_id = ANY(%s) OR device_id LIKE 'ghost-%%') GROUP BY reason",
            (since, devices),
        ).fetchall()
        out["rejects"] = {r["reason"]: r["n"] for r in rej}
    return out
