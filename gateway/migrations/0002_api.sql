-- Indexes for the operator API (dashboard_api): its lists are newest first and paged by
-- (sort key, id), and its detail pages look orders, alarms and commands up by household,
-- device or alarm.

CREATE INDEX IF NOT EXISTS work_orders_opened_idx ON work_orders (opened_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS work_orders_household_idx
    ON work_orders (household_id, opened_at DESC);
CREATE INDEX IF NOT EXISTS work_orders_alarm_idx
    ON work_orders (alarm_id) WHERE alarm_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS alarms_raised_id_idx ON alarms (raised_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS alarms_device_idx ON alarms (device_id, raised_at DESC);
CREATE INDEX IF NOT EXISTS valve_commands_alarm_idx
    ON valve_commands (alarm_id) WHERE alarm_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS notifications_created_idx ON notifications (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS upgrade_bookings_slot_idx ON upgrade_bookings (slot_start, id);
CREATE INDEX IF NOT EXISTS api_keys_user_idx ON api_keys (user_id);
CREATE INDEX IF NOT EXISTS audit_log_at_id_idx ON audit_log (at DESC, id DESC);

-- Daily rollups of readings (dashboard_api.rollup): a device's year in day-wide buckets
-- reads 365 rows instead of ~100 k through 365 daily chunks. Written by the API's rollup
-- worker once a day is final; [lo, hi) in reading_rollup_state is the range rolled up.
CREATE TABLE reading_days (
    device_id     text NOT NULL,
    day           timestamptz NOT NULL,    -- UTC midnight
    n             integer NOT NULL,
    vmin          real NOT NULL,           -- ch4_lel (detectors) or flow_m3h (meters)
    vmax          real NOT NULL,
    vsum          double precision NOT NULL,
    fault_or      integer,                 -- detectors: OR of fault masks
    vol_last      double precision,        -- meters: last cumulative volume that day
    vol_last_time timestamptz,
    batt_min      real,                    -- meters: lowest battery that day
    PRIMARY KEY (device_id, day)
);
SELECT create_hypertable('reading_days', 'day', chunk_time_interval => interval '30 days');

CREATE TABLE reading_rollup_state (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    lo            timestamptz NOT NULL,
    hi            timestamptz NOT NULL
);
