-- A drain with lock_accounts (issue 19, MySQL/MariaDB) locks several accounts on one target
-- under its own id: a lock row is one login of one lock on one target.
CREATE TABLE locks_new (
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
INSERT INTO locks_new SELECT lock_id, target, login, since, until, reason, actor, state,
    ended_at, ended_by FROM locks;
DROP TABLE locks;
ALTER TABLE locks_new RENAME TO locks;
CREATE INDEX locks_login ON locks (target, login, state);
