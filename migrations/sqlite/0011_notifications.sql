-- Outbound notifications: a durable outbox, one row per message to one channel. A notice is
-- queued here (with the audit records it goes with, where they are written together) and a
-- delivery worker on any replica claims due rows with an expiring lease, so a row is sent by
-- one replica at a time and retried with backoff until delivered or given up. Notices of one
-- kind that arrive while a row of that kind still waits are folded into it (`folded` counts
-- them), so a burst is one message with counts.
CREATE TABLE notifications (
    -- The notification's own id: its `webhook-id` on every attempt.
    id               TEXT PRIMARY KEY,
    channel          TEXT NOT NULL,
    -- The event name (`action.completed`, …).
    event            TEXT NOT NULL,
    -- What folds together: the event, or for PagerDuty incidents the event and dedup key.
    coalesce_key     TEXT NOT NULL,
    -- PagerDuty's dedup key, for messages that trigger or resolve an incident.
    subject          TEXT,
    created_at       TEXT NOT NULL,
    -- When the next attempt is due.
    due_at           TEXT NOT NULL,
    -- pending, delivered, skipped (nothing to send after all) or given_up.
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    -- Notices this message stands for.
    folded           BIGINT NOT NULL DEFAULT 1,
    -- What to say, as JSON (escaped per channel when rendered, at each attempt).
    content          TEXT NOT NULL,
    lease_owner      TEXT,
    lease_until      TEXT,
    last_attempt_at  TEXT,
    last_error       TEXT,
    finished_at      TEXT
);
CREATE INDEX notifications_due ON notifications (channel, state, due_at);
CREATE INDEX notifications_fold ON notifications (channel, coalesce_key, due_at);
CREATE INDEX notifications_rate ON notifications (channel, last_attempt_at);
CREATE INDEX notifications_subject ON notifications (channel, subject);

-- PagerDuty incidents a channel triggered and has not resolved: only these are resolved.
CREATE TABLE notification_incidents (
    channel          TEXT NOT NULL,
    dedup_key        TEXT NOT NULL,
    triggered_at     TEXT NOT NULL,
    PRIMARY KEY (channel, dedup_key)
);

-- Notices dropped because a channel's outbox was full, per channel and event, until the
-- worker audits them (one `notification.dropped` record per channel and interval).
CREATE TABLE notification_drops (
    channel          TEXT NOT NULL,
    event            TEXT NOT NULL,
    dropped          BIGINT NOT NULL,
    since            TEXT NOT NULL,
    PRIMARY KEY (channel, event)
);
