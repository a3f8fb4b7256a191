//! PostgreSQL: sessions from `pg_stat_activity`, matched on role oid, ended with
//! `pg_terminate_backend` in one set-based statement, then verified gone.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres as Pg, Row};

use super::pg_roles::{self, Known};
use super::{
    Engine, EngineError, Failed, Journal, Learn, Sent, Session, Signal, SkipReason, Skipped,
    SweepRequest, TerminateOutcome, TerminateRequest, record_intent, same_session,
    sqlx_error as query_error,
};
use crate::config::{TargetConfig, TerminationConfig};
use crate::select::Selector;
use crate::store::{APPLICATION_NAME, Store};
use crate::terminate::classify::connection_lost;
use crate::terminate::drain::{DatabaseGate, Reopened};
use crate::terminate::listing::Listed;
use crate::terminate::lockout::{LoginGate, Restored};

mod listing;
mod lock;
mod signal;
mod sql;

use sql::{REMAINING_SQL, ROLES_SQL, Statement, decode_session, skip_reason, sweep_reason};

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
    /// The target's `statement_timeout`, for the lock pool too.
    statement_timeout: String,
    /// The lock login's pool, on a target with `locks = true` ([`lock`]).
    lock: Option<PgPool>,
}

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
            // sqlx pings an idle connection before handing it out: a round trip to the
            // target before every rotation's first statement. A rotation runs that statement
            // unpinged instead and moves to another connection if it finds this one dead
            // ([`Postgres::run_first`]); the rarer operations ping for themselves
            // ([`Postgres::connection`]).
            .test_before_acquire(false)
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
            statement_timeout,
            lock: None,
        })
    }

    /// The role oids sever remembers for `logins` on this target, as (login, oid).
    async fn remembered(&self, logins: &[String]) -> Result<Vec<(String, i64)>, EngineError> {
        let remembered = self
            .store
            .identities(&self.id, logins)
            .await
            .map_err(|e| EngineError::Query(format!("state store: {e}")))?;
        Ok(parse_oids(remembered))
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
        conn: &mut PoolConnection<Pg>,
        statement: &Statement<'_>,
        dry_run: bool,
        journal: Option<&dyn Journal>,
        names: &BTreeMap<i64, String>,
    ) -> Result<Signalled, EngineError> {
        let mut journaled = Vec::new();
        let only = match journal {
            Some(journal) if !dry_run => {
                let rows = self
                    .run_first(conn, statement, true)
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
        let signalled = match &only {
            Some(pids) => statement.run(&mut *conn, dry_run, Some(pids.clone())).await,
            None => self.run_first(conn, statement, dry_run).await,
        };
        match signalled {
            Ok(rows) => Ok((rows, false, journaled)),
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) =>
            {
                tracing::warn!(target_id = %self.id, error = %db,
                    "set-based termination refused; falling back to one session at a time");
                let rows = statement.run(conn, true, only).await.map_err(query_error)?;
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

    /// One connection for a whole operation, checked with a ping first: the pool pings a
    /// connection again when it takes it back, so a statement per acquire would add a round
    /// trip to each statement. A connection that died while idle (the target restarted, or
    /// ended sever's session) is closed and the next one tried, as sqlx itself would.
    async fn connection(&self) -> Result<PoolConnection<Pg>, EngineError> {
        let mut spare = self.pool.options().get_max_connections();
        loop {
            let mut conn = self.pool.acquire().await.map_err(query_error)?;
            match conn.ping().await {
                Ok(()) => return Ok(conn),
                Err(e) if spare > 0 && connection_lost(&e) => {
                    conn.close_on_drop();
                    spare -= 1;
                }
                Err(e) => return Err(query_error(e)),
            }
        }
    }

    /// Runs a rotation's first statement on `conn`, a pooled connection nobody pinged, so a
    /// rotation pays no round trip before its first statement. If `conn` turns out to have
    /// died while idle, the statement never ran: `conn` is closed and replaced by the next
    /// pooled connection (at most once per connection the pool may hold, after which the
    /// pool opens a new one), and the statement runs again there. Only a first statement is
    /// retried, so nothing that happened on the target is repeated.
    async fn run_first(
        &self,
        conn: &mut PoolConnection<Pg>,
        statement: &Statement<'_>,
        dry_run: bool,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        let mut spare = self.pool.options().get_max_connections();
        loop {
            match statement.run(&mut *conn, dry_run, None).await {
                Err(e) if spare > 0 && connection_lost(&e) => {
                    tracing::debug!(target_id = %self.id, error = %e,
                        "an idle connection to the target was gone; using another");
                    conn.close_on_drop();
                    *conn = self.pool.acquire().await?;
                    spare -= 1;
                }
                result => return result,
            }
        }
    }
}

#[async_trait]
impl Engine for Postgres {
    async fn check(&self) -> Result<(), EngineError> {
        // The ping that checks the connection is the readiness query.
        self.connection().await.map(drop)
    }

    async fn list(
        &self,
        selector: &Selector,
        include_query: bool,
    ) -> Result<Vec<Listed>, EngineError> {
        self.list_sessions(selector, include_query).await
    }

    async fn connection_limit(&self) -> Result<u64, EngineError> {
        self.client_limit().await
    }

    async fn login_gate(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        self.read_gate(login).await
    }

    async fn missing_lock_grant(&self) -> Result<Option<String>, EngineError> {
        self.lock_grant().await
    }

    async fn close_login(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        self.close(login).await
    }

    async fn restore_login(
        &self,
        login: &str,
        before: &LoginGate,
    ) -> Result<Restored, EngineError> {
        self.restore(login, before).await
    }

    async fn database_gate(&self, database: &str) -> Result<Option<DatabaseGate>, EngineError> {
        self.read_database_gate(database).await
    }

    async fn close_database(&self, database: &str) -> Result<Option<DatabaseGate>, EngineError> {
        self.close_db(database).await
    }

    async fn reopen_database(
        &self,
        database: &str,
        before: &DatabaseGate,
    ) -> Result<Reopened, EngineError> {
        self.reopen_db(database, before).await
    }

    async fn signal(&self, sessions: &[Listed], signal: Signal) -> Result<Vec<Sent>, EngineError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let sessions: Vec<&Session> = sessions.iter().map(|l| &l.session).collect();
        self.send(&sessions, signal).await
    }

    async fn terminate(&self, request: &TerminateRequest) -> Result<TerminateOutcome, EngineError> {
        // Names are matched by the statement itself; the remembered oids add the sessions of
        // roles dropped since, and name them (oid → login) in the report. And what sever
        // learned about the roles of sessions left by a drop, so one of those that was its
        // own, a superuser or protected is spared too. Read with the step's acceptance when
        // it was accepted here, else now, in one statement.
        let roles = match &request.roles {
            Some(roles) => roles.clone(),
            None => Arc::new(
                self.store
                    .stored_roles(std::slice::from_ref(&self.id))
                    .await
                    .map_err(|e| EngineError::Query(format!("state store: {e}")))?
                    .remove(&self.id)
                    .unwrap_or_default(),
            ),
        };
        let remembered = parse_oids(roles.identities_of(&request.logins));
        let learned = &roles.learned;
        let oids: Vec<i64> = remembered.iter().map(|(_, oid)| *oid).collect();
        let known = Known::new(self.store.login(), &request.protected, learned, &[]);
        let mut names = known.names.clone();
        names.extend(remembered.iter().map(|(login, oid)| (*oid, login.clone())));
        let statement = Statement::Terminate {
            remembered_oids: &oids,
            request,
            known: &known,
        };
        // Not pinged: the first statement finds out whether the connection lives.
        let mut conn = self.pool.acquire().await.map_err(query_error)?;
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

/// Remembered (login, identity) pairs as (login, oid); an identity that is no oid is left out.
fn parse_oids(remembered: Vec<(String, String)>) -> Vec<(String, i64)> {
    remembered
        .into_iter()
        .filter_map(|(login, oid)| oid.parse().ok().map(|oid| (login, oid)))
        .collect()
}
