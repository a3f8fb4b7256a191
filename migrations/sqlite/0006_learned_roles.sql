-- What sever learned each PostgreSQL role to be (its own login, a superuser, protected, or
-- sweepable: matching the sweep pattern), by oid. After DROP ROLE only the oid is left on
-- the role's sessions, so a sweep ends an orphaned session only when its oid was learned as
-- sweepable, and spares one learned as anything else.
CREATE TABLE learned_roles (
    target    TEXT NOT NULL,
    identity  TEXT NOT NULL,
    login     TEXT NOT NULL,
    class     TEXT NOT NULL,
    seen_at   TEXT NOT NULL,
    PRIMARY KEY (target, identity, login, class)
);
