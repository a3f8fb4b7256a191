-- Audit checkpoints: periodic snapshots of the trail's head (seq and hash), each MACed and
-- chained to the previous one, so that removing the newest records is detectable
-- (see src/audit/checkpoint.rs).
CREATE TABLE audit_checkpoints (
    idx        BIGINT PRIMARY KEY,
    at         TEXT NOT NULL,
    head_seq   BIGINT NOT NULL,
    head_hash  TEXT NOT NULL,
    prev_mac   TEXT NOT NULL,
    alg        TEXT NOT NULL,
    mac        TEXT NOT NULL
);
