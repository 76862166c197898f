-- Daily rollups of readings (dashboard_api.rollup): a device's year in day-wide buckets
-- reads 365 rows instead of ~100 k through 365 daily chunks. Written by the API's rollup
-- worker once a day is final; [lo, hi) in reading_rollup_state is the range rolled up.
-- IF NOT EXISTS: for a while these tables were part of 0002_api, so some databases have them.

CREATE TABLE IF NOT EXISTS reading_days (
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
SELECT create_hypertable('reading_days', 'day', chunk_time_interval => interval '30 days',
                         if_not_exists => true);

CREATE TABLE IF NOT EXISTS reading_rollup_state (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    lo            timestamptz NOT NULL,
    hi            timestamptz NOT NULL
);
