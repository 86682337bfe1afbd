-- certkeeper schema version 2: lifecycle automation (renewal state, scheduler deadlines,
-- expiry events, event sinks, account settings).

-- Per-certificate policy overrides; NULL means "use the configured default".
ALTER TABLE certificates ADD COLUMN renew_before INTEGER;            -- seconds
ALTER TABLE certificates ADD COLUMN days_before_expiry INTEGER;
-- Per-certificate maintenance window (cron text, length in seconds, IANA zone or NULL = UTC);
-- NULL uses the configured renewal.window.
ALTER TABLE certificates ADD COLUMN maintenance_window TEXT;
ALTER TABLE certificates ADD COLUMN maintenance_window_seconds INTEGER;
ALTER TABLE certificates ADD COLUMN maintenance_window_tz TEXT;

-- ACM's renewal summary: NULL until the first renewal attempt, then
-- 'pending-auto-renewal' | 'pending-validation' | 'success' | 'failed', with a reason.
ALTER TABLE certificates ADD COLUMN renewal_status TEXT;
ALTER TABLE certificates ADD COLUMN renewal_reason TEXT;
ALTER TABLE certificates ADD COLUMN renewal_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE certificates ADD COLUMN renewal_failed_at INTEGER;
-- The days-left milestone the last "Renewal Action Required" event was raised for.
ALTER TABLE certificates ADD COLUMN action_required_days INTEGER;

-- When the scheduler next has something to do for this certificate (renew or retry), NULL when
-- nothing (imported, revoked, ...). While a renewal runs it holds a lease: now + lease length,
-- so a crash mid-renewal retries after the lease instead of never.
ALTER TABLE certificates ADD COLUMN next_action_at INTEGER;
-- The UTC day (Unix day number) of the last "Approaching Expiration" event, so a restart on
-- the same day does not send it twice.
ALTER TABLE certificates ADD COLUMN expiry_event_day INTEGER;

CREATE INDEX certificates_next_action ON certificates (next_action_at) WHERE next_action_at IS NOT NULL;

-- Account-level settings changed through the API (e.g. days-before-expiry).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Each event sink's delivery cursor: the last event seq it acknowledged.
CREATE TABLE sink_cursors (
    sink TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
);

-- A disabled CA issues nothing (requests, signing and renewals fail) until enabled again.
ALTER TABLE cas ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
