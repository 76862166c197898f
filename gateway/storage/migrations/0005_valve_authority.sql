-- Valve authority (dashboard_api.valve_policy, dashboard_api/routes/valves.py): who may
-- close and reopen a household's valve, and the records that prove it.

-- A close that found another close of the same meter in flight attaches to it instead of
-- going out as a second command: state 'attached', attached_to = the command in flight.
ALTER TABLE valve_commands DROP CONSTRAINT valve_commands_state_check;
ALTER TABLE valve_commands ADD CONSTRAINT valve_commands_state_check
    CHECK (state IN ('issued', 'sent', 'acked', 'failed', 'timeout', 'escalated', 'attached'));
ALTER TABLE valve_commands ADD COLUMN attached_to text;
ALTER TABLE valve_commands ADD CONSTRAINT valve_commands_attached_check
    CHECK (state <> 'attached' OR attached_to IS NOT NULL);

-- The cut a work order answers for: a manual close opens an inspection order linked to its
-- command; an engineer's inspection order for an unexplained cut is linked to that cut.
ALTER TABLE work_orders ADD COLUMN cmd_id text REFERENCES valve_commands (cmd_id);
CREATE INDEX work_orders_cmd_idx ON work_orders (cmd_id) WHERE cmd_id IS NOT NULL;

-- A reopen asked for by the engineer who resolved the cut's order waits here for a second
-- person, a supervisor (admin), to confirm it; one pending request per meter.
CREATE TABLE valve_reopen_requests (
    id            bigserial PRIMARY KEY,
    meter_id      text NOT NULL REFERENCES devices (id),
    household_id  text NOT NULL REFERENCES households (id),
    cut_cmd_id    text REFERENCES valve_commands (cmd_id),  -- null: the meter reported the cut
    cut_at        timestamptz NOT NULL,
    work_order_id bigint NOT NULL REFERENCES work_orders (id),
    resolved_by   text NOT NULL,
    requested_by  text NOT NULL,
    reason        text NOT NULL,
    requested_at  timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'confirmed', 'superseded')),
    decided_by    text,
    decided_at    timestamptz,
    decision_note text,
    cmd_id        text REFERENCES valve_commands (cmd_id)   -- the reopen command, once confirmed
);
CREATE UNIQUE INDEX valve_reopen_requests_pending_key ON valve_reopen_requests (meter_id)
    WHERE status = 'pending';
CREATE INDEX valve_reopen_requests_meter_idx
    ON valve_reopen_requests (meter_id, requested_at DESC, id DESC);

-- Per-account valve actions in the last minute (mass-action confirmation, rate limit).
CREATE INDEX audit_log_actor_at_idx ON audit_log (actor, at DESC);
