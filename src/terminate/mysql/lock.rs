//! Login locks on MySQL and MariaDB (issue 19): a login's gate is one entry per account
//! (`'user'@'host'`) it names, open unless the account is `ACCOUNT LOCK`ed. A lock locks the
//! open accounts; its end unlocks exactly those, over the target's lock pool (`lock_url`,
//! else `url`), which exists only with `locks = true`.
//!
//! `ACCOUNT LOCK` refuses new connections only: the account's sessions keep running. The
//! lock login needs `CREATE USER` (which can also reset any account's password, root's
//! included) and `SELECT` on `mysql.global_priv` (MariaDB) or `mysql.user` (MySQL 8).

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{MySqlConnection, Row};

use super::privileges::Flavor;
use super::{Account, Mysql, number_of};
use crate::terminate::lockout::{GateAccount, LoginGate, Restored};
use crate::terminate::{EngineError, sqlx_error};

/// `Access denied; you need (at least one of) the … privilege(s)`.
const NEEDS_PRIVILEGE: u16 = 1227;
/// `SELECT command denied … for table …`.
const TABLE_DENIED: u16 = 1142;
/// `Operation ALTER USER failed for …`: an account is gone (dropped meanwhile).
const ALTER_USER_FAILED: u16 = 1396;

/// Every account of a user with whether it is locked (MariaDB keeps `account_locked` in the
/// `Priv` JSON, absent until first set; `JSON_VALUE` reads a JSON true as `1` on 10.11,
/// `true` is accepted too; roles have an empty host and are left out). Bound as bytes:
/// exact, as the engine compares user names everywhere.
const MARIADB_GATE: &str = "SELECT Host AS host, \
    CAST(COALESCE(JSON_VALUE(Priv, '$.account_locked'), '0') IN ('1', 'true') AS SIGNED) AS locked \
    FROM mysql.global_priv WHERE Host <> '' AND CAST(User AS BINARY) = ?";
/// The same on MySQL 8.
const MYSQL_GATE: &str = "SELECT Host AS host, CAST(account_locked = 'Y' AS SIGNED) AS locked \
    FROM mysql.user WHERE CAST(User AS BINARY) = ?";

/// `s` as a string literal: `'` and `\` doubled. `ALTER USER` takes no placeholders (it is
/// not a preparable statement), so the account names must be written into the text; they
/// come from the privilege tables, and this keeps any character in them literal. The lock
/// connection clears `NO_BACKSLASH_ESCAPES`, under which a doubled `\` would mean two.
fn string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// `ALTER USER 'u'@'h1', 'u'@'h2' ACCOUNT LOCK` (or `UNLOCK`): one statement for every
/// account, so a lock never stops halfway through a user's accounts.
fn alter_sql(user: &str, hosts: &[&str], lock: bool) -> String {
    let accounts: Vec<String> = hosts
        .iter()
        .map(|h| format!("{}@{}", string_literal(user), string_literal(h)))
        .collect();
    let what = if lock { "LOCK" } else { "UNLOCK" };
    format!("ALTER USER {} ACCOUNT {what}", accounts.join(", "))
}

impl Mysql {
    /// Adds the lock pool for `lock_url` (connected lazily, at most one connection: locks
    /// are rare), which turns the login-lock methods on.
    pub fn with_locks(mut self, lock_url: &SecretString) -> Result<Self, EngineError> {
        let options = MySqlConnectOptions::from_str(lock_url.expose_secret())
            .map_err(|_| EngineError::Config("not a valid MySQL URL".into()))?;
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .idle_timeout(Duration::from_secs(60))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Backslashes in literals are escapes here, as `string_literal` writes them.
                    sqlx::query(
                        "SET SESSION sql_mode = TRIM(BOTH ',' FROM REPLACE(\
                         CONCAT(',', @@SESSION.sql_mode, ','), ',NO_BACKSLASH_ESCAPES,', ','))",
                    )
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        self.lock = Some(pool);
        Ok(self)
    }

    async fn lock_connection(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::MySql>, EngineError> {
        let pool = self.lock.as_ref().ok_or_else(|| {
            EngineError::Unsupported("locks: this target does not have locks = true".into())
        })?;
        pool.acquire().await.map_err(sqlx_error)
    }

    /// The host and lock state of each account `account` names, by host; none when the
    /// user (or that account) does not exist.
    async fn accounts_of(
        &self,
        conn: &mut MySqlConnection,
        account: &Account,
    ) -> Result<Vec<(String, bool)>, EngineError> {
        let flavor = self.flavor(conn).await?;
        let (sql, table) = match flavor {
            Flavor::MariaDb => (MARIADB_GATE, "mysql.global_priv"),
            Flavor::Mysql => (MYSQL_GATE, "mysql.user"),
        };
        let rows = sqlx::query(sql)
            .bind(account.user.as_bytes())
            .fetch_all(conn)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if number_of(&**db) == Some(TABLE_DENIED) => {
                    EngineError::Rejected(format!(
                        "{} (grant the lock login SELECT on {table})",
                        db.message()
                    ))
                }
                _ => sqlx_error(e),
            })?;
        let mut hosts = Vec::with_capacity(rows.len());
        for row in rows {
            let host: String = row.try_get("host").map_err(sqlx_error)?;
            let locked: i64 = row.try_get("locked").map_err(sqlx_error)?;
            if account
                .host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(&host))
            {
                hosts.push((host, locked == 0));
            }
        }
        hosts.sort();
        Ok(hosts)
    }

    fn gate_of(user: &str, hosts: &[(String, bool)]) -> LoginGate {
        LoginGate {
            accounts: hosts
                .iter()
                .map(|(host, open)| GateAccount {
                    account: Account::display(user, host),
                    open: *open,
                })
                .collect(),
        }
    }

    /// Locks (or unlocks) `hosts` of `user`; `false` when one of them is gone.
    async fn alter(
        conn: &mut MySqlConnection,
        user: &str,
        hosts: &[&str],
        lock: bool,
    ) -> Result<bool, EngineError> {
        if hosts.is_empty() {
            return Ok(true);
        }
        let sql = alter_sql(user, hosts, lock);
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn).await {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(db)) if number_of(&*db) == Some(ALTER_USER_FAILED) => {
                Ok(false)
            }
            Err(sqlx::Error::Database(db)) if number_of(&*db) == Some(NEEDS_PRIVILEGE) => {
                Err(EngineError::Rejected(format!(
                    "{} (the lock login needs CREATE USER)",
                    db.message()
                )))
            }
            Err(e) => Err(sqlx_error(e)),
        }
    }

    pub(super) async fn read_gate(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        let account = Account::parse(login)?;
        let mut conn = self.lock_connection().await?;
        let hosts = self.accounts_of(&mut conn, &account).await?;
        Ok((!hosts.is_empty()).then(|| Self::gate_of(&account.user, &hosts)))
    }

    /// `CREATE USER`, when the lock login does not hold it globally (its own privileges are
    /// always visible to it in `information_schema.USER_PRIVILEGES`).
    pub(super) async fn lock_grant(&self) -> Result<Option<String>, EngineError> {
        let mut conn = self.lock_connection().await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES \
             WHERE PRIVILEGE_TYPE = 'CREATE USER'",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(sqlx_error)?;
        Ok((held == 0).then(|| "CREATE USER".into()))
    }

    /// Locks every open account of `login`; the gate as it was.
    pub(super) async fn close(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        let account = Account::parse(login)?;
        let mut conn = self.lock_connection().await?;
        let mut hosts = self.accounts_of(&mut conn, &account).await?;
        // Administrators are never locked, as their sessions are never ended; one whose
        // privileges cannot be read counts as one.
        let users = std::collections::BTreeSet::from([account.user.as_str()]);
        let privileges = self.privileges(&mut conn, &users).await?;
        for (host, _) in &hosts {
            if let Some(reason) = privileges.standing(&account.user, Some(host)).skip_reason() {
                return Err(EngineError::Refused(format!(
                    "{login:?} ({}) is never locked: {}",
                    Account::display(&account.user, host),
                    reason.word()
                )));
            }
        }
        let open: Vec<&str> = hosts
            .iter()
            .filter(|(_, open)| *open)
            .map(|(h, _)| h.as_str())
            .collect();
        if !Self::alter(&mut conn, &account.user, &open, true).await? {
            // An account was dropped meanwhile; the server locked the others. What is
            // left is what this lock changed.
            let now = self.accounts_of(&mut conn, &account).await?;
            hosts.retain(|(h, _)| now.iter().any(|(n, _)| n == h));
        }
        Ok((!hosts.is_empty()).then(|| Self::gate_of(&account.user, &hosts)))
    }

    /// Unlocks the accounts that were open before, if every account is still as the lock
    /// left it.
    pub(super) async fn restore(
        &self,
        login: &str,
        before: &LoginGate,
    ) -> Result<Restored, EngineError> {
        let account = Account::parse(login)?;
        let mut conn = self.lock_connection().await?;
        let hosts = self.accounts_of(&mut conn, &account).await?;
        if hosts.is_empty() {
            return Ok(Restored::Gone);
        }
        let now = Self::gate_of(&account.user, &hosts);
        if now != before.closed() {
            return Ok(Restored::Changed { now });
        }
        // `now` equals `before.closed()`: the same accounts in the same order as `hosts`.
        let reopen: Vec<&str> = hosts
            .iter()
            .zip(&before.accounts)
            .filter(|(_, was)| was.open)
            .map(|((h, _), _)| h.as_str())
            .collect();
        if !Self::alter(&mut conn, &account.user, &reopen, false).await? {
            let hosts = self.accounts_of(&mut conn, &account).await?;
            return Ok(match hosts.is_empty() {
                true => Restored::Gone,
                false => Restored::Changed {
                    now: Self::gate_of(&account.user, &hosts),
                },
            });
        }
        Ok(Restored::Restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes_and_backslashes() {
        assert_eq!(string_literal("app"), "'app'");
        assert_eq!(string_literal("o'brien"), "'o''brien'");
        assert_eq!(string_literal(r"a\'b"), r"'a\\''b'");
        assert_eq!(string_literal(r"x\"), r"'x\\'");
        assert_eq!(string_literal("10.%"), "'10.%'");
        assert_eq!(
            alter_sql("app", &["%", "10.0.0.1"], true),
            "ALTER USER 'app'@'%', 'app'@'10.0.0.1' ACCOUNT LOCK"
        );
        assert_eq!(
            alter_sql("o'b", &["h"], false),
            "ALTER USER 'o''b'@'h' ACCOUNT UNLOCK"
        );
    }
}
