-- The durable work queue. An action is accepted only once its row and its steps are stored
-- (in the same transaction as its audit records), and it is then carried out from here, so a
-- crash or restart loses nothing. A step is one action on one target; replicas claim steps
-- with expiring leases.
CREATE TABLE actions (
    action_id    TEXT PRIMARY KEY,
    created_at   TEXT NOT NULL,
    actor        TEXT NOT NULL,
    -- The plan and what each step does, as JSON.
    plan         TEXT NOT NULL,
    work         TEXT NOT NULL,
    -- Failing targets are retried until then.
    deadline     TEXT NOT NULL,
    -- running, completed or incomplete.
    status       TEXT NOT NULL,
    finished_at  TEXT,
    -- The finished report, as JSON.
    report       TEXT
);

CREATE TABLE action_steps (
    action_id        TEXT NOT NULL,
    target           TEXT NOT NULL,
    -- Position in the plan, so reports keep the plan's order.
    position         BIGINT NOT NULL,
    -- pending or done.
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    next_attempt_at  TEXT NOT NULL,
    lease_owner      TEXT,
    lease_until      TEXT,
    last_error       TEXT,
    -- Sessions an attempt recorded right before signalling them (JSON array): a crash
    -- between the signal and the audit record cannot lose them.
    journal          TEXT,
    -- The target's finished report, as JSON.
    report           TEXT,
    PRIMARY KEY (action_id, target)
);
CREATE INDEX action_steps_due ON action_steps (state, next_attempt_at);
