"""`gas-safety db retain` drops only what it showed, only when told to, and audits it.

It once dropped today's readings on `--days -3` and read `--days 0` as a year. Runs the
real console script against a database of this test's own in the run's private cluster
(retention is global: in the shared database it would drop other tests' old readings),
with readings of today and of 400 days ago.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gateway.ops import retention
from gateway.ops.stack import DB_NAME, DB_USER, Runtime
from gateway.storage import schema

pytestmark = pytest.mark.services

SCRIPT = str(Path(sys.executable).with_name("gas-safety"))
NOW = dt.datetime.now(dt.UTC)
OLD = NOW - dt.timedelta(days=400)


@pytest.fixture
def db(runtime: Runtime, prefix: str) -> Iterator[str]:
    """A migrated database of this test's own, with one old and one current reading chunk."""
    name = f"retain_{prefix}"
    with psycopg.connect(runtime.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(DB_USER)))
    admin = runtime.admin_dsn.replace("dbname=postgres", f"dbname={name}")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION timescaledb")  # needs a superuser, as in `stack up`
    dsn = runtime.dsn.replace(f"dbname={DB_NAME}", f"dbname={name}")
    schema.migrate(dsn)
    with psycopg.connect(dsn) as conn:
        for when in (OLD, NOW):
            for i in range(3):
                conn.execute("INSERT INTO detector_readings (time, device_id, seq, ch4_lel, fault,"
                             " received_at) VALUES (%s, %s, %s, 0.5, 0, %s)",
                             (when - dt.timedelta(minutes=i), f"{prefix}-d1", i, when))
            conn.execute("INSERT INTO meter_readings (time, device_id, seq, vol_m3, flow_m3h,"
                         " valve, batt_v, rssi, received_at) VALUES (%s, %s, 1, 1.0, 0, 0,"
                         " 3.6, -70, %s)", (when, f"{prefix}-m1", when))
    try:
        yield dsn
    finally:
        with psycopg.connect(runtime.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _cli(tmp_path: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GAS_SAFETY_")}
    env |= {"GAS_SAFETY_HOME": str(tmp_path / "home"), "GAS_SAFETY_DB__DSN": dsn}
    return subprocess.run([SCRIPT, "db", "retain", *args], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _state(dsn: str) -> tuple[dict[str, list[str]], int, int, int]:
    """Chunks per reading table, old and current readings, and retention audit rows."""
    with psycopg.connect(dsn) as conn:
        chunks: dict[str, list[str]] = {}
        for table, chunk in conn.execute(
                "SELECT hypertable_name, format('%I.%I', chunk_schema, chunk_name)"
                " FROM timescaledb_information.chunks ORDER BY range_start"):
            chunks.setdefault(table, []).append(chunk)
        old, current = conn.execute(
            "SELECT count(*) FILTER (WHERE time < now() - interval '300 days'),"
            " count(*) FILTER (WHERE time > now() - interval '1 day') FROM detector_readings"
        ).fetchone() or (0, 0)
        audits = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'db.retain'"
                              ).fetchone()
    return chunks, old, current, audits[0] if audits else 0


@pytest.mark.parametrize("days", ["-3", "0"])
def test_days_below_one_refused_and_nothing_dropped(tmp_path: Path, db: str, days: str) -> None:
    before = _state(db)
    r = _cli(tmp_path, db, "--days", days, "--yes")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [(f"gas-safety db retain: error: argument --days: must be at "
                                     f"least 1 day, got {int(days)} (see --help)")]
    assert _state(db) == before and before[1:3] == (3, 3)


def test_without_yes_the_plan_is_shown_and_nothing_dropped(tmp_path: Path, db: str) -> None:
    before = _state(db)
    old_detector_chunk = before[0]["detector_readings"][0]
    r = _cli(tmp_path, db, "--days", "30")
    assert r.returncode == 1
    assert r.stderr.strip() == "nothing dropped; add --yes"
    out = r.stdout
    assert "readings older than 30 days" in out
    assert "detector_readings: 1 chunk(s), 3 rows" in out
    assert "meter_readings: 1 chunk(s), 1 rows" in out
    assert old_detector_chunk in out and f"{OLD:%Y-%m-%d}" in out
    assert before[0]["detector_readings"][1] not in out  # today's chunk is not in the plan
    assert "total: 2 chunk(s), 4 rows" in out
    assert _state(db) == before


def test_with_yes_only_the_old_chunks_go_and_it_is_audited(tmp_path: Path, db: str) -> None:
    chunks, *_ = _state(db)
    old = {t: c[0] for t, c in chunks.items()}
    started = dt.datetime.now(dt.UTC)
    r = _cli(tmp_path, db, "--yes", "--actor", "ops-alice")
    assert r.returncode == 0, r.stderr
    assert "no --days: db.retention_days = 365 (default)" in r.stdout
    assert "dropped: detector_readings 1 chunk(s), meter_readings 1 chunk(s)" in r.stdout
    after, old_rows, current_rows, audits = _state(db)
    assert (old_rows, current_rows, audits) == (0, 3, 2)
    assert after == {t: c[1:] for t, c in chunks.items()}  # today's chunks remain
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT actor, entity, entity_id, details FROM audit_log"
                            " WHERE action = 'db.retain' ORDER BY entity_id").fetchall()
    assert [(a, e, i) for a, e, i, _ in rows] == [("ops-alice", "hypertable", "detector_readings"),
                                                  ("ops-alice", "hypertable", "meter_readings")]
    details = rows[0][3]
    assert details["chunks"] == [old["detector_readings"]] and details["days"] == 365
    assert details["rows_estimate"] == 3
    cutoff = dt.datetime.fromisoformat(details["cutoff"])
    assert abs((started - dt.timedelta(days=365) - cutoff).total_seconds()) < 120
    again = _cli(tmp_path, db, "--yes")
    assert again.returncode == 0 and "nothing to drop" in again.stdout


def test_chunks_that_appear_after_the_plan_stop_the_drop(db: str) -> None:
    before = _state(db)
    with psycopg.connect(db, autocommit=True) as conn:
        plan = retention.plan(conn, 30)
        conn.execute("INSERT INTO rejects (time, topic, reason, detail, payload_head)"
                     " VALUES (%s, 'gas/v1/x/telemetry', 'schema', 'late backfill', '')",
                     (OLD - dt.timedelta(days=30),))
        with pytest.raises(retention.RetentionError, match="not in the plan"):
            retention.drop(conn, plan, "tests")
    after = _state(db)
    assert after[1:] == before[1:] and after[0]["detector_readings"] == before[0][
        "detector_readings"]
