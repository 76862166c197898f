-- Resident self-service (dashboard_api.resident_auth, dashboard_api/routes/resident.py): a
-- resident signs in with a one-time code sent by SMS to the owner's phone on file, and the
-- verified code opens a session limited to that one household.
--
-- Codes are kept as keyed digests (HMAC-SHA256 under the API's secret), never in clear; a
-- code is spent when used, superseded by a newer one, expired, out of attempts, or not
-- delivered. `client` is the requester's address: codes per client and per household are
-- counted from these rows to rate-limit issuing (across API workers).

CREATE TABLE IF NOT EXISTS resident_codes (
    id            bigserial PRIMARY KEY,
    household_id  text NOT NULL REFERENCES households (id),
    code_hash     text NOT NULL,
    client        text NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    spent_at      timestamptz,
    spent_how     text CHECK (spent_how IN
                      ('used', 'superseded', 'expired', 'exhausted', 'undelivered')),
    CHECK ((spent_at IS NULL) = (spent_how IS NULL))
);
CREATE INDEX IF NOT EXISTS resident_codes_household_idx
    ON resident_codes (household_id, created_at DESC);
CREATE INDEX IF NOT EXISTS resident_codes_client_idx ON resident_codes (client, created_at DESC);

-- A resident's session: a random bearer token (shown once) kept as its SHA-256 digest.
CREATE TABLE IF NOT EXISTS resident_sessions (
    id            bigserial PRIMARY KEY,
    household_id  text NOT NULL REFERENCES households (id),
    token_hash    text NOT NULL UNIQUE,
    code_id       bigint NOT NULL REFERENCES resident_codes (id),
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    ended_at      timestamptz
);
CREATE INDEX IF NOT EXISTS resident_sessions_household_idx
    ON resident_sessions (household_id, created_at DESC);
