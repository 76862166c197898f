-- Sessions of the operator API (dashboard_api): every access token carries the user's
-- token_version (JWT claim "ver") and is refused once it differs. The trigger bumps it
-- whenever the password, the role or the disabled flag changes, by whatever route (the
-- API, `gas-safety user`, an operator's SQL): a password change, a demotion, disabling
-- and re-enabling each revoke every token issued before.

ALTER TABLE users ADD COLUMN IF NOT EXISTS token_version integer NOT NULL DEFAULT 1
    CHECK (token_version >= 1);

CREATE OR REPLACE FUNCTION users_bump_token_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.password_hash IS DISTINCT FROM OLD.password_hash
       OR NEW.role IS DISTINCT FROM OLD.role
       OR NEW.disabled IS DISTINCT FROM OLD.disabled THEN
        NEW.token_version := greatest(NEW.token_version, OLD.token_version + 1);
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS users_token_version ON users;
CREATE TRIGGER users_token_version BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_bump_token_version();
