//! Finding and terminating sessions, per engine, behind one [`Engine`] interface.
//!
//! May call `store` (learned roles) and `config`; knows nothing of actions, queues or doors.

pub mod classify;
pub mod drain;
pub mod listing;
pub mod lockout;
pub mod mysql;
mod pg_roles;
pub mod postgres;
pub mod selected;
mod skip;
pub mod sqlserver;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, Engine as EngineKind};
use crate::select::Selector;
use crate::store::Store;
use drain::{DatabaseGate, Reopened};
use listing::Listed;
use lockout::{LoginGate, Restored};
pub use skip::SkipReason;

/// A database session as the engine reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Session {
    /// Server-side session id (PostgreSQL backend pid).
    pub pid: i64,
    /// Login name; `None` when the login has been dropped and sever never knew it.
    pub login: Option<String>,
    /// The engine's identity for the login (PostgreSQL role oid).
    pub login_id: Option<String>,
    /// Database the session is connected to.
    pub database: Option<String>,
    /// Client-supplied application name (informational only).
    pub application_name: Option<String>,
    /// Client address; `None` for local socket connections.
    pub client_addr: Option<String>,
    /// When the session connected; `None` when sever lacks the privilege to see it.
    pub backend_start: Option<DateTime<Utc>>,
    /// Current state (`active`, `idle`, …).
    pub state: Option<String>,
}

/// Which of a login's sessions to terminate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "sessions", content = "before")]
pub enum Scope {
    /// Every session.
    All,
    /// Sessions that connected before this moment.
    Before(DateTime<Utc>),
}

/// What to do on one target.
#[derive(Debug, Clone)]
pub struct TerminateRequest {
    /// Logins whose sessions are in scope.
    pub logins: Vec<String>,
    /// Which sessions.
    pub scope: Scope,
    /// Logins never terminated, whatever else matches.
    pub protected: BTreeSet<String>,
    /// Report what would be terminated, change nothing.
    pub dry_run: bool,
    /// How long to wait for terminated sessions to disappear.
    pub verify_timeout: Duration,
    /// The cutoff is only when sever learned of the rotation; an engine that records when
    /// the password changed may narrow it to that moment.
    pub refine_cutoff: bool,
    /// Where the sessions about to be signalled are recorded first, if anywhere.
    pub journal: Option<Arc<dyn Journal>>,
    /// What the store keeps about the target's roles, read as the step was accepted (beside
    /// its commit, so not on the rotation's path); `None`: the engine reads it.
    pub roles: Option<Arc<crate::store::StoredRoles>>,
}

/// What a sweep does on one target.
#[derive(Debug, Clone)]
pub struct SweepRequest {
    /// `LIKE` pattern of the logins checked for expiry.
    pub pattern: String,
    /// Logins never terminated, whatever else matches.
    pub protected: BTreeSet<String>,
    /// Report what would be terminated, change nothing.
    pub dry_run: bool,
    /// How long to wait for terminated sessions to disappear.
    pub verify_timeout: Duration,
    /// Where the sessions about to be signalled are recorded first, if anywhere.
    pub journal: Option<Arc<dyn Journal>>,
}

/// What to learn on one target besides sever's own logins and the superusers.
#[derive(Debug, Clone, Default)]
pub struct Learn {
    /// Logins mapped to credentials on the target.
    pub mapped: Vec<String>,
    /// Logins protected on the target.
    pub protected: BTreeSet<String>,
    /// The target's sweep pattern (`LIKE`), if it has a sweep.
    pub sweep_pattern: Option<String>,
}

/// Durably records the sessions an attempt is about to signal, before it signals them, so a
/// crash between the signal and the audit record cannot lose a terminated session.
#[async_trait]
pub trait Journal: Send + Sync + Debug {
    /// Records `sessions`; an error stops the attempt before anything is signalled.
    async fn record(&self, sessions: &[Session]) -> Result<(), EngineError>;
}

/// Whether two reports name the same session: same id and same start (ids are reused).
pub fn same_session(a: &Session, b: &Session) -> bool {
    a.pid == b.pid && a.backend_start == b.backend_start
}

/// Records `sessions` in `journal`, if there is one and there is anything to record.
pub async fn record_intent(
    journal: Option<&dyn Journal>,
    sessions: &[Session],
) -> Result<(), EngineError> {
    match journal {
        Some(journal) if !sessions.is_empty() => journal.record(sessions).await,
        _ => Ok(()),
    }
}

/// Whether a session's login is an administrator, whose sessions sever never ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// It is one.
    Administrator,
    /// It is not (or its account no longer exists).
    Ordinary,
    /// Its privileges could not be read: it is treated as an administrator.
    Unknown,
}

impl Standing {
    /// Why a session of this standing is left alone, if it is.
    pub(crate) fn skip_reason(self) -> Option<SkipReason> {
        match self {
            Standing::Administrator => Some(SkipReason::Superuser),
            Standing::Unknown => Some(SkipReason::PrivilegesUnknown),
            Standing::Ordinary => None,
        }
    }
}

/// A session that matched but was not terminated, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Skipped {
    /// The session.
    #[serde(flatten)]
    pub session: Session,
    /// Why it was left alone (`reason`, and `rule` for a selector's exclusion).
    #[serde(flatten)]
    #[schema(value_type = skip::SkipWire)]
    pub reason: SkipReason,
}

/// A session that could not be terminated, and the engine's error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Failed {
    /// The session.
    #[serde(flatten)]
    pub session: Session,
    /// What the engine said.
    pub error: String,
}

/// Why a sweep selected a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SweepReason {
    /// Its login no longer exists (dropped, e.g. by Vault's revocation).
    LoginDropped,
    /// Its login matches the sweep pattern and is past its expiry (`VALID UNTIL`).
    LoginExpired,
}

/// What happened on one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TerminateOutcome {
    /// Sessions in scope and eligible (in a dry run: what would be terminated).
    pub matched: Vec<Session>,
    /// Sessions signalled to terminate.
    pub terminated: Vec<Session>,
    /// Sessions whose running statement was cancelled (mode `cancel`, or `graceful` at the
    /// end of its grace, before it terminates them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled: Vec<Session>,
    /// Sessions in scope but left alone.
    pub skipped: Vec<Skipped>,
    /// Sessions whose termination failed.
    pub failed: Vec<Failed>,
    /// Terminated sessions still present when verification gave up.
    pub remaining: Vec<Session>,
    /// Things the audit must say about this target's action (e.g. a server restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Sweeps only: why each selected session (by pid) was selected, whatever its fate.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "pid_keyed"
    )]
    pub sweep_reasons: BTreeMap<i64, SweepReason>,
    /// Policies only: the target's load and the policy's threshold, as the step saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<selected::Threshold>,
}

impl TerminateOutcome {
    /// Adds what a later phase of the same step did (a graceful rotation's grace, then its
    /// termination) to this outcome.
    pub fn absorb(&mut self, later: TerminateOutcome) {
        self.matched.extend(later.matched);
        self.terminated.extend(later.terminated);
        self.cancelled.extend(later.cancelled);
        self.skipped.extend(later.skipped);
        self.failed.extend(later.failed);
        self.remaining.extend(later.remaining);
        self.notes.extend(later.notes);
        self.sweep_reasons.extend(later.sweep_reasons);
        self.threshold = self.threshold.or(later.threshold);
    }
}

/// Reads a map keyed by pid. JSON object keys are strings, and inside a `#[serde(flatten)]`
/// (as in the pipeline's target report) serde no longer turns them back into integers.
fn pid_keyed<'de, D, V>(deserializer: D) -> Result<BTreeMap<i64, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    BTreeMap::<String, V>::deserialize(deserializer)?
        .into_iter()
        .map(|(pid, v)| {
            pid.parse()
                .map(|pid| (pid, v))
                .map_err(|_| serde::de::Error::custom(format!("not a pid: {pid:?}")))
        })
        .collect()
}

/// Errors from one target as a whole.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// The target could not be reached or refused sever's login.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A statement failed, possibly for a passing reason (deadlock, timeout, resources).
    #[error("query failed: {0}")]
    Query(String),
    /// The target refused a statement for a reason retrying does not change (privilege,
    /// data, syntax, unknown object); see [`classify`].
    #[error("query refused: {0}")]
    Rejected(String),
    /// The target did not answer within the termination timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The target's URL or options are unusable.
    #[error("invalid target configuration: {0}")]
    Config(String),
    /// A selector field this server cannot evaluate, and why: refused, never ignored.
    #[error("{0}")]
    Unsupported(String),
    /// A guard rail stopped the step before anything was signalled (the selection would
    /// reach every session of the target, or grew since its dry run).
    #[error("refused: {0}")]
    Refused(String),
    /// The sessions about to be signalled could not be recorded, so none were signalled.
    #[error("could not record the sessions about to be terminated: {0}")]
    Journal(String),
}

/// One engine's way of listing and terminating sessions on one target.
#[async_trait]
pub trait Engine: Send + Sync + Debug {
    /// Connects and runs a trivial query (readiness).
    async fn check(&self) -> Result<(), EngineError>;
    /// Every client session with its impact, each decided by `selector` (the query text
    /// only when `include_query`). A selector field this server cannot evaluate is
    /// [`EngineError::Unsupported`].
    async fn list(
        &self,
        selector: &Selector,
        include_query: bool,
    ) -> Result<Vec<Listed>, EngineError>;
    /// How many client connections the server accepts from non-administrators
    /// (PostgreSQL: `max_connections` less the reserved slots; MySQL and MariaDB:
    /// `max_connections`), for a policy's `connections_above_percent_of_max`.
    /// [`EngineError::Unsupported`] where no such limit is meaningful (SQL Server).
    async fn connection_limit(&self) -> Result<u64, EngineError> {
        Err(EngineError::Unsupported(
            "this engine has no client connection limit to compare with".into(),
        ))
    }
    /// Sends `signal` to each of `sessions` (as [`Engine::list`] gave them), each only while
    /// its id still names the same session; what came of each, in the same order. Checks
    /// nothing else: the caller decided these sessions may be signalled.
    async fn signal(&self, sessions: &[Listed], signal: Signal) -> Result<Vec<Sent>, EngineError>;
    /// The grant locks need that the lock login lacks (`CREATEROLE`, `CREATE USER`), or
    /// `None` when it holds it; asked before a lock is taken so a missing grant is refused
    /// by name. [`EngineError::Unsupported`] where it cannot be asked.
    async fn missing_lock_grant(&self) -> Result<Option<String>, EngineError> {
        Err(EngineError::Unsupported(
            "locks: the lock grant is not checked on this target".into(),
        ))
    }
    /// Whether `login` may authenticate, account by account; `None` when no such login
    /// exists. Read over the lock connection; [`EngineError::Unsupported`] on a target
    /// without `locks = true`.
    async fn login_gate(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        let _ = login;
        Err(EngineError::Unsupported(
            "locks: this target does not have locks = true".into(),
        ))
    }
    /// Closes `login`'s gate on every account (PostgreSQL `NOLOGIN`, MySQL/MariaDB
    /// `ACCOUNT LOCK` for every host, SQL Server `ALTER LOGIN … DISABLE` or, for a contained
    /// user, `REVOKE CONNECT`) and returns the gate as it was before; `None` when no such
    /// login exists (nothing was changed). Accounts already closed stay closed.
    async fn close_login(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        let _ = login;
        Err(EngineError::Unsupported(
            "locks: this target does not have locks = true".into(),
        ))
    }
    /// Sets `login`'s gate back to `before`, but only if it is still as the lock left it
    /// (`before.closed()`): a change someone else made meanwhile is reported, not
    /// overwritten. An account that was closed before stays closed.
    async fn restore_login(
        &self,
        login: &str,
        before: &LoginGate,
    ) -> Result<Restored, EngineError> {
        let _ = (login, before);
        Err(EngineError::Unsupported(
            "locks: this target does not have locks = true".into(),
        ))
    }
    /// `database`'s gate; `None` when no such database exists. Over the lock connection;
    /// [`EngineError::Unsupported`] without `locks = true` or on an engine with no
    /// per-database gate (MySQL/MariaDB).
    async fn database_gate(&self, database: &str) -> Result<Option<DatabaseGate>, EngineError> {
        let _ = database;
        Err(no_drains())
    }
    /// Closes `database` to new connections (PostgreSQL `CONNECTION LIMIT 0`, SQL Server
    /// `RESTRICTED_USER`) and returns its gate as it was; `None` when it does not exist.
    async fn close_database(&self, database: &str) -> Result<Option<DatabaseGate>, EngineError> {
        let _ = database;
        Err(no_drains())
    }
    /// Whether [`Engine::close_database`] itself ends the database's sessions (SQL Server's
    /// `WITH ROLLBACK IMMEDIATE`), so they must be recorded before it runs.
    fn closing_ends_sessions(&self) -> bool {
        false
    }
    /// Sets `database`'s gate back to `before`, but only if it is still as the drain left
    /// it: a change made meanwhile is reported, not overwritten.
    async fn reopen_database(
        &self,
        database: &str,
        before: &DatabaseGate,
    ) -> Result<Reopened, EngineError> {
        let _ = (database, before);
        Err(no_drains())
    }
    /// Terminates (or, in a dry run, lists) the sessions `request` selects, then verifies.
    async fn terminate(&self, request: &TerminateRequest) -> Result<TerminateOutcome, EngineError>;
    /// Looks up and remembers the identities of `logins`, so they are found after a drop.
    async fn learn_logins(&self, logins: &[String]) -> Result<(), EngineError>;
    /// Looks up and remembers the identities of the logins `what` names (and, on PostgreSQL,
    /// of sever's own logins and the superusers), so they are told apart after a drop.
    async fn learn(&self, what: &Learn) -> Result<(), EngineError> {
        self.learn_logins(&what.mapped).await
    }
    /// Terminates (or, in a dry run, lists) every client session whose login no longer
    /// exists, or whose login matches the request's `LIKE` `pattern` and has expired, then
    /// verifies. Sessions of sever's own logins, superusers and `protected` logins are
    /// skipped, and so are those of a dropped login sever never learned to match `pattern`;
    /// the outcome's `sweep_reasons` says why each session was selected. Sessions are
    /// recorded in the request's `journal` before they are signalled.
    async fn sweep(&self, request: &SweepRequest) -> Result<TerminateOutcome, EngineError> {
        // Only PostgreSQL keeps sessions of dropped or expired roles identifiable; the other
        // engines keep the user name and have no VALID UNTIL, so there is nothing to sweep.
        let _ = request;
        Err(EngineError::Config(
            "sweeps are for PostgreSQL targets".into(),
        ))
    }
}

/// Why a drain method is not available: locks are off, or the engine has no database gate.
fn no_drains() -> EngineError {
    EngineError::Unsupported(
        "drains: this target does not have locks = true, or its engine has no per-database \
         gate"
            .into(),
    )
}

/// What to send a selected session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// End its running statement; the connection stays.
    Cancel,
    /// End the session.
    Terminate,
}

/// What came of signalling one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The engine accepted the signal.
    Signalled,
    /// The session had ended (or its id names another session now): nothing was sent.
    Gone,
    /// The engine refused, with its error.
    Refused(String),
}

/// Where a target is, from its URL: used to match secrets that name a host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The target's engine.
    pub engine: EngineKind,
    /// Host from the URL.
    pub host: String,
    /// Port from the URL, or the engine's default.
    pub port: u16,
}

/// Every configured target, by id, each behind its engine.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    engines: BTreeMap<String, Arc<dyn Engine>>,
    endpoints: BTreeMap<String, Endpoint>,
}

impl Targets {
    /// Builds an engine per configured target; connections open lazily on first use.
    pub fn from_config(config: &Config, store: &Store) -> Result<Self, ConfigError> {
        let mut engines: BTreeMap<String, Arc<dyn Engine>> = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        for (id, target) in &config.targets {
            let url = target.url.load(&format!("targets.{id}.url"))?;
            if let Ok(parsed) = url::Url::parse(url.expose_secret())
                && let Some(host) = parsed.host_str()
            {
                let port = parsed.port().unwrap_or(match target.engine {
                    EngineKind::Postgres => 5432,
                    EngineKind::Mysql => 3306,
                    EngineKind::Sqlserver => 1433,
                });
                endpoints.insert(
                    id.clone(),
                    Endpoint {
                        engine: target.engine,
                        host: host.to_owned(),
                        port,
                    },
                );
            }
            let invalid = |key: &str| {
                let path = format!("targets.{id}.{key}");
                move |e: EngineError| ConfigError::Invalid {
                    path,
                    reason: e.to_string(),
                }
            };
            // The lock connection exists only where locks are on (issue 19).
            let (lock_key, lock_url) = match (&target.lock_url, target.locks) {
                (_, false) => ("lock_url", None),
                (Some(source), true) => {
                    let path = format!("targets.{id}.lock_url");
                    ("lock_url", Some(source.load(&path)?))
                }
                (None, true) => ("url", Some(url.clone())),
            };
            let termination = &config.termination;
            let engine: Arc<dyn Engine> = match target.engine {
                EngineKind::Postgres => {
                    let engine =
                        postgres::Postgres::new(id, &url, target, termination, store.clone())
                            .map_err(invalid("url"))?;
                    Arc::new(match &lock_url {
                        Some(lock) => engine.with_locks(lock).map_err(invalid(lock_key))?,
                        None => engine,
                    })
                }
                EngineKind::Mysql => {
                    let engine =
                        mysql::Mysql::new(&url, target, termination).map_err(invalid("url"))?;
                    Arc::new(match &lock_url {
                        Some(lock) => engine.with_locks(lock).map_err(invalid(lock_key))?,
                        None => engine,
                    })
                }
                EngineKind::Sqlserver => {
                    let engine = sqlserver::SqlServer::new(&url, target, termination)
                        .map_err(invalid("url"))?;
                    Arc::new(match &lock_url {
                        Some(lock) => engine.with_locks(lock).map_err(invalid(lock_key))?,
                        None => engine,
                    })
                }
            };
            engines.insert(id.clone(), engine);
        }
        Ok(Self { engines, endpoints })
    }

    /// Each target's host and port, where its URL names them.
    pub fn iter_endpoints(&self) -> impl Iterator<Item = (&String, &Endpoint)> {
        self.endpoints.iter()
    }

    /// The engine for target `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn Engine>> {
        self.engines.get(id)
    }

    /// Every target, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<dyn Engine>)> {
        self.engines.iter()
    }
}

/// A target that could not answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TargetError {
    /// Target id.
    pub target: String,
    /// What went wrong.
    pub error: String,
}

/// Maps a sqlx error to an engine error of its class ([`classify::sqlx_verdict`]): socket
/// trouble or refused credentials are `Connect`, a refusal that will recur `Rejected`,
/// anything else `Query`.
pub(crate) fn sqlx_error(e: sqlx::Error) -> EngineError {
    let class = match classify::sqlx_verdict(&e) {
        classify::Verdict::Failed(class) => class,
        // Only a KILL says a session is gone, and the engines check for that themselves.
        classify::Verdict::Gone => classify::ErrorClass::Transient,
    };
    classify::engine_error(class, e.to_string())
}

/// The waiting policy of every engine's verification: checks with a backoff from 1 ms to
/// 20 ms until a deadline. The first check goes right after the signal, so a target at a
/// distance usually answers "gone" to it; close by, backends take a few milliseconds to
/// exit, and a short first pause finds them gone soon after they are. The cap bounds how
/// long a clean target waits to be reported clean (the time to revocation); a check is one
/// cheap query.
pub(crate) struct Poll {
    deadline: tokio::time::Instant,
    pause: Duration,
}

impl Poll {
    /// Polling that gives up after `timeout`.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            deadline: tokio::time::Instant::now() + timeout,
            pause: Duration::from_millis(1),
        }
    }

    /// Waits before the next check; `false` when that would pass the deadline.
    pub(crate) async fn wait(&mut self) -> bool {
        if tokio::time::Instant::now() + self.pause > self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = self.pause.mul_f64(1.25).min(Duration::from_millis(20));
        true
    }
}
