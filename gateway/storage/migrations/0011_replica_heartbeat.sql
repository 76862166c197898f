-- The API's measure of a streaming replica's lag (dashboard_api/reads.py): each API process
-- writes its row on the primary every second and reads the newest back from the replica.
-- now() - beat_at there is how far the replica is behind (within one beat), and it keeps
-- growing when the replica stops receiving, which pg_last_xact_replay_timestamp() alone
-- cannot tell from a quiet primary.

CREATE TABLE IF NOT EXISTS replica_heartbeat (
    source text PRIMARY KEY,
    beat_at timestamptz NOT NULL
);
