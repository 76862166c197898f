-- The operator console (dashboard_api.console, dashboard_api/routes/board.py): alarm
-- shelving (ISA-18.2: an alarm taken off the live board for a set time, with a reason) and
-- the board's read of "what needs attention": alarms not cleared, and alarms that returned
-- to normal without anyone acknowledging them.

ALTER TABLE alarms ADD COLUMN IF NOT EXISTS shelved_until timestamptz;
ALTER TABLE alarms ADD COLUMN IF NOT EXISTS shelved_by text;
ALTER TABLE alarms ADD COLUMN IF NOT EXISTS shelve_reason text;

CREATE INDEX IF NOT EXISTS alarms_board_idx ON alarms (raised_at DESC, id DESC)
    WHERE cleared_at IS NULL OR acknowledged_at IS NULL;
CREATE INDEX IF NOT EXISTS alarms_incident_idx ON alarms (incident_id)
    WHERE incident_id IS NOT NULL;

-- Work orders are assigned to an engineer's account (the crew stays free text: who goes
-- with them); "my orders" reads them by assignee.
ALTER TABLE work_orders ADD COLUMN IF NOT EXISTS assignee text REFERENCES users (username);
CREATE INDEX IF NOT EXISTS work_orders_assignee_idx ON work_orders (assignee, opened_at DESC)
    WHERE assignee IS NOT NULL;
