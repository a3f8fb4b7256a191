-- Database drains (issue 19). One row per drain: which database of which target is kept
-- clear, why, until when, and whether it has ended. Its re-open is a scheduled action.
CREATE TABLE drains (
    drain_id   TEXT NOT NULL,
    target     TEXT NOT NULL,
    dbname     TEXT NOT NULL,
    since      TEXT NOT NULL,
    -- NULL: until lifted (a drain given `permanent: true`).
    until      TEXT,
    reason     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    -- active or ended.
    state      TEXT NOT NULL,
    ended_at   TEXT,
    ended_by   TEXT,
    PRIMARY KEY (drain_id, target)
);
CREATE INDEX drains_database ON drains (target, dbname, state);

-- While a database is drained: its gate as it was before the first of its drains (JSON),
-- which the last drain to end restores. A row with no active drain left is a re-open still
-- to be done.
CREATE TABLE database_gates (
    target     TEXT NOT NULL,
    dbname     TEXT NOT NULL,
    before     TEXT NOT NULL,
    since      TEXT NOT NULL,
    PRIMARY KEY (target, dbname)
);
