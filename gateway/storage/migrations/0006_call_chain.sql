-- The owner call chain (gateway/core/call_chain.py, gateway/service/notifier.py): a notice
-- walks voice call -> SMS -> emergency contact -> control room, and every attempt is a row
-- here, so the API shows each step's delivery state and a restarted gateway carries on
-- where the last one stopped (all of the chain's state is in the database).

-- The household's optional emergency contact, called when the owner does not answer.
ALTER TABLE households ADD COLUMN emergency_contact_name text;
ALTER TABLE households ADD COLUMN emergency_contact_phone text;

-- A notice's chain: the steps it walks (fixed when it starts), the current step and the
-- attempts made there, whether someone was reached, and who confirmed it.
--   pending   the chain is running (next_attempt_at: the next step, retry or lease end)
--   sent      the chain ran out and reached someone (a text sent; no control-room step)
--   failed    the chain ran out and reached nobody
--   confirmed someone confirmed (the owner answered, or an operator in the API)
--   escalated nobody confirmed in time: the control room was flagged on the work order
ALTER TABLE notifications DROP CONSTRAINT notifications_state_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_state_check
    CHECK (state IN ('pending', 'sent', 'failed', 'confirmed', 'escalated'));
ALTER TABLE notifications ADD COLUMN chain text[];
ALTER TABLE notifications ADD COLUMN step integer;
ALTER TABLE notifications ADD COLUMN step_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE notifications ADD COLUMN chain_started_at timestamptz;
ALTER TABLE notifications ADD COLUMN reached boolean NOT NULL DEFAULT false;
ALTER TABLE notifications ADD COLUMN confirmed_at timestamptz;
ALTER TABLE notifications ADD COLUMN confirmed_by text;
ALTER TABLE notifications ADD COLUMN finished_at timestamptz;

-- One row per attempt at a step. `calling` / `sending` is written and committed before the
-- gateway is asked, so an attempt cut short by a crash is found and marked `lost` (counted
-- as a failed attempt, then retried or moved past).
CREATE TABLE notification_attempts (
    id              bigserial PRIMARY KEY,
    notification_id bigint NOT NULL REFERENCES notifications (id),
    step            integer NOT NULL,
    step_name       text NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('voice', 'sms', 'control_room')),
    role            text CHECK (role IN ('owner', 'emergency')),
    recipient       text,
    attempt         integer NOT NULL CHECK (attempt >= 1),
    call_id         text NOT NULL UNIQUE,
    state           text NOT NULL CHECK (state IN ('calling', 'sending', 'answered',
                        'no_answer', 'sent', 'failed', 'lost', 'flagged')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    detail          text
);
CREATE INDEX notification_attempts_notice_idx ON notification_attempts (notification_id, id);
CREATE INDEX notification_attempts_open_idx ON notification_attempts (notification_id)
    WHERE state IN ('calling', 'sending');

-- The control room's flag on a work order: nobody confirmed the notice in time.
ALTER TABLE work_orders ADD COLUMN flagged_at timestamptz;
ALTER TABLE work_orders ADD COLUMN flag text;
