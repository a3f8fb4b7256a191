//! PostgreSQL: sessions from `pg_stat_activity`, matched on role oid, ended with
//! `pg_terminate_backend` in one set-based statement, then verified gone.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Postgres as Pg, Row};

use super::pg_roles::{self, Known};
use super::{
    Engine, EngineError, Failed, Journal, Learn, Scope, Session, SessionFilter, SkipReason,
    Skipped, SweepReason, SweepRequest, TerminateOutcome, TerminateRequest, record_intent,
    same_session, sqlx_error as query_error,
};
use crate::config::{TargetConfig, TerminationConfig};
use crate::store::{APPLICATION_NAME, Store};

/// SQLSTATE insufficient_privilege: `pg_terminate_backend` raises it instead of returning false.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Rows of a select-and-signal statement, whether signalling was refused (42501), and the
/// sessions journaled before it ran.
type Signalled = (Vec<PgRow>, bool, Vec<Session>);

/// One PostgreSQL target.
#[derive(Debug)]
pub struct Postgres {
    id: String,
    pool: PgPool,
    store: Store,
}

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
const TERMINATE_SQL: &str = concat!(
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
const SWEEP_SQL: &str = concat!(
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

const SESSIONS_SQL: &str = concat!(
    "SELECT ",
    session_columns!(),
    r#"
FROM pg_stat_activity a
LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.backend_type = 'client backend'
  AND ($1::int8[] IS NULL OR a.usesysid::int8 = ANY($1::int8[]))
  AND ($2::text IS NULL OR a.datname = $2::text)
  AND ($3::text IS NULL OR a.application_name = $3::text)
  AND ($4::text IS NULL OR host(a.client_addr) = $4::text)
  AND ($5::timestamptz IS NULL OR a.backend_start < $5::timestamptz)
  AND ($6::timestamptz IS NULL OR a.backend_start >= $6::timestamptz)
ORDER BY a.backend_start NULLS FIRST, a.pid
"#
);

/// Which of the given (pid, backend_start) pairs are still connected. Matching on the start
/// time too keeps a recycled pid from counting as a survivor.
const REMAINING_SQL: &str = r#"
SELECT a.pid
FROM pg_stat_activity a
JOIN unnest($1::int4[], $2::timestamptz[]) AS t(pid, started) ON a.pid = t.pid
WHERE a.backend_start IS NOT DISTINCT FROM t.started
"#;

/// Role oids for the given names, and whatever role currently holds the remembered oids.
const ROLES_SQL: &str = "SELECT oid::int8 AS oid, rolname::text AS rolname FROM pg_roles \
                         WHERE rolname = ANY($1::text[]) OR oid::int8 = ANY($2::int8[])";

impl Postgres {
    /// A target whose pool connects lazily with sever's admin login at `url`.
    pub fn new(
        id: &str,
        url: &SecretString,
        target: &TargetConfig,
        termination: &TerminationConfig,
        store: Store,
    ) -> Result<Self, EngineError> {
        let statement_timeout = format!("{}ms", termination.timeout.as_millis());
        let options = PgConnectOptions::from_str(url.expose_secret())
            // The parse error can quote the URL; say only that it is unusable.
            .map_err(|_| EngineError::Config("not a valid PostgreSQL URL".into()))?
            .options([("statement_timeout", statement_timeout.as_str())]);
        // Makes sever's own sessions recognisable in pg_stat_activity, unless the URL (or
        // PGAPPNAME) names the application already.
        let options = match options.get_application_name() {
            Some(_) => options,
            None => options.application_name(APPLICATION_NAME),
        };
        let pool = PgPoolOptions::new()
            .max_connections(target.pool_size)
            // Keep one connection warm so a rotation does not pay for a TLS and auth
            // handshake; sqlx opens it in the background, so a down target never blocks.
            .min_connections(1)
            .acquire_timeout(target.connect_timeout)
            .idle_timeout(Duration::from_secs(300))
            // A step runs the same prepared statements back to back on one connection (list,
            // signal, verify polls), but rotations are rare, so a connection never reaches
            // the five executions after which PostgreSQL stops planning each one anew.
            // Planning these statements over the pg_stat_activity view cost more CPU than
            // running them; a generic plan is made once per connection and is the same plan.
            // (plan_cache_mode exists from PostgreSQL 12 on; older servers keep planning.)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    if conn.server_version_num().is_some_and(|v| v >= 120_000) {
                        sqlx::query("SET plan_cache_mode = force_generic_plan")
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Self {
            id: id.to_owned(),
            pool,
            store,
        })
    }

    /// The role oids sever remembers for `logins` on this target, as (login, oid).
    async fn remembered(&self, logins: &[String]) -> Result<Vec<(String, i64)>, EngineError> {
        let remembered = self
            .store
            .identities(&self.id, logins)
            .await
            .map_err(|e| EngineError::Query(format!("state store: {e}")))?;
        Ok(remembered
            .into_iter()
            .filter_map(|(login, oid)| oid.parse().ok().map(|oid| (login, oid)))
            .collect())
    }

    /// Remembers the role oids of `sessions` of `logins` not yet in `remembered`.
    async fn remember_from(
        &self,
        sessions: impl IntoIterator<Item = &Session>,
        logins: &[String],
        remembered: &[(String, i64)],
    ) -> Result<(), EngineError> {
        let mut seen: Vec<(String, String)> = Vec::new();
        for s in sessions {
            let (Some(login), Some(oid)) = (&s.login, &s.login_id) else {
                continue;
            };
            let known = remembered
                .iter()
                .any(|(l, o)| l == login && o.to_string() == *oid);
            let pair = (login.clone(), oid.clone());
            if logins.contains(login) && !known && !seen.contains(&pair) {
                seen.push(pair);
            }
        }
        self.store
            .remember_identities(&self.id, &seen, Utc::now())
            .await
            .map_err(|e| EngineError::Query(format!("state store: {e}")))
    }

    /// Resolves login names to role oids, including remembered oids of dropped roles, and
    /// remembers what it found. Returns oid → login name.
    async fn role_oids(
        &self,
        conn: &mut PgConnection,
        logins: &[String],
    ) -> Result<BTreeMap<i64, String>, EngineError> {
        let remembered = self.remembered(logins).await?;
        let remembered_oids: Vec<i64> = remembered.iter().map(|(_, oid)| *oid).collect();
        let rows = sqlx::query(ROLES_SQL)
            .bind(logins)
            .bind(&remembered_oids)
            .fetch_all(conn)
            .await
            .map_err(query_error)?;
        let current: BTreeMap<i64, String> = rows
            .iter()
            .map(|row| Ok((row.try_get("oid")?, row.try_get("rolname")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_error)?;

        let mut oids = BTreeMap::new();
        let mut seen = Vec::new();
        for (oid, name) in &current {
            if logins.contains(name) {
                oids.insert(*oid, name.clone());
                // Only new identities are written: a store write per rotation would put a
                // commit on every rotation's path for nothing.
                if !remembered.contains(&(name.clone(), *oid)) {
                    seen.push((name.clone(), oid.to_string()));
                }
            }
        }
        for (login, oid) in remembered {
            match current.get(&oid) {
                // The role is gone but its sessions may live on under its oid.
                None => {
                    oids.insert(oid, login);
                }
                Some(name) if *name == login => {}
                // The oid now belongs to another role: never act on it.
                Some(other) => tracing::warn!(
                    target_id = %self.id, %login, oid, now = %other,
                    "remembered role oid now belongs to a different role; ignoring it"
                ),
            }
        }
        self.store
            .remember_identities(&self.id, &seen, Utc::now())
            .await
            .map_err(|e| EngineError::Query(format!("state store: {e}")))?;
        Ok(oids)
    }

    async fn still_connected(
        conn: &mut PgConnection,
        sessions: &[Session],
    ) -> Result<Vec<Session>, EngineError> {
        let pids: Vec<i32> = sessions.iter().map(|s| s.pid as i32).collect();
        let starts: Vec<Option<DateTime<Utc>>> = sessions.iter().map(|s| s.backend_start).collect();
        let rows = sqlx::query(REMAINING_SQL)
            .bind(&pids)
            .bind(&starts)
            .fetch_all(conn)
            .await
            .map_err(query_error)?;
        let alive: BTreeSet<i64> = rows
            .iter()
            .map(|row| row.try_get::<i32, _>("pid").map(i64::from))
            .collect::<Result<_, _>>()
            .map_err(query_error)?;
        Ok(sessions
            .iter()
            .filter(|s| alive.contains(&s.pid))
            .cloned()
            .collect())
    }

    /// Polls until every terminated session is gone or `timeout` passes; returns survivors.
    async fn verify_gone(
        conn: &mut PgConnection,
        terminated: &[Session],
        timeout: Duration,
    ) -> Result<Vec<Session>, EngineError> {
        let mut poll = super::Poll::new(timeout);
        let mut remaining = terminated.to_vec();
        while !remaining.is_empty() {
            remaining = Self::still_connected(&mut *conn, &remaining).await?;
            if remaining.is_empty() || !poll.wait().await {
                break;
            }
        }
        Ok(remaining)
    }

    /// Fallback when the set-based statement hit a permission error: one statement per
    /// session, so one refusal does not stop the rest.
    async fn terminate_one_by_one(
        conn: &mut PgConnection,
        candidates: Vec<Session>,
        outcome: &mut TerminateOutcome,
    ) -> Result<(), EngineError> {
        for session in candidates {
            let signalled = sqlx::query_scalar::<_, bool>("SELECT pg_terminate_backend($1)")
                .bind(session.pid as i32)
                .fetch_one(&mut *conn)
                .await;
            match signalled {
                Ok(true) => outcome.terminated.push(session),
                Ok(false) => outcome.skipped.push(Skipped {
                    session,
                    reason: SkipReason::AlreadyGone,
                }),
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
                    outcome.failed.push(Failed {
                        session,
                        error: format!(
                            "{} (grant pg_signal_backend to sever's login; superusers are never signalled)",
                            db.message()
                        ),
                    })
                }
                Err(e) => outcome.failed.push(Failed {
                    session,
                    error: e.to_string(),
                }),
            }
        }
        Ok(())
    }

    /// Runs a set-based select-and-signal statement on `conn`. With a journal, a dry run
    /// comes first and its eligible sessions are recorded before the signalling statement,
    /// limited to the pids found, runs: one more round trip buys a record of every session
    /// about to be signalled. If signalling is refused (SQLSTATE 42501), runs it again as a
    /// dry run to get the candidates, and says so: they are then signalled one by one by
    /// [`Self::settle`]. Also returns the sessions journaled.
    async fn select_and_signal(
        &self,
        conn: &mut PgConnection,
        statement: &Statement<'_>,
        dry_run: bool,
        journal: Option<&dyn Journal>,
        names: &BTreeMap<i64, String>,
    ) -> Result<Signalled, EngineError> {
        let mut journaled = Vec::new();
        let only = match journal {
            Some(journal) if !dry_run => {
                let rows = statement
                    .run(&mut *conn, true, None)
                    .await
                    .map_err(query_error)?;
                let mut pids = Vec::with_capacity(rows.len());
                for row in &rows {
                    pids.push(row.try_get::<i32, _>("pid").map_err(query_error)?);
                    let skip: Option<String> = row.try_get("skip").map_err(query_error)?;
                    if skip.is_none() {
                        journaled.push(decode_session(row, names).map_err(query_error)?);
                    }
                }
                if rows.is_empty() {
                    // Nothing in scope: there is nothing to signal or to re-check.
                    return Ok((rows, false, journaled));
                }
                record_intent(Some(journal), &journaled).await?;
                Some(pids)
            }
            _ => None,
        };
        match statement.run(&mut *conn, dry_run, only.clone()).await {
            Ok(rows) => Ok((rows, false, journaled)),
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) =>
            {
                tracing::warn!(target_id = %self.id, error = %db,
                    "set-based termination refused; falling back to one session at a time");
                let rows = statement
                    .run(&mut *conn, true, only)
                    .await
                    .map_err(query_error)?;
                Ok((rows, true, journaled))
            }
            Err(e) => Err(query_error(e)),
        }
    }

    /// Sorts the rows of a set-based statement (columns [`session_columns!`], `skip`,
    /// `signalled`) into an outcome, signals one by one when the statement could not
    /// (`permission_denied`), and verifies that every signalled session is gone.
    async fn settle(
        conn: &mut PgConnection,
        (rows, permission_denied, journaled): &Signalled,
        names: &BTreeMap<i64, String>,
        dry_run: bool,
        verify_timeout: Duration,
    ) -> Result<TerminateOutcome, EngineError> {
        let permission_denied = *permission_denied;
        let mut outcome = TerminateOutcome::default();
        let mut to_signal = Vec::new();
        for row in rows {
            let session = decode_session(row, names).map_err(query_error)?;
            let skip: Option<String> = row.try_get("skip").map_err(query_error)?;
            let signalled: bool = row.try_get("signalled").map_err(query_error)?;
            match skip {
                Some(reason) => outcome.skipped.push(Skipped {
                    session,
                    reason: skip_reason(&reason),
                }),
                None => {
                    outcome.matched.push(session.clone());
                    if dry_run {
                        continue;
                    }
                    if permission_denied {
                        to_signal.push(session);
                    } else if signalled {
                        outcome.terminated.push(session);
                    } else {
                        outcome.skipped.push(Skipped {
                            session,
                            reason: SkipReason::AlreadyGone,
                        });
                    }
                }
            }
        }
        if permission_denied {
            Self::terminate_one_by_one(&mut *conn, to_signal, &mut outcome).await?;
        }
        // Journaled by the dry run, gone before the signal: they ended on their own.
        for session in journaled {
            if !outcome.matched.iter().any(|m| same_session(m, session)) {
                outcome.matched.push(session.clone());
                outcome.skipped.push(Skipped {
                    session: session.clone(),
                    reason: SkipReason::AlreadyGone,
                });
            }
        }
        if !outcome.terminated.is_empty() {
            outcome.remaining =
                Self::verify_gone(conn, &outcome.terminated, verify_timeout).await?;
        }
        Ok(outcome)
    }

    /// One connection for a whole operation: the pool pings a connection when it hands it
    /// out and again when it takes it back, so a statement per acquire would add a round trip
    /// to each statement and leave the next one waiting or opening a new connection.
    async fn connection(&self) -> Result<PoolConnection<Pg>, EngineError> {
        self.pool.acquire().await.map_err(query_error)
    }
}

/// A set-based select-and-signal statement and its arguments.
enum Statement<'a> {
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
    async fn run(
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

fn decode_session(row: &PgRow, names: &BTreeMap<i64, String>) -> Result<Session, sqlx::Error> {
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

fn skip_reason(text: &str) -> SkipReason {
    match text {
        "own_login" => SkipReason::OwnLogin,
        "superuser" => SkipReason::Superuser,
        "protected" => SkipReason::Protected,
        "login_unknown" => SkipReason::LoginUnknown,
        _ => SkipReason::StartUnknown,
    }
}

fn sweep_reason(text: &str) -> SweepReason {
    match text {
        "login_dropped" => SweepReason::LoginDropped,
        _ => SweepReason::LoginExpired,
    }
}

#[async_trait]
impl Engine for Postgres {
    async fn check(&self) -> Result<(), EngineError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(query_error)?;
        Ok(())
    }

    async fn sessions(&self, filter: &SessionFilter) -> Result<Vec<Session>, EngineError> {
        let mut conn = self.connection().await?;
        let (oids, names) = match &filter.login {
            Some(login) => {
                let names = self
                    .role_oids(&mut conn, std::slice::from_ref(login))
                    .await?;
                (Some(names.keys().copied().collect::<Vec<i64>>()), names)
            }
            None => (None, BTreeMap::new()),
        };
        let rows = sqlx::query(SESSIONS_SQL)
            .bind(oids)
            .bind(&filter.database)
            .bind(&filter.application_name)
            .bind(&filter.client_addr)
            .bind(filter.started_before)
            .bind(filter.started_after)
            .fetch_all(&mut *conn)
            .await
            .map_err(query_error)?;
        rows.iter()
            .map(|row| decode_session(row, &names))
            .collect::<Result<_, _>>()
            .map_err(query_error)
    }

    async fn terminate(&self, request: &TerminateRequest) -> Result<TerminateOutcome, EngineError> {
        // Names are matched by the statement itself; the remembered oids add the sessions of
        // roles dropped since, and name them (oid → login) in the report.
        let remembered = self.remembered(&request.logins).await?;
        let oids: Vec<i64> = remembered.iter().map(|(_, oid)| *oid).collect();
        // What sever learned about the roles of sessions left by a drop, so one of those that
        // was its own, a superuser or protected is spared too.
        let learned = self
            .store
            .learned_roles(&self.id)
            .await
            .map_err(|e| EngineError::Query(format!("state store: {e}")))?;
        let known = Known::new(self.store.login(), &request.protected, &learned, &[]);
        let mut names = known.names.clone();
        names.extend(remembered.iter().map(|(login, oid)| (*oid, login.clone())));
        let statement = Statement::Terminate {
            remembered_oids: &oids,
            request,
            known: &known,
        };
        let mut conn = self.connection().await?;
        let signalled = self
            .select_and_signal(
                &mut conn,
                &statement,
                request.dry_run,
                request.journal.as_deref(),
                &names,
            )
            .await?;
        let outcome = Self::settle(
            &mut conn,
            &signalled,
            &names,
            request.dry_run,
            request.verify_timeout,
        )
        .await?;
        drop(conn);
        // Roles first seen here are remembered after the fact, off the path to the signal;
        // roles without sessions are learned by the periodic `learn_logins`.
        let seen = outcome
            .matched
            .iter()
            .chain(outcome.skipped.iter().map(|s| &s.session));
        self.remember_from(seen, &request.logins, &remembered)
            .await?;
        Ok(outcome)
    }

    async fn learn_logins(&self, logins: &[String]) -> Result<(), EngineError> {
        let mut conn = self.connection().await?;
        self.role_oids(&mut conn, logins).await.map(|_| ())
    }

    async fn learn(&self, what: &Learn) -> Result<(), EngineError> {
        let mut conn = self.connection().await?;
        // The sweeper's frequent learning names no mapped logins: skip their round trip.
        if !what.mapped.is_empty() {
            self.role_oids(&mut conn, &what.mapped).await?;
        }
        pg_roles::learn(
            &mut conn,
            &self.store,
            &self.id,
            &what.protected,
            what.sweep_pattern.as_deref(),
        )
        .await
        .map(|_| ())
    }

    async fn sweep(&self, request: &SweepRequest) -> Result<TerminateOutcome, EngineError> {
        let pattern = request.pattern.as_str();
        let protected = &request.protected;
        let (dry_run, verify_timeout) = (request.dry_run, request.verify_timeout);
        let journal = request.journal.as_deref();
        // Learned right before the sweep, so only a role created and dropped since the last
        // learning is unknown; what was learned before decides an orphan's fate.
        let mut conn = self.connection().await?;
        let learned =
            pg_roles::learn(&mut conn, &self.store, &self.id, protected, Some(pattern)).await?;
        let remembered = self
            .store
            .every_identity(&self.id)
            .await
            .map_err(|e| EngineError::Query(format!("state store: {e}")))?;
        let remembered: Vec<(String, i64)> = remembered
            .into_iter()
            .filter_map(|(login, oid)| oid.parse().ok().map(|oid| (login, oid)))
            .collect();
        let known = Known::new(self.store.login(), protected, &learned, &remembered);
        let names = known.names.clone();
        let protected: Vec<String> = protected.iter().cloned().collect();
        let statement = Statement::Sweep {
            pattern,
            protected: &protected,
            known: &known,
        };
        let signalled = self
            .select_and_signal(&mut conn, &statement, dry_run, journal, &names)
            .await?;
        let mut outcome =
            Self::settle(&mut conn, &signalled, &names, dry_run, verify_timeout).await?;
        for row in &signalled.0 {
            let pid = i64::from(row.try_get::<i32, _>("pid").map_err(query_error)?);
            let swept: String = row.try_get("swept").map_err(query_error)?;
            outcome.sweep_reasons.insert(pid, sweep_reason(&swept));
        }
        Ok(outcome)
    }
}
