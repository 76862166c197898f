"""The SQL of everything a batch decided besides its readings, inside the writer's transaction.

Rejects, device events, alarms (with their incidents and audit rows), valve commands, work
orders (with their steps), notifications, audit rows and the `pg_notify` of live events are
written here, in that order: the alarms first, since commands, work orders and notifications
refer to the ids they get, and the live events last, once those ids exist. Every statement
is idempotent under redelivery (unique keys, `ON CONFLICT`), because a batch is acknowledged
only after COMMIT and may be written again after a crash. The writer's thread owns the
connection and the transaction; these functions only run statements on its cursor.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gateway.storage.rows import Batch


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def write_decisions(cur: psycopg.Cursor[Any], b: Batch) -> None:
    """All of `b` but its readings, on `cur` (inside the caller's transaction)."""
    if b.rejects:
        cur.executemany(
            "INSERT INTO rejects (time, device_id, topic, reason, detail,"
            " payload_head) VALUES (%s, %s, %s, %s, %s, %s)",
            b.rejects,
        )
    if b.events:
        cur.executemany(
            "INSERT INTO device_events (time, device_id, seq, type, payload,"
            " received_at) VALUES (%s, %s, %s, %s, %s, %s)",
            b.events,
        )
    alarm_ids = write_alarms(cur, b)
    write_commands(cur, b, alarm_ids)
    wo_live = write_work_orders(cur, b, alarm_ids)
    if b.notifications:
        cur.executemany(
            "INSERT INTO notifications (household_id, kind, channel, recipient, body,"
            " dedupe_key, alarm_id) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (dedupe_key) DO NOTHING",
            [
                (
                    n.household_id,
                    n.kind,
                    n.channel,
                    n.recipient,
                    n.body,
                    n.dedupe_key,
                    alarm_ids.get(n.alarm_key) if n.alarm_key else None,
                )
                for n in b.notifications
            ],
        )
        cur.execute("SELECT pg_notify('gas_notices', '')")  # wakes the notifiers on COMMIT
    if b.audit:
        cur.executemany(
            "INSERT INTO audit_log (at, actor, action, entity, entity_id,"
            " details) VALUES (now(), %s, %s, %s, %s, %s)",
            [(a, act, e, eid, Jsonb(d)) for a, act, e, eid, d in b.audit],
        )
    live = b.live + wo_live  # after the alarms they follow from
    if live:
        for e in live:  # the ids exist now: the API and its live stream use them
            if e["type"] in ("alarm.raised", "alarm.cleared") and "alarm_id" not in e:
                e["alarm_id"] = alarm_ids.get((e["device_id"], e["kind"]))
        cur.executemany("SELECT pg_notify('gas_events', %s)", [(json.dumps(e),) for e in live])


def write_alarms(cur: psycopg.Cursor[Any], b: Batch) -> dict[tuple[str, str], int]:
    """Set-based: an alarm storm (a sweep finding thousands of old meters) is one round trip
    per statement, not per alarm."""
    ids: dict[tuple[str, str], int] = {}
    if b.alarms:
        incident_of: dict[int, int] = {}
        for i, a in enumerate(b.alarms):
            if a.incident:  # rare: a riser leak
                cur.execute(
                    "INSERT INTO incidents (building, community, kind, opened_at, households)"
                    " VALUES (%s, %s, %s, %s, 1) ON CONFLICT (building, kind)"
                    " WHERE closed_at IS NULL DO UPDATE SET"
                    " households = incidents.households + 1 RETURNING id",
                    (a.building, a.community, a.kind, _ts(a.raised_at)),
                )
                incident_of[i] = cur.fetchone()[0]  # type: ignore[index]
        cur.executemany(
            "INSERT INTO alarms (device_id, household_id, kind, severity, value, raised_at,"
            " flow_at_meter, evidence, incident_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (device_id, kind) WHERE cleared_at IS NULL DO NOTHING"
            " RETURNING id, device_id, kind",
            [
                (
                    a.device_id,
                    a.household_id,
                    a.kind,
                    a.severity,
                    a.value,
                    _ts(a.raised_at),
                    a.flow_at_meter,
                    Jsonb(a.evidence),
                    incident_of.get(i),
                )
                for i, a in enumerate(b.alarms)
            ],
            returning=True,
        )
        new: dict[tuple[str, str], int] = {}
        while True:
            for aid, device_id, kind in cur.fetchall():
                new[(device_id, kind)] = aid
            if not cur.nextset():
                break
        ids.update(new)
        missing = [(a.device_id, a.kind) for a in b.alarms if (a.device_id, a.kind) not in ids]
        if missing:  # already open (raised before a restart): keep that one
            cur.execute(
                "SELECT a.id, a.device_id, a.kind FROM alarms a JOIN unnest(%s::text[],"
                " %s::text[]) AS m(device_id, kind) USING (device_id, kind)"
                " WHERE a.cleared_at IS NULL",
                ([d for d, _ in missing], [k for _, k in missing]),
            )
            for aid, device_id, kind in cur.fetchall():
                ids[(device_id, kind)] = aid
        if new:
            by_key = {(a.device_id, a.kind): a for a in b.alarms}
            cur.executemany(
                "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
                " VALUES ('gateway', 'alarm.raised', 'alarm', %s, %s)",
                [
                    (
                        str(aid),
                        Jsonb(
                            {
                                "device": k[0],
                                "kind": k[1],
                                "value": by_key[k].value,
                                "evidence": by_key[k].evidence,
                            }
                        ),
                    )
                    for k, aid in new.items()
                ],
            )
    if b.cleared:
        cur.executemany(
            "UPDATE alarms SET cleared_at = %s, state = 'cleared'"
            " WHERE device_id = %s AND kind = %s AND cleared_at IS NULL",
            [(_ts(at), d, k) for d, k, at in b.cleared],
        )
    return ids


def write_commands(
    cur: psycopg.Cursor[Any], b: Batch, alarm_ids: dict[tuple[str, str], int]
) -> None:
    """Upsert the valve commands by `cmd_id`: a command is written again as its state moves
    (sent, acked), and the alarm it answers may be known only by its device and kind."""
    rows = []
    for c in b.commands:
        alarm_id = None
        if c.get("trigger_device") and c.get("cause"):
            alarm_id = alarm_ids.get((c["trigger_device"], c["cause"]))
        rows.append(
            (
                c["cmd_id"],
                c["meter_id"],
                c["household_id"],
                c["action"],
                c["reason"],
                alarm_id,
                c.get("trigger_device"),
                c.get("cause"),
                c["state"],
                c["attempts"],
                c["requested_by"],
                _ts(c["issued_at"]),
                _ts(c["sent_at"]) if c.get("sent_at") else None,
                _ts(c["acked_at"]) if c.get("acked_at") else None,
                c.get("ack_ok"),
                c.get("ack_valve"),
                c.get("ack_error"),
            )
        )
    if not rows:
        return
    cur.executemany(
        "INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason,"
        " alarm_id, state, attempts, requested_by, issued_at, sent_at, acked_at, ack_ok,"
        " ack_valve, ack_error, updated_at)"
        " SELECT %s, %s, %s, %s, %s, coalesce(%s, (SELECT id FROM alarms WHERE device_id = %s"
        " AND kind = %s ORDER BY raised_at DESC LIMIT 1)), %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        " now()"
        " ON CONFLICT (cmd_id) DO UPDATE SET state = excluded.state,"
        " attempts = greatest(valve_commands.attempts, excluded.attempts),"
        " alarm_id = coalesce(valve_commands.alarm_id, excluded.alarm_id),"
        " sent_at = coalesce(excluded.sent_at, valve_commands.sent_at),"
        " acked_at = excluded.acked_at, ack_ok = excluded.ack_ok,"
        " ack_valve = excluded.ack_valve, ack_error = excluded.ack_error, updated_at = now()",
        rows,
    )


def write_work_orders(
    cur: psycopg.Cursor[Any], b: Batch, alarm_ids: dict[tuple[str, str], int]
) -> list[dict[str, Any]]:
    """Open work orders (or count a repeat on the open one) with their steps and audit rows;
    returns the live events to announce once the transaction has the orders' ids."""
    if not b.work_orders:
        return []
    cur.executemany(
        "INSERT INTO work_orders (household_id, cause, priority, title, opened_at,"
        " arrive_by, resolve_by, alarm_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (household_id, cause) WHERE status IN ('open', 'dispatched', 'on_site')"
        " DO UPDATE SET repeats = work_orders.repeats + 1, updated_at = now(),"
        " version = work_orders.version + 1"
        " RETURNING id, (xmax = 0) AS created",
        [
            (
                w.household_id,
                w.cause,
                w.priority,
                w.title,
                _ts(w.opened_at),
                w.arrive_by,
                w.resolve_by,
                alarm_ids.get(w.alarm_key) if w.alarm_key else None,
            )
            for w in b.work_orders
        ],
        returning=True,
    )
    results: list[tuple[int, bool]] = []
    while True:
        results.extend(cur.fetchall())
        if not cur.nextset():
            break
    steps, audit, live = [], [], []
    for w, (wo_id, created) in zip(b.work_orders, results, strict=True):
        steps.append(
            (wo_id, "opened" if created else "attached", "open" if created else None, w.note)
        )
        if created:
            audit.append(
                (
                    str(wo_id),
                    Jsonb(
                        {
                            "household": w.household_id,
                            "cause": w.cause,
                            "priority": w.priority,
                            "note": w.note,
                        }
                    ),
                )
            )
        live.append(
            {
                "type": "work_order.opened" if created else "work_order.changed",
                "work_order_id": wo_id,
                "household_id": w.household_id,
                "cause": w.cause,
                "priority": w.priority,
            }
        )
    cur.executemany(
        "INSERT INTO work_order_steps (work_order_id, at, actor, action,"
        " from_status, to_status, note) VALUES (%s, now(), 'gateway', %s, NULL,"
        " %s, %s)",
        steps,
    )
    if audit:
        cur.executemany(
            "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
            " VALUES ('gateway', 'work_order.opened', 'work_order', %s, %s)",
            audit,
        )
    return live
