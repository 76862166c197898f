-- gas-safety schema v1: registry, readings (hypertables), alarms, response, operators.
-- Applied once by gateway.schema (recorded in schema_migrations); plain SQL, in order.

CREATE EXTENSION IF NOT EXISTS timescaledb;

-- ------------------------------------------------------------------ registry
CREATE TABLE households (
    id            text PRIMARY KEY,
    address       text NOT NULL,
    community     text NOT NULL,
    building      text NOT NULL,          -- unique within the city, e.g. 'C03-B017'
    unit          text NOT NULL,
    owner_name    text NOT NULL,
    owner_phone   text NOT NULL,
    owner_email   text,
    qmax_m3h      real NOT NULL CHECK (qmax_m3h > 0),  -- meter load
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX households_community_idx ON households (community, building);
CREATE INDEX households_building_idx ON households (building);

CREATE TABLE devices (
    id            text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    kind          text NOT NULL CHECK (kind IN ('meter', 'detector')),
    model         text NOT NULL,
    household_id  text NOT NULL REFERENCES households (id),
    installed_on  date NOT NULL,
    firmware      text NOT NULL DEFAULT '1.0.0',
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    credential_set_at timestamptz,        -- the MQTT password lives hashed in the broker's file
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_household_idx ON devices (household_id);
CREATE INDEX devices_kind_model_idx ON devices (kind, model);

-- Latest known health of each device, upserted in batches by the gateway.
CREATE TABLE device_state (
    device_id     text PRIMARY KEY REFERENCES devices (id),
    online        boolean NOT NULL DEFAULT false,
    last_seen     timestamptz,
    last_seq      bigint,
    ch4_lel       real,
    fault         integer,
    flow_m3h      real,
    vol_m3        double precision,
    valve         text,
    batt_v        real,
    rssi          smallint,
    firmware      text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- ------------------------------------------------------------------ readings
-- The unique key (device_id, time, seq) makes redelivery harmless and also serves
-- "one device over a time range", so the hypertables carry no other index.
CREATE TABLE detector_readings (
    time          timestamptz NOT NULL,   -- device clock, or receive time when skewed
    device_id     text NOT NULL,
    seq           bigint NOT NULL,
    ch4_lel       real NOT NULL,
    fault         integer NOT NULL,
    received_at   timestamptz NOT NULL,
    flags         smallint NOT NULL DEFAULT 0   -- 1 = device clock skewed
);
SELECT create_hypertable('detector_readings', 'time',
                         chunk_time_interval => interval '1 day', create_default_indexes => false);
CREATE UNIQUE INDEX detector_readings_key ON detector_readings (device_id, time, seq);

CREATE TABLE meter_readings (
    time          timestamptz NOT NULL,
    device_id     text NOT NULL,
    seq           bigint NOT NULL,
    vol_m3        double precision NOT NULL,
    flow_m3h      real NOT NULL,
    valve         smallint NOT NULL,       -- 0 open, 1 closed, 2 fault
    batt_v        real NOT NULL,
    rssi          smallint NOT NULL,
    received_at   timestamptz NOT NULL,
    flags         smallint NOT NULL DEFAULT 0
);
SELECT create_hypertable('meter_readings', 'time',
                         chunk_time_interval => interval '1 day', create_default_indexes => false);
CREATE UNIQUE INDEX meter_readings_key ON meter_readings (device_id, time, seq);

-- Events and status changes (status has no seq; -1 there).
CREATE TABLE device_events (
    time          timestamptz NOT NULL,
    device_id     text NOT NULL,
    seq           bigint NOT NULL,
    type          text NOT NULL,
    payload       jsonb NOT NULL,
    received_at   timestamptz NOT NULL
);
SELECT create_hypertable('device_events', 'time',
                         chunk_time_interval => interval '7 days', create_default_indexes => false);
CREATE INDEX device_events_device_idx ON device_events (device_id, time DESC);

-- Every refused message, with its reason: the operators' view of bad input.
CREATE TABLE rejects (
    time          timestamptz NOT NULL,
    device_id     text,
    topic         text NOT NULL,
    reason        text NOT NULL,
    detail        text NOT NULL,
    payload_head  bytea NOT NULL           -- at most the first 256 bytes
);
SELECT create_hypertable('rejects', 'time',
                         chunk_time_interval => interval '7 days', create_default_indexes => false);
CREATE INDEX rejects_time_idx ON rejects (time DESC);
CREATE INDEX rejects_reason_idx ON rejects (reason, time DESC);

-- ------------------------------------------------------------------ alarms
CREATE TABLE incidents (
    id            bigserial PRIMARY KEY,
    building      text NOT NULL,
    community     text NOT NULL,
    kind          text NOT NULL,
    opened_at     timestamptz NOT NULL,
    closed_at     timestamptz,
    households    integer NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX incidents_open_key ON incidents (building, kind) WHERE closed_at IS NULL;

CREATE TABLE alarms (
    id            bigserial PRIMARY KEY,
    device_id     text NOT NULL REFERENCES devices (id),
    household_id  text NOT NULL REFERENCES households (id),
    kind          text NOT NULL,
    severity      text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state         text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'acknowledged', 'cleared')),
    value         real,
    raised_at     timestamptz NOT NULL,
    cleared_at    timestamptz,
    flow_at_meter boolean,
    incident_id   bigint REFERENCES incidents (id),
    evidence      jsonb NOT NULL DEFAULT '[]',  -- the readings behind it
    acknowledged_by text,
    acknowledged_at timestamptz,
    ack_comment   text
);
-- One alarm per device and kind until it clears: a restart cannot raise it twice.
CREATE UNIQUE INDEX alarms_open_key ON alarms (device_id, kind) WHERE cleared_at IS NULL;
CREATE INDEX alarms_raised_idx ON alarms (raised_at DESC);
CREATE INDEX alarms_household_idx ON alarms (household_id, raised_at DESC);

-- ------------------------------------------------------------------ response
CREATE TABLE valve_commands (
    cmd_id        text PRIMARY KEY,
    meter_id      text NOT NULL REFERENCES devices (id),
    household_id  text NOT NULL REFERENCES households (id),
    action        text NOT NULL CHECK (action IN ('valve_close', 'valve_open', 'self_test')),
    reason        text NOT NULL,
    alarm_id      bigint REFERENCES alarms (id),
    state         text NOT NULL CHECK (state IN ('issued', 'sent', 'acked', 'failed', 'timeout', 'escalated')),
    attempts      integer NOT NULL DEFAULT 0,
    requested_by  text NOT NULL,
    issued_at     timestamptz NOT NULL,
    sent_at       timestamptz,
    acked_at      timestamptz,
    ack_ok        boolean,
    ack_valve     text,
    ack_error     text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX valve_commands_meter_idx ON valve_commands (meter_id, issued_at DESC);
CREATE INDEX valve_commands_open_idx ON valve_commands (state) WHERE state IN ('issued', 'sent');

CREATE TABLE work_orders (
    id            bigserial PRIMARY KEY,
    household_id  text NOT NULL REFERENCES households (id),
    cause         text NOT NULL,
    priority      text NOT NULL CHECK (priority IN ('urgent', 'high', 'normal')),
    status        text NOT NULL DEFAULT 'open'
                  CHECK (status IN ('open', 'dispatched', 'on_site', 'resolved', 'cancelled')),
    title         text NOT NULL,
    opened_at     timestamptz NOT NULL,
    arrive_by     timestamptz NOT NULL,   -- SLA: emergency arrival or routine visit
    resolve_by    timestamptz NOT NULL,   -- SLA: repair done
    crew          text,
    findings      text,
    repeats       integer NOT NULL DEFAULT 0,
    alarm_id      bigint REFERENCES alarms (id),
    incident_id   bigint REFERENCES incidents (id),
    version       integer NOT NULL DEFAULT 1,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- One open order per household and cause: repeats attach to it.
CREATE UNIQUE INDEX work_orders_open_key ON work_orders (household_id, cause)
    WHERE status IN ('open', 'dispatched', 'on_site');
CREATE INDEX work_orders_status_idx ON work_orders (status, priority, opened_at DESC);

CREATE TABLE work_order_steps (
    id            bigserial PRIMARY KEY,
    work_order_id bigint NOT NULL REFERENCES work_orders (id),
    at            timestamptz NOT NULL,
    actor         text NOT NULL,
    action        text NOT NULL,
    from_status   text,
    to_status     text,
    note          text
);
CREATE INDEX work_order_steps_order_idx ON work_order_steps (work_order_id, at);

-- Outbox: every notice is written here first, then delivered by a channel.
CREATE TABLE notifications (
    id            bigserial PRIMARY KEY,
    household_id  text NOT NULL REFERENCES households (id),
    kind          text NOT NULL,
    channel       text NOT NULL,
    recipient     text NOT NULL,
    body          text NOT NULL,
    dedupe_key    text NOT NULL UNIQUE,
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz,
    last_error    text,
    alarm_id      bigint REFERENCES alarms (id),
    work_order_id bigint REFERENCES work_orders (id)
);
CREATE INDEX notifications_due_idx ON notifications (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notifications_household_idx ON notifications (household_id, created_at DESC);

CREATE TABLE audit_log (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor         text NOT NULL,          -- 'gateway' or a user name
    action        text NOT NULL,
    entity        text NOT NULL,
    entity_id     text NOT NULL,
    details       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_entity_idx ON audit_log (entity, entity_id, at);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);

-- ------------------------------------------------------------------ operators
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'engineer', 'admin')),
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id),
    prefix        text NOT NULL UNIQUE,
    key_hash      text NOT NULL,
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Upgrade programme: free meter-and-detector upgrades funded per community.
CREATE TABLE upgrade_quotas (
    community     text PRIMARY KEY,
    places        integer NOT NULL CHECK (places >= 0),
    booked        integer NOT NULL DEFAULT 0,
    CHECK (booked >= 0 AND booked <= places)
);

CREATE TABLE upgrade_bookings (
    id            bigserial PRIMARY KEY,
    community     text NOT NULL REFERENCES upgrade_quotas (community),
    household_id  text NOT NULL REFERENCES households (id),
    slot_start    timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'booked' CHECK (status IN ('booked', 'done', 'cancelled')),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX upgrade_bookings_household_key ON upgrade_bookings (household_id)
    WHERE status <> 'cancelled';
