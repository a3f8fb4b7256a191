//! PostgreSQL's SQL: the set-based select-and-signal statements for terminations and sweeps,
//! and decoding their rows. Used only by `terminate::postgres`.

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::terminate::pg_roles::Known;
use crate::terminate::{Scope, Session, SkipReason, SweepReason, TerminateRequest};

/// The columns [`decode_session`] reads, from `pg_stat_activity a` joined to `pg_roles r`
/// (a macro because sqlx wants static SQL text).
macro_rules! session_columns {
    () => {
        "a.pid, a.usesysid::int8 AS role_oid, r.rolname::text AS login, \
         a.datname::text AS database, a.application_name::text AS application_name, \
         host(a.client_addr) AS client_addr, a.backend_start, a.state::text AS state"
    };
}

/// Selects the in-scope sessions of the logins named in `$6` and, unless it is a dry run,
/// signals every eligible one, all in one round trip. A session is in scope when its role
/// has one of the names, or when its role is gone and its oid is one sever remembered for
/// one of them (`$1`): a remembered oid that now names another role is never acted on.
/// Ineligible rows come back with a `skip` reason instead of being filtered out, so the
/// report can say why they survived. sever's own logins are the connection's and those named
/// in `$7` (the store's); a session whose role is gone is spared when its oid was learned as
/// sever's own (`$8`), a superuser's (`$9`) or a protected login's (`$10`). `$5`, when set, limits it to the pids a dry run found
/// and the journal recorded. Matching names here, not oids looked up first, saves the step
/// a round trip to the target before anything is signalled.
///
/// The one-argument `pg_terminate_backend` is used on purpose: it does not wait (waiting
/// serialises the backends, ~100 ms each) and it exists on every supported version; the
/// verification poll afterwards does the waiting for all of them at once.
pub(super) const TERMINATE_SQL: &str = concat!(
    r#"
WITH me AS (SELECT usesysid FROM pg_stat_activity WHERE pid = pg_backend_pid()),
m AS (
    SELECT "#,
    session_columns!(),
    r#",
           CASE
               WHEN a.pid = pg_backend_pid() OR a.usesysid = (SELECT usesysid FROM me)
                    OR r.rolname = ANY($7::text[])
                    OR (r.oid IS NULL AND a.usesysid::int8 = ANY($8::int8[])) THEN 'own_login'
               WHEN r.rolsuper OR (r.oid IS NULL AND a.usesysid::int8 = ANY($9::int8[]))
                   THEN 'superuser'
               WHEN r.rolname = ANY($2::text[])
                    OR (r.oid IS NULL AND a.usesysid::int8 = ANY($10::int8[])) THEN 'protected'
               WHEN $3::timestamptz IS NOT NULL AND a.backend_start IS NULL THEN 'start_unknown'
           END AS skip
    FROM pg_stat_activity a
    LEFT JOIN pg_roles r ON r.oid = a.usesysid
    WHERE a.backend_type = 'client backend'
      AND (r.rolname = ANY($6::text[])
           OR (r.oid IS NULL AND a.usesysid::int8 = ANY($1::int8[])))
      AND ($3::timestamptz IS NULL OR a.backend_start IS NULL OR a.backend_start < $3::timestamptz)
      AND ($5::int4[] IS NULL OR a.pid = ANY($5::int4[]))
)
SELECT m.*,
       CASE WHEN m.skip IS NULL AND NOT $4::bool THEN pg_terminate_backend(m.pid) ELSE false END
           AS signalled
FROM m
ORDER BY m.backend_start NULLS FIRST, m.pid
"#
);

/// Selects the client sessions whose role no longer exists (after `DROP ROLE` the session
/// keeps its `usesysid` but the role row is gone, so it is an orphan whatever its former
/// name), and those of roles matching the `LIKE` pattern whose `VALID UNTIL` has passed
/// (PostgreSQL checks it only at login, so such sessions outlive the expiry). Sessions of
/// valid roles, including `VALID UNTIL 'infinity'` or no expiry, are never selected. Skips
/// and signalling work as in [`TERMINATE_SQL`], with the same learned oids (`$6` to `$9`:
/// own, superuser, protected; store login names). An orphan is ended only when its oid was
/// learned as sweepable (`$3`): one never learned may have been anything, a protected login
/// or a superuser created and dropped between two learnings, so it is spared as
/// `login_unknown`. A backend without a role yet (`usesysid` 0 or null, e.g. still
/// authenticating) is never an orphan.
pub(super) const SWEEP_SQL: &str = concat!(
    r#"
WITH me AS (SELECT usesysid FROM pg_stat_activity WHERE pid = pg_backend_pid()),
m AS (
    SELECT "#,
    session_columns!(),
    r#",
           CASE WHEN r.oid IS NULL THEN 'login_dropped' ELSE 'login_expired' END AS swept,
           CASE
               WHEN a.pid = pg_backend_pid() OR a.usesysid = (SELECT usesysid FROM me)
                    OR r.rolname = ANY($6::text[])
                    OR (r.oid IS NULL AND a.usesysid::int8 = ANY($7::int8[])) THEN 'own_login'
               WHEN r.rolsuper OR (r.oid IS NULL AND a.usesysid::int8 = ANY($8::int8[]))
                   THEN 'superuser'
               WHEN r.rolname = ANY($2::text[])
                    OR (r.oid IS NULL AND a.usesysid::int8 = ANY($9::int8[])) THEN 'protected'
               WHEN r.oid IS NULL AND NOT a.usesysid::int8 = ANY($3::int8[]) THEN 'login_unknown'
           END AS skip
    FROM pg_stat_activity a
    LEFT JOIN pg_roles r ON r.oid = a.usesysid
    WHERE a.backend_type = 'client backend'
      AND a.usesysid IS NOT NULL
      AND a.usesysid <> 0::oid
      AND (r.oid IS NULL
           OR (r.rolname LIKE $1::text
               AND r.rolvaliduntil IS NOT NULL
               AND r.rolvaliduntil < now()))
      AND ($5::int4[] IS NULL OR a.pid = ANY($5::int4[]))
)
SELECT m.*,
       CASE WHEN m.skip IS NULL AND NOT $4::bool THEN pg_terminate_backend(m.pid) ELSE false END
           AS signalled
FROM m
ORDER BY m.backend_start NULLS FIRST, m.pid
"#
);

/// Which of the given (pid, backend_start) pairs are still connected. Matching on the start
/// time too keeps a recycled pid from counting as a survivor.
pub(super) const REMAINING_SQL: &str = r#"
SELECT a.pid
FROM pg_stat_activity a
JOIN unnest($1::int4[], $2::timestamptz[]) AS t(pid, started) ON a.pid = t.pid
WHERE a.backend_start IS NOT DISTINCT FROM t.started
"#;

/// Role oids for the given names, and whatever role currently holds the remembered oids.
pub(super) const ROLES_SQL: &str = "SELECT oid::int8 AS oid, rolname::text AS rolname FROM pg_roles \
                         WHERE rolname = ANY($1::text[]) OR oid::int8 = ANY($2::int8[])";

/// A set-based select-and-signal statement and its arguments.
pub(super) enum Statement<'a> {
    /// [`TERMINATE_SQL`] for a request, with the oids remembered for its logins.
    Terminate {
        remembered_oids: &'a [i64],
        request: &'a TerminateRequest,
        known: &'a Known,
    },
    /// [`SWEEP_SQL`].
    Sweep {
        pattern: &'a str,
        protected: &'a [String],
        known: &'a Known,
    },
}

impl Statement<'_> {
    /// Runs the statement: only listing when `dry_run`, limited to `only` pids when set.
    pub(super) async fn run(
        &self,
        conn: &mut PgConnection,
        dry_run: bool,
        only: Option<Vec<i32>>,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        match self {
            Self::Terminate {
                remembered_oids,
                request,
                known,
            } => {
                let cutoff = match request.scope {
                    Scope::All => None,
                    Scope::Before(at) => Some(at),
                };
                let protected: Vec<&str> = request.protected.iter().map(String::as_str).collect();
                sqlx::query(TERMINATE_SQL)
                    .bind(remembered_oids)
                    .bind(&protected)
                    .bind(cutoff)
                    .bind(dry_run)
                    .bind(only)
                    .bind(&request.logins)
                    .bind(&known.own_names)
                    .bind(&known.own)
                    .bind(&known.superuser)
                    .bind(&known.protected)
                    .fetch_all(conn)
                    .await
            }
            Self::Sweep {
                pattern,
                protected,
                known,
            } => {
                sqlx::query(SWEEP_SQL)
                    .bind(pattern)
                    .bind(protected)
                    .bind(&known.sweepable)
                    .bind(dry_run)
                    .bind(only)
                    .bind(&known.own_names)
                    .bind(&known.own)
                    .bind(&known.superuser)
                    .bind(&known.protected)
                    .fetch_all(conn)
                    .await
            }
        }
    }
}

pub(super) fn decode_session(
    row: &PgRow,
    names: &BTreeMap<i64, String>,
) -> Result<Session, sqlx::Error> {
    let oid: i64 = row.try_get("role_oid")?;
    let login: Option<String> = row.try_get("login")?;
    Ok(Session {
        pid: i64::from(row.try_get::<i32, _>("pid")?),
        // A dropped role has no name in pg_roles any more; use the one sever remembered.
        login: login.or_else(|| names.get(&oid).cloned()),
        login_id: Some(oid.to_string()),
        database: row.try_get("database")?,
        application_name: row.try_get("application_name")?,
        client_addr: row.try_get("client_addr")?,
        backend_start: row.try_get("backend_start")?,
        state: row.try_get("state")?,
    })
}

pub(super) fn skip_reason(text: &str) -> SkipReason {
    match text {
        "own_login" => SkipReason::OwnLogin,
        "superuser" => SkipReason::Superuser,
        "protected" => SkipReason::Protected,
        "login_unknown" => SkipReason::LoginUnknown,
        _ => SkipReason::StartUnknown,
    }
}

pub(super) fn sweep_reason(text: &str) -> SweepReason {
    match text {
        "login_dropped" => SweepReason::LoginDropped,
        _ => SweepReason::LoginExpired,
    }
}

/// Signals the given (pid, backend_start) pairs that are still those client sessions:
/// `pg_cancel_backend` when `$3`, else `pg_terminate_backend`, one row per pair in the
/// order given (`sent` null when the pair names no session any more). Matching on the start
/// time keeps a recycled pid from being signalled.
pub(super) const SIGNAL_SQL: &str = r#"
SELECT t.ord,
       CASE WHEN a.pid IS NULL THEN NULL
            WHEN $3::bool THEN pg_cancel_backend(a.pid)
            ELSE pg_terminate_backend(a.pid) END AS sent
FROM unnest($1::int4[], $2::timestamptz[]) WITH ORDINALITY AS t(pid, started, ord)
LEFT JOIN pg_stat_activity a
       ON a.pid = t.pid AND a.backend_start IS NOT DISTINCT FROM t.started
      AND a.backend_type = 'client backend'
ORDER BY t.ord
"#;
