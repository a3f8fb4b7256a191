-- Session policies (issue 20). One row per policy (configured, or a target's sweep): when it
-- is next due, which replica's claim moved that (so two replicas run one evaluation, not two),
-- its last evaluation, how many runs in a row ended sessions, and whether it paused itself.
CREATE TABLE policy_state (
    name           TEXT PRIMARY KEY,
    next_due       TEXT NOT NULL,
    last_at        TEXT,
    -- fired, observed, no_match, below_threshold, outside_window, paused, error
    last_outcome   TEXT,
    last_action    TEXT,
    last_matched   BIGINT NOT NULL DEFAULT 0,
    last_ended     BIGINT NOT NULL DEFAULT 0,
    last_error     TEXT,
    streak         BIGINT NOT NULL DEFAULT 0,
    paused_at      TEXT,
    paused_reason  TEXT
);

-- Alertmanager notifications already acted on: one row per firing alert (the hash of its
-- groupKey, fingerprint and startsAt), so a re-delivery runs its policy no second time.
CREATE TABLE alert_firings (
    firing_key     TEXT PRIMARY KEY,
    received_at    TEXT NOT NULL,
    action_id      TEXT
);
CREATE INDEX alert_firings_received ON alert_firings (received_at);
