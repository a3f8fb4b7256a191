//! MySQL and MariaDB: sessions from `information_schema.PROCESSLIST`, ended with
//! `KILL CONNECTION <id>` (or `CALL mysql.rds_kill(id)` on Amazon RDS), then verified gone.
//!
//! # The watermark
//! No column says when a connection began (`PROCESSLIST.TIME` is time in its current
//! state), so "sessions older than the rotation" is decided by connection id instead: ids
//! come from a counter that only rises until the server restarts. When sever acts on a
//! rotation it opens a fresh connection and takes its `CONNECTION_ID()` as the watermark;
//! every session of the login with a lower id connected before sever learned of the
//! rotation. A cutoff in the past is therefore widened to "now", which can also end
//! sessions opened with the new secret in between: they reconnect, and no old one survives.
//!
//! A restart resets the counter. Right before acting, sever takes a second reading: a fresh
//! connection id below the watermark, or a later boot time (`UNIX_TIMESTAMP() - Uptime`),
//! means the server restarted in between and ids mean nothing, so every session of the login
//! is terminated and the outcome says so.
//!
//! # Accounts
//! A mapping may name a user (`app`: every account of that user) or an account
//! (`'app'@'10.%'`). A session's account is the most specific account of its user whose host
//! pattern matches the session's host as `PROCESSLIST` shows it, which is how the server
//! picked it when the server runs with `skip_name_resolve` (recommended, and usual). With
//! name resolution on, `PROCESSLIST` shows a resolved name that an IP-based account pattern
//! does not match; map by user there.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, MySql, MySqlConnection, MySqlPool, Row};
use tokio::sync::OnceCell;

use super::{
    Engine, EngineError, Failed, Scope, Sent, Session, Signal, SkipReason, Skipped,
    TerminateOutcome, TerminateRequest, classify, record_intent, sqlx_error,
};
use crate::config::{TargetConfig, TerminationConfig};
use crate::select::Selector;
use crate::terminate::listing::Listed;
use crate::terminate::lockout::{LoginGate, Restored};

mod accounts;
mod listing;
mod lock;
mod privileges;

pub use accounts::{Account, authenticated_host};
use privileges::{Flavor, Privileges};

/// MySQL error: not the owner of the thread (missing CONNECTION_ADMIN / SUPER).
const NOT_OWNER: u16 = 1095;

/// MariaDB error: `KILL QUERY ID` names no running statement (it finished).
const NO_SUCH_QUERY: u16 = 1957;

/// The MySQL error number of `e`, if the server sent one. (`DatabaseError::code()` is the
/// SQLSTATE, often the catch-all `HY000`, not the number.)
fn number_of(db: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|my| my.number())
}

/// Threads that are not client sessions (replication, the event scheduler, …).
const SYSTEM_COMMANDS: [&str; 7] = [
    "Daemon",
    "Binlog Dump",
    "Binlog Dump GTID",
    "Slave_IO",
    "Slave_SQL",
    "Slave_worker",
    "Connect",
];

/// One MySQL or MariaDB target.
#[derive(Debug)]
pub struct Mysql {
    pool: MySqlPool,
    options: MySqlConnectOptions,
    rds: bool,
    /// MySQL or MariaDB, read once on first use.
    flavor: OnceCell<Flavor>,
    /// Logins already warned about at learning, so the warning is not repeated every 5 min.
    warned: std::sync::Mutex<BTreeSet<String>>,
    /// The lock login's pool, on a target with `locks = true` ([`lock`]).
    lock: Option<MySqlPool>,
}

/// Where the id counter stood when sever learned of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// `CONNECTION_ID()` of a fresh connection.
    pub id: u64,
    /// The server's boot time, unix seconds.
    pub booted_at: i64,
}

/// A `PROCESSLIST` row.
#[derive(Debug, Clone)]
struct Thread {
    id: u64,
    user: String,
    client_host: String,
    db: Option<String>,
    command: String,
}

impl Thread {
    fn session(&self, account: Option<String>) -> Session {
        Session {
            pid: self.id as i64,
            login: Some(self.user.clone()),
            login_id: account,
            database: self.db.clone(),
            application_name: None,
            client_addr: Some(self.client_host.clone()).filter(|h| !h.is_empty()),
            backend_start: None,
            state: Some(self.command.clone()),
        }
    }
}

/// MySQL types connection ids `BIGINT UNSIGNED`, MariaDB `BIGINT`: read either.
fn unsigned(row: &MySqlRow, column: &str) -> Result<u64, sqlx::Error> {
    row.try_get::<u64, _>(column).or_else(|_| {
        let signed: i64 = row.try_get(column)?;
        u64::try_from(signed).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    })
}

fn decode_thread(row: &MySqlRow) -> Result<Thread, sqlx::Error> {
    let host: String = row.try_get("HOST")?;
    // `10.0.0.5:51234` → `10.0.0.5`; `localhost` stays; IPv6 `[::1]:5123` → `::1`.
    let client_host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            h.trim_matches(['[', ']']).to_owned()
        }
        _ => host,
    };
    Ok(Thread {
        id: unsigned(row, "ID")?,
        user: row.try_get("USER")?,
        client_host,
        db: row.try_get("DB")?,
        command: row.try_get("COMMAND")?,
    })
}

impl Mysql {
    /// A target whose pool connects lazily with sever's admin login at `url`.
    pub fn new(
        url: &SecretString,
        target: &TargetConfig,
        _termination: &TerminationConfig,
    ) -> Result<Self, EngineError> {
        let options = MySqlConnectOptions::from_str(url.expose_secret())
            .map_err(|_| EngineError::Config("not a valid MySQL URL".into()))?;
        // No application name here: PROCESSLIST has no such column, and sqlx sends no
        // connection attributes, so sever's sessions are known by its login alone.
        let pool = MySqlPoolOptions::new()
            .max_connections(target.pool_size)
            .min_connections(1)
            .acquire_timeout(target.connect_timeout)
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            options,
            rds: target.rds,
            flavor: OnceCell::new(),
            warned: Default::default(),
            lock: None,
        })
    }

    /// Opens a fresh connection (never a pooled one, whose id is old) and reads the watermark.
    pub async fn watermark(&self) -> Result<Watermark, EngineError> {
        let mut conn = MySqlConnection::connect_with(&self.options)
            .await
            .map_err(sqlx_error)?;
        let row = sqlx::query(
            "SELECT CONNECTION_ID() AS id, \
             CAST(UNIX_TIMESTAMP() AS SIGNED) - CAST(VARIABLE_VALUE AS SIGNED) AS booted_at \
             FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(sqlx_error)?;
        let id = unsigned(&row, "id").map_err(sqlx_error)?;
        let booted_at: i64 = row.try_get("booted_at").map_err(sqlx_error)?;
        let _ = conn.close().await;
        Ok(Watermark { id, booted_at })
    }

    /// One connection for a whole operation: the pool pings a connection when it hands it
    /// out and again when it takes it back, so a statement per acquire would add a round trip
    /// to each statement and leave the next one waiting or opening a new connection.
    async fn connection(&self) -> Result<PoolConnection<MySql>, EngineError> {
        self.pool.acquire().await.map_err(sqlx_error)
    }

    /// MySQL or MariaDB, asked once.
    async fn flavor(&self, conn: &mut MySqlConnection) -> Result<Flavor, EngineError> {
        self.flavor
            .get_or_try_init(|| async {
                let version: String = sqlx::query_scalar("SELECT VERSION()")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(sqlx_error)?;
                Ok(Flavor::of_version(&version))
            })
            .await
            .copied()
    }

    /// Which accounts of `users` are administrators (see [`privileges`]).
    async fn privileges(
        &self,
        conn: &mut MySqlConnection,
        users: &BTreeSet<&str>,
    ) -> Result<Privileges, EngineError> {
        let flavor = self.flavor(conn).await?;
        Privileges::read(conn, flavor, users).await
    }

    async fn own_user(conn: &mut MySqlConnection) -> Result<String, EngineError> {
        sqlx::query_scalar("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")
            .fetch_one(conn)
            .await
            .map_err(sqlx_error)
    }

    /// Client threads of `user` exactly (every user when `None`).
    async fn threads(
        conn: &mut MySqlConnection,
        user: Option<&str>,
    ) -> Result<Vec<Thread>, EngineError> {
        // `USER` is utf8mb3 with a case- and trailing-space-insensitive collation: comparing
        // it with a string would match `APP` to `app` and fail outright on a 4-byte
        // character. Comparing bytes is exact and cannot fail.
        let user_bytes = user.map(str::as_bytes);
        let rows = sqlx::query(
            "SELECT ID, USER, HOST, DB, COMMAND FROM information_schema.PROCESSLIST \
             WHERE (? IS NULL OR CAST(USER AS BINARY) = ?) ORDER BY ID",
        )
        .bind(user_bytes)
        .bind(user_bytes)
        .fetch_all(conn)
        .await
        .map_err(sqlx_error)?;
        let threads = rows
            .iter()
            .map(decode_thread)
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlx_error)?;
        Ok(threads
            .into_iter()
            .filter(|t| {
                user.is_none_or(|u| u == t.user)
                    && !SYSTEM_COMMANDS.contains(&t.command.as_str())
                    && t.user != "system user"
                    && t.user != "event_scheduler"
            })
            .collect())
    }

    /// The host patterns of every account of `user` (MariaDB: needs `SELECT` on
    /// `mysql.global_priv`; MySQL: on `mysql.user`).
    async fn account_hosts(
        &self,
        conn: &mut MySqlConnection,
        user: &str,
    ) -> Result<Vec<String>, EngineError> {
        let (sql, table) = match self.flavor(conn).await? {
            Flavor::MariaDb => (
                "SELECT Host FROM mysql.global_priv WHERE Host <> '' AND CAST(User AS BINARY) = ?",
                "mysql.global_priv",
            ),
            Flavor::Mysql => (
                "SELECT Host FROM mysql.user WHERE CAST(User AS BINARY) = ?",
                "mysql.user",
            ),
        };
        // Bytes, exactly, as in `threads`.
        sqlx::query_scalar(sql)
            .bind(user.as_bytes())
            .fetch_all(conn)
            .await
            .map_err(|e| {
                let class = match classify::sqlx_verdict(&e) {
                    classify::Verdict::Failed(class) => class,
                    classify::Verdict::Gone => classify::ErrorClass::Transient,
                };
                classify::engine_error(
                    class,
                    format!(
                        "reading {table} to tell accounts apart (grant SELECT on {table}): {e}"
                    ),
                )
            })
    }

    /// Terminates as [`Engine::terminate`] does, against a watermark taken earlier.
    pub async fn terminate_with_watermark(
        &self,
        request: &TerminateRequest,
        watermark: Option<Watermark>,
    ) -> Result<TerminateOutcome, EngineError> {
        let mut outcome = TerminateOutcome::default();
        let accounts: Vec<Account> = request
            .logins
            .iter()
            .map(|l| Account::parse(l))
            .collect::<Result<_, _>>()?;
        let protected: Vec<Account> = request
            .protected
            .iter()
            .map(|l| Account::parse(l))
            .collect::<Result<_, _>>()?;
        // Sessions below the watermark predate the rotation, unless the server restarted.
        let below = match (request.scope, watermark) {
            (Scope::All, _) => None,
            (Scope::Before(_), None) => {
                return Err(EngineError::Query("no watermark for a cutoff".into()));
            }
            (Scope::Before(_), Some(w)) => {
                // A restart shows as a counter that went backwards, or (if it has since
                // passed the watermark again) as a later boot time.
                let now = self.watermark().await?;
                if now.id < w.id || (now.booted_at - w.booted_at).abs() > 2 {
                    outcome.notes.push(format!(
                        "the server restarted after the watermark (connection id {}) was taken; connection ids \
                         restarted too, so every session of the login was terminated",
                        w.id
                    ));
                    None
                } else {
                    Some(w.id)
                }
            }
        };
        let mut conn = self.connection().await?;
        let own_user = Self::own_user(&mut conn).await?;
        let users: BTreeSet<&str> = accounts.iter().map(|a| a.user.as_str()).collect();
        // Read now, as the sessions are selected, so a privilege granted since start-up counts.
        let privileges = self.privileges(&mut conn, &users).await?;
        if let Privileges::Unknown(why) = &privileges {
            outcome.notes.push(format!(
                "every session was skipped as privileges_unknown: {why}"
            ));
        }
        let mut hosts_by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let needs_hosts = accounts.iter().chain(&protected).any(|a| a.host.is_some());
        for user in &users {
            let hosts = match privileges.hosts(user) {
                Some(hosts) => hosts,
                None if needs_hosts => self.account_hosts(&mut conn, user).await?,
                None => Vec::new(),
            };
            hosts_by_user.insert((*user).to_owned(), hosts);
        }
        let mut to_kill = Vec::new();
        for user in users {
            for thread in Self::threads(&mut conn, Some(user)).await? {
                let hosts = hosts_by_user
                    .get(user)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let account_host = authenticated_host(hosts, &thread.client_host);
                let in_mapping = accounts.iter().any(|a| {
                    a.user == thread.user
                        && a.host.as_deref().is_none_or(|h| Some(h) == account_host)
                });
                if !in_mapping || below.is_some_and(|w| thread.id >= w) {
                    continue;
                }
                let session =
                    thread.session(account_host.map(|h| Account::display(&thread.user, h)));
                let is_protected = protected.iter().any(|p| {
                    p.user == thread.user
                        && p.host.as_deref().is_none_or(|h| Some(h) == account_host)
                });
                let skip = if thread.user == own_user {
                    Some(SkipReason::OwnLogin)
                } else {
                    let standing = privileges.standing(&thread.user, account_host);
                    standing
                        .skip_reason()
                        .or(is_protected.then_some(SkipReason::Protected))
                };
                match skip {
                    Some(reason) => outcome.skipped.push(Skipped { session, reason }),
                    None => {
                        outcome.matched.push(session.clone());
                        to_kill.push((thread.id, session));
                    }
                }
            }
        }
        if request.dry_run {
            return Ok(outcome);
        }
        let intent: Vec<Session> = to_kill.iter().map(|(_, s)| s.clone()).collect();
        record_intent(request.journal.as_deref(), &intent).await?;
        for (id, session) in to_kill {
            match self.kill(&mut conn, id).await {
                Ok(()) => outcome.terminated.push(session),
                Err(e) if classify::sqlx_verdict(&e) == classify::Verdict::Gone => {
                    outcome.skipped.push(Skipped { session, reason: SkipReason::AlreadyGone });
                }
                Err(sqlx::Error::Database(db)) if number_of(&*db) == Some(NOT_OWNER) => outcome.failed.push(Failed {
                    session,
                    error: format!(
                        "{} (grant CONNECTION_ADMIN on MySQL 8, or SUPER / CONNECTION ADMIN on MariaDB, to sever's login)",
                        db.message()
                    ),
                }),
                Err(e) => outcome.failed.push(Failed { session, error: e.to_string() }),
            }
        }
        outcome.remaining =
            Self::verify_gone(&mut conn, &outcome.terminated, request.verify_timeout).await?;
        Ok(outcome)
    }

    /// Logs a warning, once per login, for each of `logins` that maps to an administrator
    /// account (whose sessions are never ended), or when the privileges cannot be read.
    async fn warn_about_administrators(&self, logins: &[String]) {
        let accounts: Vec<Account> = logins
            .iter()
            .filter_map(|l| Account::parse(l).ok())
            .collect();
        let users: BTreeSet<&str> = accounts.iter().map(|a| a.user.as_str()).collect();
        let privileges = match self.connection().await {
            Ok(mut conn) => self.privileges(&mut conn, &users).await,
            Err(e) => Err(e),
        };
        let first_time = |key: &str| {
            self.warned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.to_owned())
        };
        match privileges {
            Err(e) => tracing::debug!(error = %e, "could not read account privileges"),
            Ok(Privileges::Unknown(why)) => {
                if first_time("") {
                    tracing::warn!(
                        "{why}; sessions of mapped logins will be skipped as privileges_unknown"
                    );
                }
            }
            Ok(Privileges::Known(known)) => {
                for (login, account) in logins.iter().zip(&accounts) {
                    let admin = known.get(&account.user).is_some_and(|all| {
                        all.iter()
                            .any(|a| a.admin && account.host.as_deref().is_none_or(|h| h == a.host))
                    });
                    if admin && first_time(login) {
                        tracing::warn!(
                            login = %login,
                            "a mapped login is an administrator account (SUPER, CONNECTION_ADMIN \
                             or SYSTEM_USER, itself or through a role): its sessions are never \
                             terminated"
                        );
                    }
                }
            }
        }
    }

    async fn kill(&self, conn: &mut MySqlConnection, id: u64) -> Result<(), sqlx::Error> {
        if self.rds {
            sqlx::query("CALL mysql.rds_kill(?)")
                .bind(id)
                .execute(conn)
                .await?;
        } else {
            // KILL takes no parameters; the id is a u64, so nothing but digits reaches SQL.
            sqlx::query(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
                .execute(conn)
                .await?;
        }
        Ok(())
    }

    /// Cancels the running statement of thread `id`: on MariaDB by its query id when the
    /// listing read one (`KILL QUERY ID`), so a statement started since is left alone; on
    /// RDS with `mysql.rds_kill_query`.
    async fn kill_query(
        &self,
        conn: &mut MySqlConnection,
        id: u64,
        statement: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        let sql = match (self.rds, statement) {
            (true, _) => {
                sqlx::query("CALL mysql.rds_kill_query(?)")
                    .bind(id)
                    .execute(conn)
                    .await?;
                return Ok(());
            }
            // Integers only reach the text: KILL takes no parameters.
            (false, Some(query_id)) => format!("KILL QUERY ID {query_id}"),
            (false, None) => format!("KILL QUERY {id}"),
        };
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(conn).await?;
        Ok(())
    }

    async fn verify_gone(
        conn: &mut MySqlConnection,
        terminated: &[Session],
        timeout: Duration,
    ) -> Result<Vec<Session>, EngineError> {
        let mut poll = super::Poll::new(timeout);
        let mut remaining = terminated.to_vec();
        while !remaining.is_empty() {
            let alive: BTreeSet<i64> = Self::threads(conn, None)
                .await?
                .iter()
                .map(|t| t.id as i64)
                .collect();
            remaining.retain(|s| alive.contains(&s.pid));
            if remaining.is_empty() || !poll.wait().await {
                break;
            }
        }
        Ok(remaining)
    }
}

#[async_trait]
impl Engine for Mysql {
    async fn check(&self) -> Result<(), EngineError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(sqlx_error)?;
        Ok(())
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

    async fn restore_login(&self, login: &str, gate: &LoginGate) -> Result<Restored, EngineError> {
        self.restore(login, gate).await
    }

    async fn signal(&self, sessions: &[Listed], signal: Signal) -> Result<Vec<Sent>, EngineError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        // Connection ids only rise until a restart, so an id names the session it was
        // listed as, or none.
        let mut conn = self.connection().await?;
        let mut sent = Vec::with_capacity(sessions.len());
        for l in sessions {
            let id = u64::try_from(l.session.pid)
                .map_err(|_| EngineError::Query(format!("not a thread id: {}", l.session.pid)))?;
            let result = match signal {
                Signal::Terminate => self.kill(&mut conn, id).await,
                Signal::Cancel => self.kill_query(&mut conn, id, l.impact.statement_id).await,
            };
            sent.push(match result {
                Ok(()) => Sent::Signalled,
                Err(e) if classify::sqlx_verdict(&e) == classify::Verdict::Gone => Sent::Gone,
                Err(sqlx::Error::Database(db)) if number_of(&*db) == Some(NO_SUCH_QUERY) => {
                    Sent::Gone
                }
                Err(sqlx::Error::Database(db)) if number_of(&*db) == Some(NOT_OWNER) => {
                    Sent::Refused(format!(
                        "{} (grant CONNECTION_ADMIN on MySQL 8, or SUPER / CONNECTION ADMIN on \
                         MariaDB, to sever's login)",
                        db.message()
                    ))
                }
                Err(e) => Sent::Refused(e.to_string()),
            });
        }
        Ok(sent)
    }

    async fn terminate(&self, request: &TerminateRequest) -> Result<TerminateOutcome, EngineError> {
        let watermark = match request.scope {
            Scope::All => None,
            Scope::Before(_) => Some(self.watermark().await?),
        };
        self.terminate_with_watermark(request, watermark).await
    }

    async fn learn_logins(&self, logins: &[String]) -> Result<(), EngineError> {
        // Sessions carry their user name even after DROP USER: nothing to remember. But this
        // is where an operator learns, at start-up, that a mapping cannot work.
        self.warn_about_administrators(logins).await;
        Ok(())
    }
}
