"""Retention of readings: whole chunks past the horizon are dropped, after a plan is shown.

The Apache build of TimescaleDB has no retention policies, so `gas-safety db retain` drops
chunks itself. Dropping cannot be undone, so it is done in two steps: `plan` lists what
would go (each chunk, its time range, its rows, estimated), and `drop` drops exactly
those chunks, writing an audit row per hypertable in the same transaction. If the set of
chunks changed in between (a backfill made an old chunk), nothing is dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

logger = logging.getLogger(__name__)

HYPERTABLES = ("detector_readings", "meter_readings", "device_events", "rejects")
COUNT_CAP = 1_000_000  # rows counted at most in a chunk never analysed (no estimate there)


class RetentionError(RuntimeError):
    """Nothing was dropped; the message says why."""


@dataclass(frozen=True)
class Chunk:
    hypertable: str
    name: str  # schema-qualified as drop_chunks names it: format('%I.%I', schema, table)
    range_start: dt.datetime
    range_end: dt.datetime
    rows: int  # estimate: pg_class.reltuples, or a count capped at COUNT_CAP + 1
    estimated: bool


@dataclass(frozen=True)
class Plan:
    days: int
    cutoff: dt.datetime  # chunks whose whole range ends at or before this go
    chunks: tuple[Chunk, ...]

    def of(self, table: str) -> list[Chunk]:
        return [c for c in self.chunks if c.hypertable == table]

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.chunks)


def plan(conn: psycopg.Connection, days: int) -> Plan:
    """What dropping readings older than `days` days would remove now."""
    if days < 1:
        raise RetentionError(f"retention of {days} days: need at least 1")
    row = conn.execute("SELECT now() - make_interval(days => %s)", (days,)).fetchone()
    assert row is not None
    cutoff: dt.datetime = row[0]
    found = conn.execute(
        """SELECT c.hypertable_name, c.chunk_schema, c.chunk_name,
                  format('%%I.%%I', c.chunk_schema, c.chunk_name),
                  c.range_start, c.range_end, k.reltuples
           FROM timescaledb_information.chunks c
           JOIN pg_class k ON k.oid = format('%%I.%%I', c.chunk_schema, c.chunk_name)::regclass
           WHERE format('%%I.%%I', c.hypertable_schema, c.hypertable_name)::regclass
                 = ANY(%s::regclass[])
             AND c.range_end <= %s
           ORDER BY c.hypertable_name, c.range_start""",
        (list(HYPERTABLES), cutoff),
    ).fetchall()
    chunks = []
    for table, schema, chunk, name, start, end, reltuples in found:
        ident = sql.Identifier(schema, chunk)
        if reltuples is not None and reltuples >= 0:
            rows, estimated = int(reltuples), True
        else:  # never analysed: count, but never more than a bounded number of rows
            counted = conn.execute(
                sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) s").format(ident),
                (COUNT_CAP + 1,),
            ).fetchone()
            rows, estimated = (int(counted[0]) if counted else 0), False
        chunks.append(Chunk(table, name, start, end, rows, estimated))
    return Plan(days, cutoff, tuple(chunks))


def describe(p: Plan) -> str:
    """The plan as the operator reads it before saying yes."""
    lines = [f"readings older than {p.days} days (before {p.cutoff:%Y-%m-%d %H:%M:%S %Z}):"]
    for table in HYPERTABLES:
        chunks = p.of(table)
        if not chunks:
            lines.append(f"  {table}: nothing to drop")
            continue
        lines.append(f"  {table}: {len(chunks)} chunk(s), {_rows(chunks)} rows")
        for c in chunks:
            lines.append(
                f"    {c.name}  {c.range_start:%Y-%m-%d %H:%M} .. "
                f"{c.range_end:%Y-%m-%d %H:%M}  {_rows([c])} rows"
            )
    lines.append(f"total: {len(p.chunks)} chunk(s), {_rows(list(p.chunks))} rows")
    return "\n".join(lines)


def drop(conn: psycopg.Connection, p: Plan, actor: str) -> dict[str, list[str]]:
    """Drop the plan's chunks and audit it, in one transaction; exactly those or none."""
    dropped: dict[str, list[str]] = {}
    with conn.transaction():
        for table in HYPERTABLES:
            planned = {c.name for c in p.of(table)}
            rows = conn.execute(
                "SELECT drop_chunks(%s::regclass, older_than => %s::timestamptz)", (table, p.cutoff)
            ).fetchall()
            gone = [r[0] for r in rows]
            extra = set(gone) - planned
            if extra:  # raising rolls the drops back
                raise RetentionError(
                    f"{table}: chunks not in the plan would go too "
                    f"({', '.join(sorted(extra))}); nothing dropped, "
                    "look at the plan again"
                )
            if not gone:
                continue
            dropped[table] = gone
            conn.execute(
                "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
                " VALUES (%s, 'db.retain', 'hypertable', %s, %s)",
                (
                    actor,
                    table,
                    Jsonb(
                        {
                            "days": p.days,
                            "cutoff": p.cutoff.isoformat(),
                            "chunks": gone,
                            "rows_estimate": sum(c.rows for c in p.of(table) if c.name in gone),
                        }
                    ),
                ),
            )
    logger.info(
        "retention actor=%s days=%d cutoff=%s dropped=%s",
        actor,
        p.days,
        p.cutoff.isoformat(),
        {t: len(c) for t, c in dropped.items()},
    )
    return dropped


def _rows(chunks: list[Chunk]) -> str:
    total = sum(c.rows for c in chunks)
    capped = any(not c.estimated and c.rows > COUNT_CAP for c in chunks)
    approx = any(c.estimated for c in chunks)
    return f"{'>' if capped else '~' if approx else ''}{total:,}"
