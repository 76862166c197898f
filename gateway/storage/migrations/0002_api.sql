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
