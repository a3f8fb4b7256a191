//! Login locks on SQL Server (issue 19), over the target's lock connection (`lock_url`,
//! else `url`), which exists only with `locks = true`:
//! - a server login's gate is `sys.server_principals.is_disabled`: a lock runs
//!   `ALTER LOGIN [name] DISABLE`, its end `ENABLE` (needs `ALTER ANY LOGIN`);
//! - a contained database user's (`orders/app`) is whether it holds `CONNECT` in its
//!   database, read from that database's catalog views by three-part name; a lock runs
//!   `REVOKE CONNECT FROM [user]`, its end `GRANT CONNECT TO [user]`, in that database
//!   through `EXEC [db].sys.sp_executesql` (`USE` would change the connection's database
//!   for everything after it). Needs `CONTROL` on the database. Azure SQL Database allows
//!   three-part names only for the database the connection is in: there the lock login must
//!   connect to that database.
//!
//! Neither touches connected sessions. Tested against the TDS stand-in only.

use secrecy::{ExposeSecret, SecretString};
use tiberius::Config;
use tokio::sync::Mutex;

use super::{Connection, Principal, SqlServer, query_error, server_code};
use crate::terminate::EngineError;
use crate::terminate::drain::{DatabaseGate, Reopened};
use crate::terminate::lockout::{GateAccount, LoginGate, Restored};

/// A server login's gate: whether sever may alter logins, and the login's `is_disabled`
/// (NULL when there is no such login, or when sever may not see it).
const LOGIN_GATE: &str = "SELECT HAS_PERMS_BY_NAME(NULL, NULL, 'ALTER ANY LOGIN') AS may_alter, \
    (SELECT CAST(p.is_disabled AS int) FROM sys.server_principals AS p \
     WHERE p.name = @P1 AND p.type IN ('S', 'U', 'G', 'E', 'X')) AS is_disabled";

/// A contained user's gate in database `{db}` (bracket-quoted; `@P2` is its name): whether
/// sever may grant and revoke there, and whether the user holds `CONNECT` (NULL when there
/// is no such user).
const USER_GATE: &str = "SELECT HAS_PERMS_BY_NAME(@P2, 'DATABASE', 'CONTROL') AS may_alter, \
    (SELECT CASE WHEN EXISTS (SELECT 1 FROM {db}.sys.database_permissions AS d \
        WHERE d.grantee_principal_id = u.principal_id AND d.class = 0 AND d.type = 'CO' \
        AND d.state IN ('G', 'W')) THEN 1 ELSE 0 END \
     FROM {db}.sys.database_principals AS u WHERE u.name = @P1) AS can_connect";

/// Errors that mean the lock login may not do this: the login or user "does not exist or
/// you do not have permission" (15151, 15247), no permission on the object (1088, 4613),
/// denied (229, 230, 262, 297, 300).
const DENIED: [u32; 9] = [15151, 15247, 1088, 4613, 229, 230, 262, 297, 300];

/// Invalid object name (208) or no such database (911): the user's database is gone.
const NO_DATABASE: [u32; 2] = [208, 911];

/// `name` as a delimited identifier, as `QUOTENAME` writes it: in brackets, `]` doubled.
/// `ALTER LOGIN`, `GRANT` and `REVOKE` take no parameters, so the name goes into the text.
fn bracket(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// The lock login's own connection, re-opened when it breaks.
pub(super) struct LockClient {
    config: Config,
    client: Mutex<Option<Connection>>,
}

impl SqlServer {
    /// Adds the lock connection for the ADO.NET string `lock_url` (opened on first use),
    /// which turns the login-lock methods on.
    pub fn with_locks(mut self, lock_url: &SecretString) -> Result<Self, EngineError> {
        let mut config = Config::from_ado_string(lock_url.expose_secret())
            // The parse error can quote the string, which holds the password.
            .map_err(|_| EngineError::Config("not a valid ADO.NET connection string".into()))?;
        config.application_name("sever");
        self.lock = Some(LockClient {
            config,
            client: Mutex::new(None),
        });
        Ok(self)
    }

    /// Runs `work` on the lock connection, opened if needed and dropped if it broke.
    async fn with_lock_client<T>(
        &self,
        work: impl AsyncFnOnce(&mut Connection) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let lock = self.lock.as_ref().ok_or_else(|| {
            EngineError::Unsupported("locks: this target does not have locks = true".into())
        })?;
        let mut guard = lock.client.lock().await;
        if guard.is_none() {
            *guard = Some(Self::connect_with(&lock.config, self.connect_timeout).await?);
        }
        let result = work(guard.as_mut().expect("connected above")).await;
        if matches!(result, Err(EngineError::Connect(_))) {
            *guard = None;
        }
        result
    }

    /// Whether `principal` may authenticate now; `None` when it does not exist.
    async fn gate_open(
        client: &mut Connection,
        principal: &Principal<'_>,
    ) -> Result<Option<bool>, EngineError> {
        let result = match principal.database {
            None => client.query(LOGIN_GATE, &[&principal.name]).await,
            Some(db) => {
                let sql = USER_GATE.replace("{db}", &bracket(db));
                client.query(sql, &[&principal.name, &db]).await
            }
        };
        let row = match result {
            Ok(stream) => stream.into_row().await,
            Err(e) => Err(e),
        };
        let row = match row {
            Ok(row) => {
                row.ok_or_else(|| EngineError::Query("no answer to the gate query".into()))?
            }
            Err(e) if server_code(&e).is_some_and(|n| NO_DATABASE.contains(&n)) => return Ok(None),
            Err(e) => return Err(query_error(e)),
        };
        let may_alter: Option<i32> = row.try_get(0).map_err(query_error)?;
        let value: Option<i32> = row.try_get(1).map_err(query_error)?;
        match (value, principal.database) {
            (Some(disabled), None) => Ok(Some(disabled == 0)),
            (Some(connect), Some(_)) => Ok(Some(connect == 1)),
            // Without the permission the catalog may hide it: absent means nothing then.
            (None, _) if may_alter != Some(1) => Err(Self::denied(principal, None)),
            (None, _) => Ok(None),
        }
    }

    fn denied(principal: &Principal<'_>, message: Option<&str>) -> EngineError {
        let needs = match principal.database {
            None => "ALTER ANY LOGIN".to_owned(),
            Some(db) => format!("CONTROL on database {}", bracket(db)),
        };
        let said = message.map(|m| format!("{m} ")).unwrap_or_default();
        EngineError::Rejected(format!("{said}(the lock login needs {needs})"))
    }

    /// Opens (`ENABLE`, `GRANT CONNECT`) or closes (`DISABLE`, `REVOKE CONNECT`) the gate.
    async fn set_gate(
        client: &mut Connection,
        principal: &Principal<'_>,
        open: bool,
    ) -> Result<(), EngineError> {
        let result = match principal.database {
            None => {
                let action = if open { "ENABLE" } else { "DISABLE" };
                let sql = format!("ALTER LOGIN {} {action}", bracket(principal.name));
                match client.simple_query(sql).await {
                    Ok(stream) => stream.into_results().await.map(drop),
                    Err(e) => Err(e),
                }
            }
            Some(db) => {
                let user = bracket(principal.name);
                let statement = match open {
                    true => format!("GRANT CONNECT TO {user}"),
                    false => format!("REVOKE CONNECT FROM {user}"),
                };
                let sql = format!("EXEC {}.sys.sp_executesql @P1", bracket(db));
                match client.query(sql, &[&statement]).await {
                    Ok(stream) => stream.into_results().await.map(drop),
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(tiberius::error::Error::Server(t)) if DENIED.contains(&t.code()) => {
                Err(Self::denied(principal, Some(t.message())))
            }
            Err(e) => Err(query_error(e)),
        }
    }

    fn gate(login: &str, open: bool) -> LoginGate {
        LoginGate {
            accounts: vec![GateAccount {
                account: login.to_owned(),
                open,
            }],
        }
    }

    pub(super) async fn read_gate(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        let principal = Principal::parse(login);
        self.with_lock_client(async |c| {
            let open = Self::gate_open(c, &principal).await?;
            Ok(open.map(|open| Self::gate(login, open)))
        })
        .await
    }

    pub(super) async fn close(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        let principal = Principal::parse(login);
        self.with_lock_client(async |c| {
            let Some(open) = Self::gate_open(c, &principal).await? else {
                return Ok(None);
            };
            // Administrators are never locked, as their sessions are never ended.
            if let Some(reason) = Self::standing(c, &principal).await?.skip_reason() {
                return Err(EngineError::Refused(format!(
                    "{login:?} is never locked: {}",
                    reason.word()
                )));
            }
            if open {
                Self::set_gate(c, &principal, false).await?;
            }
            Ok(Some(Self::gate(login, open)))
        })
        .await
    }

    pub(super) async fn restore(
        &self,
        login: &str,
        before: &LoginGate,
    ) -> Result<Restored, EngineError> {
        let principal = Principal::parse(login);
        self.with_lock_client(async |c| {
            let Some(open) = Self::gate_open(c, &principal).await? else {
                return Ok(Restored::Gone);
            };
            let now = Self::gate(login, open);
            if now != before.closed() {
                return Ok(Restored::Changed { now });
            }
            if before.accounts.iter().any(|a| a.open) {
                Self::set_gate(c, &principal, true).await?;
            }
            Ok(Restored::Restored)
        })
        .await
    }
}

/// A database's gate: `user_access_desc` (`MULTI_USER`, `RESTRICTED_USER`, `SINGLE_USER`).
const DB_GATE: &str = "SELECT user_access_desc FROM sys.databases WHERE name = @P1";

/// The settings a gate may be restored to: written into `ALTER DATABASE`, so only these.
const USER_ACCESS: [&str; 3] = ["MULTI_USER", "RESTRICTED_USER", "SINGLE_USER"];

/// `User does not have permission to alter database` (5011), and the denials of [`DENIED`].
const DB_DENIED: [u32; 2] = [5011, 262];

/// Database drains (issue 19): the gate is `user_access_desc`; a drain runs
/// `ALTER DATABASE [db] SET RESTRICTED_USER WITH ROLLBACK IMMEDIATE`, which refuses new
/// connections but those of `db_owner`, `dbcreator` and `sysadmin` members and ends the
/// other sessions at once (the runner lists them first, so each is audited); its end sets
/// the access back (`MULTI_USER`). Not `SINGLE_USER`: it gives the one slot to whoever
/// connects first, and is not allowed in an availability group. Needs `ALTER` on the
/// database. Tested against the TDS stand-in only.
impl SqlServer {
    async fn user_access(
        client: &mut Connection,
        database: &str,
    ) -> Result<Option<String>, EngineError> {
        let row = match client.query(DB_GATE, &[&database]).await {
            Ok(stream) => stream.into_row().await,
            Err(e) => Err(e),
        }
        .map_err(query_error)?;
        match row {
            None => Ok(None),
            Some(row) => Ok(row
                .try_get::<&str, _>(0)
                .map_err(query_error)?
                .map(str::to_owned)),
        }
    }

    async fn set_user_access(
        client: &mut Connection,
        database: &str,
        access: &str,
    ) -> Result<bool, EngineError> {
        if !USER_ACCESS.contains(&access) {
            return Err(EngineError::Config(format!(
                "{access:?} is not a database user access setting"
            )));
        }
        let rollback = match access {
            "MULTI_USER" => "",
            _ => " WITH ROLLBACK IMMEDIATE",
        };
        let sql = format!(
            "ALTER DATABASE {} SET {access}{rollback}",
            bracket(database)
        );
        let result = match client.simple_query(sql).await {
            Ok(stream) => stream.into_results().await.map(drop),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if server_code(&e).is_some_and(|n| NO_DATABASE.contains(&n)) => Ok(false),
            Err(tiberius::error::Error::Server(t)) if DB_DENIED.contains(&t.code()) => {
                Err(EngineError::Rejected(format!(
                    "{} (the lock login needs ALTER on database {})",
                    t.message(),
                    bracket(database)
                )))
            }
            Err(e) => Err(query_error(e)),
        }
    }

    pub(super) async fn read_database_gate(
        &self,
        database: &str,
    ) -> Result<Option<DatabaseGate>, EngineError> {
        self.with_lock_client(async |c| {
            let access = Self::user_access(c, database).await?;
            Ok(access.map(|setting| DatabaseGate { setting }))
        })
        .await
    }

    pub(super) async fn close_db(
        &self,
        database: &str,
    ) -> Result<Option<DatabaseGate>, EngineError> {
        self.with_lock_client(async |c| {
            let Some(setting) = Self::user_access(c, database).await? else {
                return Ok(None);
            };
            if setting != "RESTRICTED_USER"
                && !Self::set_user_access(c, database, "RESTRICTED_USER").await?
            {
                return Ok(None);
            }
            Ok(Some(DatabaseGate { setting }))
        })
        .await
    }

    pub(super) async fn reopen_db(
        &self,
        database: &str,
        before: &DatabaseGate,
    ) -> Result<Reopened, EngineError> {
        self.with_lock_client(async |c| {
            let Some(now) = Self::user_access(c, database).await? else {
                return Ok(Reopened::Gone);
            };
            if now != "RESTRICTED_USER" {
                return Ok(Reopened::Changed {
                    now: DatabaseGate { setting: now },
                });
            }
            if before.setting != now && !Self::set_user_access(c, database, &before.setting).await?
            {
                return Ok(Reopened::Gone);
            }
            Ok(Reopened::Restored)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bracketed_with_closing_brackets_doubled() {
        assert_eq!(bracket("app"), "[app]");
        assert_eq!(bracket("o]brien"), "[o]]brien]");
        assert_eq!(bracket("a[b]]"), "[a[b]]]]]");
        assert_eq!(bracket("x'; DROP LOGIN sa; --"), "[x'; DROP LOGIN sa; --]");
    }
}
