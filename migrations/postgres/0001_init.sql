-- Audit trail: one row per record, hash-chained in seq order (see src/audit/chain.rs).
CREATE TABLE audit_records (
    seq        BIGINT PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    at         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action_id  TEXT,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_records_action_id ON audit_records (action_id);

-- Standard Webhooks de-duplication: each webhook-id is processed once, across restarts.
CREATE TABLE webhook_deliveries (
    webhook_id  TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    action_id   TEXT NOT NULL
);
CREATE INDEX webhook_deliveries_received_at ON webhook_deliveries (received_at);

-- Engine-specific identities of mapped logins (PostgreSQL role oids), remembered so a
-- dropped login's sessions can still be found.
CREATE TABLE login_identities (
    target    TEXT NOT NULL,
    login     TEXT NOT NULL,
    identity  TEXT NOT NULL,
    seen_at   TEXT NOT NULL,
    PRIMARY KEY (target, login, identity)
);

-- One row that readiness checks write to prove the store accepts writes.
CREATE TABLE store_probe (
    id  BIGINT PRIMARY KEY,
    at  TEXT NOT NULL
);
