//! Microsoft SQL Server and Azure SQL: sessions from `sys.dm_exec_sessions`, matched on
//! `original_login_name` (not `login_name`, which `EXECUTE AS` changes), user processes only,
//! ended with `KILL <session_id>` after re-checking that the id still belongs to the same
//! session (ids are reused).
//!
//! `login_time` is in the server's local time; sever reads the server's UTC offset first and
//! converts both ways, so cutoffs and reports stay in UTC.
//!
//! Connection settings are an ADO.NET connection string (kept in an env var or a file, as it
//! holds the password): `Server=tcp:db.internal,1433;User Id=sever;Password=…;Encrypt=true;
//! TrustServerCertificateCA=/etc/sever/sqlserver-ca.pem`. sever always sets its application
//! name to `sever`, so its own session is recognisable.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use tiberius::{Client, Config, Row, SqlBrowser, ToSql};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::{
    Engine, EngineError, Failed, Scope, Sent, Session, Signal, SkipReason, Skipped, Standing,
    TerminateOutcome, TerminateRequest, classify, record_intent,
};
use crate::config::{TargetConfig, TerminationConfig};
use crate::select::Selector;
use crate::terminate::drain::{DatabaseGate, Reopened};
use crate::terminate::listing::Listed;
use crate::terminate::lockout::{LoginGate, Restored};

mod activity;
mod listing;
mod lock;
mod signal;

/// `KILL` refused: missing `ALTER ANY CONNECTION` (Azure SQL Database: `KILL DATABASE CONNECTION`).
const KILL_DENIED: u32 = 6102;

/// The session columns, from the sessions view joined to the session's primary connection.
/// Every query below starts with this and adds `AND` predicates.
const SESSIONS: &str = "SELECT s.session_id, s.original_login_name, s.login_name, s.login_time, \
    s.host_name, s.program_name, DB_NAME(s.database_id) AS database_name, c.client_net_address, s.status \
    FROM sys.dm_exec_sessions AS s \
    LEFT JOIN sys.dm_exec_connections AS c ON c.session_id = s.session_id AND c.parent_connection_id IS NULL \
    WHERE s.is_user_process = 1";

/// Whether server login `@P1` is an administrator: a member of `sysadmin`, or holding
/// `CONTROL SERVER` itself, through `public` (principal 2) or through a server role it is a
/// member of, directly or through other roles. `sees_all` says whether sever may see every
/// login's memberships and permissions (`VIEW ANY DEFINITION`); without it the catalog views
/// hide them and a 0 means nothing.
const ADMIN: &str = "WITH roles AS ( \
    SELECT principal_id FROM sys.server_principals WHERE name = @P1 \
    UNION ALL SELECT 2 \
    UNION ALL SELECT m.role_principal_id FROM sys.server_role_members AS m \
        JOIN roles AS r ON m.member_principal_id = r.principal_id \
) \
SELECT IS_SRVROLEMEMBER('sysadmin', @P1) AS is_sysadmin, \
    CASE WHEN EXISTS (SELECT 1 FROM sys.server_permissions AS p \
        JOIN roles AS r ON p.grantee_principal_id = r.principal_id \
        WHERE p.class = 100 AND p.type = 'CL' AND p.state IN ('G', 'W')) \
    THEN 1 ELSE 0 END AS control_server, \
    HAS_PERMS_BY_NAME(NULL, NULL, 'VIEW ANY DEFINITION') AS sees_all";

/// The server clock's distance from UTC, in minutes.
const CLOCK: &str = "SELECT DATEDIFF(minute, GETUTCDATE(), GETDATE()) AS offset_minutes";

type Connection = Client<Compat<TcpStream>>;

/// One SQL Server target, over one connection that is re-opened when it breaks.
pub struct SqlServer {
    config: Config,
    connect_timeout: Duration,
    client: Mutex<Option<Connection>>,
    /// Logins already warned about at learning, so the warning is not repeated every 5 min.
    warned: std::sync::Mutex<BTreeSet<String>>,
    /// The lock login's connection, on a target with `locks = true` ([`lock`]).
    lock: Option<lock::LockClient>,
}

impl std::fmt::Debug for SqlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServer")
            .field("addr", &self.config.get_addr())
            .finish()
    }
}

/// A `sys.dm_exec_sessions` row, `login_time` still in server-local time.
#[derive(Debug, Clone)]
struct Row9 {
    session_id: i16,
    original_login_name: String,
    login_time: NaiveDateTime,
    program_name: Option<String>,
    host_name: Option<String>,
    database_name: Option<String>,
    client_net_address: Option<String>,
    status: String,
}

impl Row9 {
    fn read(row: &Row) -> Result<Self, EngineError> {
        let text = |i: usize| -> Result<Option<String>, EngineError> {
            row.try_get::<&str, _>(i)
                .map(|v| v.map(str::to_owned))
                .map_err(query_error)
        };
        let required = |v: Option<String>, what: &str| {
            v.ok_or_else(|| EngineError::Query(format!("{what} is NULL")))
        };
        Ok(Self {
            session_id: row
                .try_get::<i16, _>(0)
                .map_err(query_error)?
                .ok_or_else(|| EngineError::Query("session_id is NULL".into()))?,
            original_login_name: required(text(1)?, "original_login_name")?,
            login_time: row
                .try_get::<NaiveDateTime, _>(3)
                .map_err(query_error)?
                .ok_or_else(|| EngineError::Query("login_time is NULL".into()))?,
            host_name: text(4)?,
            program_name: text(5)?,
            database_name: text(6)?,
            client_net_address: text(7)?,
            status: required(text(8)?, "status")?,
        })
    }

    fn session(&self, offset: chrono::Duration) -> Session {
        Session {
            pid: i64::from(self.session_id),
            login: Some(self.original_login_name.clone()),
            login_id: None,
            database: self.database_name.clone(),
            application_name: self.program_name.clone(),
            client_addr: self
                .client_net_address
                .clone()
                .or_else(|| self.host_name.clone()),
            backend_start: Some((self.login_time - offset).and_utc()),
            state: Some(self.status.clone()),
        }
    }
}

/// Whom a mapping names: a server login (`app`), or a contained database user
/// (`orders/app`: user `app` authenticated by database `orders`).
#[derive(Debug, Clone)]
struct Principal<'a> {
    name: &'a str,
    database: Option<&'a str>,
}

impl<'a> Principal<'a> {
    fn parse(login: &'a str) -> Self {
        match login.split_once('/') {
            Some((database, name)) if !database.is_empty() && !name.is_empty() => Self {
                name,
                database: Some(database),
            },
            _ => Self {
                name: login,
                database: None,
            },
        }
    }
}

/// Maps a tiberius error to an engine error of its class: socket trouble is `Connect`, a
/// server error goes by its number ([`classify::sqlserver`]).
fn query_error(e: tiberius::error::Error) -> EngineError {
    let class = match &e {
        tiberius::error::Error::Io { .. }
        | tiberius::error::Error::Tls(_)
        | tiberius::error::Error::Routing { .. } => classify::ErrorClass::Unreachable,
        tiberius::error::Error::Server(t) => match classify::sqlserver(t.code()) {
            classify::Verdict::Failed(class) => class,
            classify::Verdict::Gone => classify::ErrorClass::Transient,
        },
        _ => classify::ErrorClass::Transient,
    };
    classify::engine_error(class, e.to_string())
}

/// What the administrator query's answers mean: a 1 is trusted whatever sever may see; a 0
/// only when sever sees every login's memberships and permissions; a NULL (sever may not see
/// the membership) never.
fn admin_standing(
    is_sysadmin: Option<i32>,
    control_server: Option<i32>,
    sees_all: Option<i32>,
) -> Standing {
    if is_sysadmin == Some(1) || control_server == Some(1) {
        Standing::Administrator
    } else if is_sysadmin.is_none() || control_server.is_none() || sees_all != Some(1) {
        Standing::Unknown
    } else {
        Standing::Ordinary
    }
}

fn server_code(e: &tiberius::error::Error) -> Option<u32> {
    match e {
        tiberius::error::Error::Server(t) => Some(t.code()),
        _ => None,
    }
}

impl SqlServer {
    /// A target for the ADO.NET connection string `url`; connects on first use.
    pub fn new(
        url: &SecretString,
        target: &TargetConfig,
        _termination: &TerminationConfig,
    ) -> Result<Self, EngineError> {
        let mut config = Config::from_ado_string(url.expose_secret())
            // The parse error can quote the string, which holds the password.
            .map_err(|_| EngineError::Config("not a valid ADO.NET connection string".into()))?;
        config.application_name("sever");
        Ok(Self {
            config,
            connect_timeout: target.connect_timeout,
            client: Mutex::new(None),
            warned: Default::default(),
            lock: None,
        })
    }

    async fn connect(&self) -> Result<Connection, EngineError> {
        Self::connect_with(&self.config, self.connect_timeout).await
    }

    async fn connect_with(config: &Config, timeout: Duration) -> Result<Connection, EngineError> {
        let addr = config.get_addr();
        // Connects directly, or, for `Server=host\INSTANCE`, asks the SQL Browser first.
        let tcp = tokio::time::timeout(timeout, TcpStream::connect_named(config))
            .await
            .map_err(|_| EngineError::Timeout(timeout))?
            .map_err(|e| EngineError::Connect(format!("{addr}: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| EngineError::Connect(e.to_string()))?;
        Client::connect(config.clone(), tcp.compat_write())
            .await
            .map_err(query_error)
    }

    /// The connection, opened if needed. A caller that hits an error drops it (`*guard = None`).
    async fn client(&self) -> Result<MutexGuard<'_, Option<Connection>>, EngineError> {
        let mut guard = self.client.lock().await;
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        Ok(guard)
    }

    async fn rows(
        client: &mut Connection,
        sql: &str,
        params: &[&dyn tiberius::ToSql],
    ) -> Result<Vec<Row9>, EngineError> {
        let rows = client
            .query(sql, params)
            .await
            .map_err(query_error)?
            .into_first_result()
            .await
            .map_err(query_error)?;
        rows.iter().map(Row9::read).collect()
    }

    async fn offset(client: &mut Connection) -> Result<chrono::Duration, EngineError> {
        let row = client
            .simple_query(CLOCK)
            .await
            .map_err(query_error)?
            .into_row()
            .await
            .map_err(query_error)?
            .ok_or_else(|| EngineError::Query("no answer to the clock query".into()))?;
        let minutes: i32 = row
            .try_get(0)
            .map_err(query_error)?
            .ok_or_else(|| EngineError::Query("clock offset is NULL".into()))?;
        Ok(chrono::Duration::minutes(i64::from(minutes)))
    }

    /// The principal's user sessions (other than sever's own), before `cutoff_local` if
    /// given, or only session `id` when re-checking.
    async fn principal_sessions(
        client: &mut Connection,
        principal: &Principal<'_>,
        cutoff_local: Option<NaiveDateTime>,
        id: Option<i32>,
    ) -> Result<Vec<Row9>, EngineError> {
        let mut sql = format!("{SESSIONS} AND s.original_login_name = @P1");
        let mut params: Vec<&dyn ToSql> = vec![&principal.name];
        match &principal.database {
            Some(database) => {
                params.push(database);
                sql += &format!(
                    " AND s.authenticating_database_id = DB_ID(@P{})",
                    params.len()
                );
            }
            // A server login, not a contained user of the same name.
            None => sql += " AND s.authenticating_database_id = 1",
        }
        if let Some(cutoff) = &cutoff_local {
            params.push(cutoff);
            sql += &format!(" AND s.login_time < @P{}", params.len());
        }
        if let Some(id) = &id {
            params.push(id);
            sql += &format!(" AND s.session_id = @P{}", params.len());
        }
        sql += " AND s.session_id <> @@SPID ORDER BY s.session_id";
        Self::rows(client, &sql, &params).await
    }

    /// When the login's password was last set (server-local time), if SQL Server knows.
    async fn password_last_set(
        client: &mut Connection,
        login: &str,
    ) -> Result<Option<NaiveDateTime>, EngineError> {
        let row = client
            .query(
                "SELECT LOGINPROPERTY(@P1, 'PasswordLastSetTime') AS password_last_set",
                &[&login],
            )
            .await
            .map_err(query_error)?
            .into_row()
            .await
            .map_err(query_error)?;
        match row {
            Some(row) => row.try_get::<NaiveDateTime, _>(0).map_err(query_error),
            None => Ok(None),
        }
    }

    /// Whether `principal` is an administrator, asked when its sessions are selected. A
    /// contained database user is never one: it holds no server-level permission.
    async fn standing(
        client: &mut Connection,
        principal: &Principal<'_>,
    ) -> Result<Standing, EngineError> {
        if principal.database.is_some() {
            return Ok(Standing::Ordinary);
        }
        let row = client
            .query(ADMIN, &[&principal.name])
            .await
            .map_err(query_error)?
            .into_row()
            .await
            .map_err(query_error)?
            .ok_or_else(|| EngineError::Query("no answer to the administrator query".into()))?;
        let flag = |i: usize| row.try_get::<i32, _>(i).map_err(query_error);
        Ok(admin_standing(flag(0)?, flag(1)?, flag(2)?))
    }

    async fn terminate_on(
        client: &mut Connection,
        request: &TerminateRequest,
    ) -> Result<TerminateOutcome, EngineError> {
        let offset = Self::offset(client).await?;
        let cutoff_local = match request.scope {
            Scope::All => None,
            // `login_time` is a `datetime`, rounded to 1/300 s: a session that began up to
            // 3.3 ms before the cutoff can read as after it. Widening by 4 ms may also end a
            // brand-new session (it reconnects) but never spares an old one.
            Scope::Before(at) => {
                Some((at + offset + chrono::Duration::milliseconds(4)).naive_utc())
            }
        };
        let mut outcome = TerminateOutcome::default();
        let mut to_kill = Vec::new();
        let mut activities = None;
        for login in &request.logins {
            let principal = Principal::parse(login);
            let mut cutoff_local = cutoff_local;
            if let (true, Some(cutoff), None) =
                (request.refine_cutoff, cutoff_local, &principal.database)
            {
                // The event named no time: SQL Server knows when the password changed.
                if let Some(set) = Self::password_last_set(client, principal.name).await? {
                    let narrowed = set + chrono::Duration::milliseconds(4);
                    if narrowed < cutoff {
                        cutoff_local = Some(narrowed);
                        outcome.notes.push(format!(
                            "cutoff for {login} narrowed to its PasswordLastSetTime ({} UTC)",
                            (set - offset).and_utc().to_rfc3339()
                        ));
                    }
                }
            }
            let rows = Self::principal_sessions(client, &principal, cutoff_local, None).await?;
            // Only a login with sessions costs the extra round trip.
            let standing = match rows.is_empty() {
                true => Standing::Ordinary,
                false => Self::standing(client, &principal).await?,
            };
            if standing == Standing::Unknown {
                outcome.notes.push(format!(
                    "sessions of {login} were skipped as privileges_unknown: sever cannot tell \
                     whether it is a sysadmin or holds CONTROL SERVER (grant VIEW ANY DEFINITION \
                     to sever's login)"
                ));
            }
            // A killed session shows as such only in its request (`KILLED/ROLLBACK`): read
            // once, and only when there is a session to decide on.
            if !rows.is_empty() && activities.is_none() {
                activities = Some(activity::read(client, false).await?.0);
            }
            for row in rows {
                let session = row.session(offset);
                let now = activities.as_ref().and_then(|a| a.get(&row.session_id));
                let skip = if let Some(reason) = standing.skip_reason() {
                    Some(reason)
                } else if request.protected.contains(&row.original_login_name) {
                    Some(SkipReason::Protected)
                } else if activity::rolling_back(&row, now) {
                    // Already being killed (or rolling back): KILL would only report status.
                    Some(SkipReason::RollingBack)
                } else {
                    None
                };
                match skip {
                    Some(reason) => outcome.skipped.push(Skipped { session, reason }),
                    None => {
                        outcome.matched.push(session.clone());
                        to_kill.push((principal.clone(), row, session));
                    }
                }
            }
        }
        if request.dry_run {
            return Ok(outcome);
        }
        let intent: Vec<Session> = to_kill.iter().map(|(_, _, s)| s.clone()).collect();
        record_intent(request.journal.as_deref(), &intent).await?;
        for (principal, row, session) in to_kill {
            // Session ids are reused: act only if the id still names the same session.
            let now =
                Self::principal_sessions(client, &principal, None, Some(i32::from(row.session_id)))
                    .await?;
            if !now.iter().any(|now| now.login_time == row.login_time) {
                outcome.skipped.push(Skipped {
                    session,
                    reason: SkipReason::AlreadyGone,
                });
                continue;
            }
            // KILL takes no parameters; the id is an i16 from the server, so only digits reach SQL.
            let kill = format!("KILL {}", row.session_id);
            match client.simple_query(kill).await {
                Ok(stream) => match stream.into_results().await {
                    Ok(_) => outcome.terminated.push(session),
                    Err(e) => Self::kill_failed(&mut outcome, session, &e),
                },
                Err(e) => Self::kill_failed(&mut outcome, session, &e),
            }
        }
        outcome.remaining =
            Self::verify_gone(client, &outcome.terminated, offset, request.verify_timeout).await?;
        Ok(outcome)
    }

    pub(super) fn kill_failed(
        outcome: &mut TerminateOutcome,
        session: Session,
        e: &tiberius::error::Error,
    ) {
        match server_code(e) {
            Some(n) if classify::sqlserver(n) == classify::Verdict::Gone => {
                outcome.skipped.push(Skipped { session, reason: SkipReason::AlreadyGone });
            }
            Some(KILL_DENIED) => outcome.failed.push(Failed {
                session,
                error: format!(
                    "{e} (grant ALTER ANY CONNECTION to sever's login; on Azure SQL Database, KILL DATABASE CONNECTION)"
                ),
            }),
            _ => outcome.failed.push(Failed { session, error: e.to_string() }),
        }
    }

    async fn verify_gone(
        client: &mut Connection,
        terminated: &[Session],
        offset: chrono::Duration,
        timeout: Duration,
    ) -> Result<Vec<Session>, EngineError> {
        let mut poll = super::Poll::new(timeout);
        let mut remaining = terminated.to_vec();
        while !remaining.is_empty() {
            let sql = format!("{SESSIONS} AND s.session_id <> @@SPID");
            let alive: BTreeSet<(i64, Option<DateTime<Utc>>)> = Self::rows(client, &sql, &[])
                .await?
                .iter()
                .map(|r| {
                    let s = r.session(offset);
                    (s.pid, s.backend_start)
                })
                .collect();
            remaining.retain(|s| alive.contains(&(s.pid, s.backend_start)));
            if remaining.is_empty() || !poll.wait().await {
                break;
            }
        }
        Ok(remaining)
    }

    /// Runs `work` on the connection, dropping the connection when it fails so the next call
    /// opens a fresh one.
    async fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&mut Connection) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected above");
        let result = work(client).await;
        if matches!(result, Err(EngineError::Connect(_))) {
            *guard = None;
        }
        result
    }
}

#[async_trait]
impl Engine for SqlServer {
    async fn check(&self) -> Result<(), EngineError> {
        self.with_client(async |c| {
            c.simple_query("SELECT 1")
                .await
                .map_err(query_error)?
                .into_results()
                .await
                .map_err(query_error)?;
            Ok(())
        })
        .await
    }

    async fn list(
        &self,
        selector: &Selector,
        include_query: bool,
    ) -> Result<Vec<Listed>, EngineError> {
        self.list_sessions(selector, include_query).await
    }

    async fn login_gate(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        self.read_gate(login).await
    }

    async fn close_login(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        self.close(login).await
    }

    async fn restore_login(&self, login: &str, gate: &LoginGate) -> Result<Restored, EngineError> {
        self.restore(login, gate).await
    }

    async fn database_gate(&self, database: &str) -> Result<Option<DatabaseGate>, EngineError> {
        self.read_database_gate(database).await
    }

    async fn close_database(&self, database: &str) -> Result<Option<DatabaseGate>, EngineError> {
        self.close_db(database).await
    }

    fn closing_ends_sessions(&self) -> bool {
        true
    }

    async fn reopen_database(
        &self,
        database: &str,
        before: &DatabaseGate,
    ) -> Result<Reopened, EngineError> {
        self.reopen_db(database, before).await
    }

    async fn signal(&self, sessions: &[Listed], signal: Signal) -> Result<Vec<Sent>, EngineError> {
        if signal == Signal::Cancel {
            return Err(EngineError::Unsupported(
                "mode cancel: SQL Server cannot cancel another session's statement without \
                 ending the session (use terminate or graceful)"
                    .into(),
            ));
        }
        self.with_client(async |c| {
            let offset = Self::offset(c).await?;
            let mut sent = Vec::with_capacity(sessions.len());
            for l in sessions {
                sent.push(Self::kill_listed(c, &l.session, offset).await?);
            }
            Ok(sent)
        })
        .await
    }

    async fn terminate(&self, request: &TerminateRequest) -> Result<TerminateOutcome, EngineError> {
        self.with_client(async |c| Self::terminate_on(c, request).await)
            .await
    }

    async fn learn_logins(&self, logins: &[String]) -> Result<(), EngineError> {
        // Sessions keep their original_login_name after the login is dropped: nothing to keep.
        // But this is where an operator learns, at start-up, that a mapping cannot work.
        for login in logins {
            let principal = Principal::parse(login);
            let standing = self
                .with_client(async |c| Self::standing(c, &principal).await)
                .await;
            let first_time = || {
                self.warned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(login.clone())
            };
            match standing {
                Ok(Standing::Administrator) if first_time() => tracing::warn!(
                    login = %login,
                    "a mapped login is a sysadmin or holds CONTROL SERVER: its sessions are never \
                     terminated"
                ),
                Ok(Standing::Unknown) if first_time() => tracing::warn!(
                    login = %login,
                    "sever cannot tell whether a mapped login is a sysadmin or holds CONTROL \
                     SERVER (grant VIEW ANY DEFINITION to sever's login): its sessions will be \
                     skipped as privileges_unknown"
                ),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "could not read login privileges"),
            }
        }
        Ok(())
    }
}
