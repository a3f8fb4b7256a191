-- Announced actions (issue 21): when each scheduled action is announced and acts, whether
-- the announcement went out (and as which outbox notifications), or was called off. The
-- announcer claims a due row by moving it from pending to made, so replicas announce once.
CREATE TABLE announcements (
    action_id      TEXT PRIMARY KEY,
    announce_at    TEXT NOT NULL,
    act_at         TEXT NOT NULL,
    -- pending, made or cancelled.
    state          TEXT NOT NULL,
    made_at        TEXT,
    -- The outbox notifications it went out as (JSON array of ids).
    notifications  TEXT
);
CREATE INDEX announcements_due ON announcements (state, announce_at);
