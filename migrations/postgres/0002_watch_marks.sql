-- The last value a watcher saw per watched thing (e.g. a Vault static role's
-- last_vault_rotation), so a restart neither misses nor repeats a rotation.
CREATE TABLE watch_marks (
    key      TEXT PRIMARY KEY,
    value    TEXT NOT NULL,
    seen_at  TEXT NOT NULL
);
