-- Login locks (issue 19). One row per lock, target and login (a drain with lock_accounts
-- locks several accounts of one target under its own id): who locked which login, why,
-- until when, and whether it has ended. A lock's expiry is a scheduled action in the queue.
CREATE TABLE locks (
    lock_id    TEXT NOT NULL,
    target     TEXT NOT NULL,
    login      TEXT NOT NULL,
    since      TEXT NOT NULL,
    -- NULL: until lifted (a lock given `permanent: true`).
    until      TEXT,
    reason     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    -- active or ended.
    state      TEXT NOT NULL,
    ended_at   TEXT,
    ended_by   TEXT,
    PRIMARY KEY (lock_id, target, login)
);
CREATE INDEX locks_login ON locks (target, login, state);

-- While a login is locked: its gate as it was before the first of its locks (JSON), which the
-- last lock to end restores. A row with no active lock left is a restore still to be done.
CREATE TABLE login_gates (
    target     TEXT NOT NULL,
    login      TEXT NOT NULL,
    before     TEXT NOT NULL,
    since      TEXT NOT NULL,
    PRIMARY KEY (target, login)
);
