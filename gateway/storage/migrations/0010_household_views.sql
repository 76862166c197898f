-- The console's household page reads a household's audit trail
-- (GET /households/{id}/audit): entries about the household itself or its devices use
-- audit_log_entity_idx; the others (valve commands and refusals, reopen requests, upgrade
-- bookings, confirmations) name the household in their details, under one of two keys.

CREATE INDEX IF NOT EXISTS audit_log_household_idx
    ON audit_log ((coalesce(details->>'household_id', details->>'household')), at DESC)
    WHERE details ? 'household_id' OR details ? 'household';
