-- Background verifications of the audit trail started through the operator API: one row
-- each, so any replica can answer for a verification another one runs. A running row's
-- heartbeat is refreshed by the replica running it; a stale one means that replica died.
CREATE TABLE audit_verifications (
    id            TEXT PRIMARY KEY,
    -- running, ok, broken or failed (abandoned is read from a stale heartbeat).
    status        TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    -- The lease owner name of the replica running it.
    replica       TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL,
    finished_at   TEXT,
    -- The VerifyReport as JSON, once ok or broken.
    report        TEXT,
    -- Why it failed (the store could not be read), once failed.
    error         TEXT
);
CREATE INDEX audit_verifications_started_at ON audit_verifications (started_at);
