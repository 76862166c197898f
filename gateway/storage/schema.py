"""Schema migrations: plain SQL files in gateway/migrations, applied in order, recorded.

Each file runs in one transaction together with its row in `schema_migrations`, so a
migration is applied exactly once, even when two processes start at the same moment
(an advisory lock serialises them).
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

logger = logging.getLogger(__name__)
_LOCK_KEY = 0x6A5_5AFE


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("gateway.storage") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; return the versions applied now."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                                version text PRIMARY KEY,
                                applied_at timestamptz NOT NULL DEFAULT now())""")
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, text in migration_files():
                if version in done:
                    continue
                logger.info("applying migration %s", version)
                with conn.transaction():
                    conn.execute(text)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def drop_old_chunks(dsn: str, older_than_days: int) -> dict[str, int]:
    """Retention for the Apache build (no policies): drop whole chunks past the horizon."""
    dropped: dict[str, int] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("detector_readings", "meter_readings", "device_events", "rejects"):
            rows = conn.execute(
                "SELECT drop_chunks(%s::regclass, older_than => %s::interval)",
                (table, f"{older_than_days} days"),
            ).fetchall()
            dropped[table] = len(rows)
    return dropped
