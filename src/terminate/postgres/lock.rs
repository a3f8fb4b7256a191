//! Login locks on PostgreSQL (issue 19): a role's gate is `rolcanlogin`; a lock sets
//! `NOLOGIN` and its end sets `LOGIN` back, over the target's lock pool (`lock_url`, else
//! `url`), which exists only with `locks = true`.
//!
//! `NOLOGIN` refuses new connections only: the role's sessions keep running, and ending
//! them is the caller's next step. Altering a role needs `CREATEROLE` (and, on PostgreSQL
//! 16+, the `ADMIN` option on that role); a superuser role only a superuser may alter.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use super::{INSUFFICIENT_PRIVILEGE, Postgres, query_error};
use crate::store::APPLICATION_NAME;
use crate::terminate::EngineError;
use crate::terminate::drain::{DatabaseGate, Reopened};
use crate::terminate::lockout::{GateAccount, LoginGate, Restored};

/// SQLSTATE undefined_object: the role was dropped between reading and altering it.
const UNDEFINED_OBJECT: &str = "42704";

/// The role's gate; `None` when there is no such role.
const GATE_SQL: &str = "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1";

/// The `ALTER ROLE` statements, built by the server: `%I` quotes the name as an identifier
/// (`quote_ident`), so no name is ever pieced into SQL here. `ALTER ROLE` takes no
/// parameters.
const ALTER_SQL: &str =
    "SELECT format('ALTER ROLE %I ' || CASE WHEN $2 THEN 'LOGIN' ELSE 'NOLOGIN' END, $1::text)";

/// A database's gate, `datconnlimit` (`-1`: no limit); `None` when there is no such database.
const DB_GATE_SQL: &str = "SELECT datconnlimit FROM pg_database WHERE datname = $1";

/// `ALTER DATABASE … CONNECTION LIMIT n`, built by the server with `%I` as for roles.
const DB_ALTER_SQL: &str =
    "SELECT format('ALTER DATABASE %I CONNECTION LIMIT %s', $1::text, $2::int)";

/// SQLSTATE invalid_catalog_name: the database was dropped meanwhile.
const INVALID_CATALOG: &str = "3D000";

impl Postgres {
    /// Adds the lock pool for `lock_url` (connected lazily, at most one connection: locks
    /// are rare), which turns the login-lock methods on.
    pub fn with_locks(mut self, lock_url: &SecretString) -> Result<Self, EngineError> {
        let options = PgConnectOptions::from_str(lock_url.expose_secret())
            // The parse error can quote the URL; say only that it is unusable.
            .map_err(|_| EngineError::Config("not a valid PostgreSQL URL".into()))?
            .options([("statement_timeout", self.statement_timeout.as_str())]);
        let options = match options.get_application_name() {
            Some(_) => options,
            None => options.application_name(APPLICATION_NAME),
        };
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(options);
        self.lock = Some(pool);
        Ok(self)
    }

    fn lock_pool(&self) -> Result<&PgPool, EngineError> {
        self.lock.as_ref().ok_or_else(|| {
            EngineError::Unsupported("locks: this target does not have locks = true".into())
        })
    }

    /// Whether `login` may log in now; `None` when no such role exists.
    async fn can_login(conn: &mut PgConnection, login: &str) -> Result<Option<bool>, EngineError> {
        sqlx::query_scalar(GATE_SQL)
            .bind(login)
            .fetch_optional(conn)
            .await
            .map_err(query_error)
    }

    /// Sets `LOGIN` (`open`) or `NOLOGIN` on `login`; `false` when the role is gone.
    async fn set_login(
        conn: &mut PgConnection,
        login: &str,
        open: bool,
    ) -> Result<bool, EngineError> {
        let statement: String = sqlx::query_scalar(ALTER_SQL)
            .bind(login)
            .bind(open)
            .fetch_one(&mut *conn)
            .await
            .map_err(query_error)?;
        run_altered(conn, statement, UNDEFINED_OBJECT, |message| {
            format!(
                "{message} (the lock login needs CREATEROLE, and on PostgreSQL 16+ the ADMIN \
                 option on role {login:?}; only a superuser may alter a superuser)"
            )
        })
        .await
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
        let mut conn = self.lock_pool()?.acquire().await.map_err(query_error)?;
        Ok(Self::can_login(&mut conn, login)
            .await?
            .map(|open| Self::gate(login, open)))
    }

    /// `CREATEROLE`, when the lock login has neither it nor superuser.
    pub(super) async fn lock_grant(&self) -> Result<Option<String>, EngineError> {
        let held: Option<bool> = sqlx::query_scalar(
            "SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_optional(self.lock_pool()?)
        .await
        .map_err(query_error)?;
        Ok((held != Some(true)).then(|| {
            "CREATEROLE (and, on PostgreSQL 16+, the ADMIN option on each role to lock)".into()
        }))
    }

    /// Reads the gate and, if open, sets `NOLOGIN`, in one transaction; the gate as read.
    pub(super) async fn close(&self, login: &str) -> Result<Option<LoginGate>, EngineError> {
        let mut tx = self.lock_pool()?.begin().await.map_err(query_error)?;
        let Some(open) = Self::can_login(&mut tx, login).await? else {
            return Ok(None);
        };
        let superuser: Option<bool> =
            sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
                .bind(login)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_error)?;
        if superuser == Some(true) {
            return Err(EngineError::Refused(format!(
                "{login:?} is a superuser: sever never locks superusers"
            )));
        }
        if open && !Self::set_login(&mut tx, login, false).await? {
            return Ok(None);
        }
        tx.commit().await.map_err(query_error)?;
        Ok(Some(Self::gate(login, open)))
    }

    /// Sets `LOGIN` back if the lock found it and the role is still `NOLOGIN`.
    pub(super) async fn restore(
        &self,
        login: &str,
        before: &LoginGate,
    ) -> Result<Restored, EngineError> {
        let mut tx = self.lock_pool()?.begin().await.map_err(query_error)?;
        let Some(open) = Self::can_login(&mut tx, login).await? else {
            return Ok(Restored::Gone);
        };
        let now = Self::gate(login, open);
        if now != before.closed() {
            return Ok(Restored::Changed { now });
        }
        let was_open = before.accounts.iter().any(|a| a.open);
        if was_open && !Self::set_login(&mut tx, login, true).await? {
            return Ok(Restored::Gone);
        }
        tx.commit().await.map_err(query_error)?;
        Ok(Restored::Restored)
    }
}

/// Database drains (issue 19): the gate is `datconnlimit`; a drain sets `CONNECTION LIMIT 0`,
/// which refuses new connections of every role but superusers (so the DBA doing the change
/// still gets in), and its end sets the limit back exactly. Needs ownership of the database
/// or membership in its owner role.
impl Postgres {
    async fn connection_limit(
        conn: &mut PgConnection,
        database: &str,
    ) -> Result<Option<i32>, EngineError> {
        sqlx::query_scalar(DB_GATE_SQL)
            .bind(database)
            .fetch_optional(conn)
            .await
            .map_err(query_error)
    }

    /// Sets `database`'s connection limit; `false` when the database is gone.
    async fn set_connection_limit(
        conn: &mut PgConnection,
        database: &str,
        limit: i32,
    ) -> Result<bool, EngineError> {
        let statement: String = sqlx::query_scalar(DB_ALTER_SQL)
            .bind(database)
            .bind(limit)
            .fetch_one(&mut *conn)
            .await
            .map_err(query_error)?;
        run_altered(conn, statement, INVALID_CATALOG, |message| {
            format!(
                "{message} (the lock login must own database {database:?} or be a member of \
                 its owner role to change its CONNECTION LIMIT)"
            )
        })
        .await
    }

    fn db_gate(limit: i32) -> DatabaseGate {
        DatabaseGate {
            setting: limit.to_string(),
        }
    }

    pub(super) async fn read_database_gate(
        &self,
        database: &str,
    ) -> Result<Option<DatabaseGate>, EngineError> {
        let mut conn = self.lock_pool()?.acquire().await.map_err(query_error)?;
        Ok(Self::connection_limit(&mut conn, database)
            .await?
            .map(Self::db_gate))
    }

    /// Reads the limit and, unless it is already 0, sets it to 0, in one transaction.
    pub(super) async fn close_db(
        &self,
        database: &str,
    ) -> Result<Option<DatabaseGate>, EngineError> {
        let mut tx = self.lock_pool()?.begin().await.map_err(query_error)?;
        let Some(limit) = Self::connection_limit(&mut tx, database).await? else {
            return Ok(None);
        };
        if limit != 0 && !Self::set_connection_limit(&mut tx, database, 0).await? {
            return Ok(None);
        }
        tx.commit().await.map_err(query_error)?;
        Ok(Some(Self::db_gate(limit)))
    }

    /// Sets the limit back to `before` if it is still 0.
    pub(super) async fn reopen_db(
        &self,
        database: &str,
        before: &DatabaseGate,
    ) -> Result<Reopened, EngineError> {
        let limit: i32 = before.setting.parse().map_err(|_| {
            EngineError::Config(format!(
                "the kept gate {:?} is not a connection limit",
                before.setting
            ))
        })?;
        let mut tx = self.lock_pool()?.begin().await.map_err(query_error)?;
        let Some(now) = Self::connection_limit(&mut tx, database).await? else {
            return Ok(Reopened::Gone);
        };
        if now != 0 {
            return Ok(Reopened::Changed {
                now: Self::db_gate(now),
            });
        }
        if limit != 0 && !Self::set_connection_limit(&mut tx, database, limit).await? {
            return Ok(Reopened::Gone);
        }
        tx.commit().await.map_err(query_error)?;
        Ok(Reopened::Restored)
    }
}

/// Runs an `ALTER` the server built: `false` when its object is gone (SQLSTATE `gone`), a
/// refusal (42501) as [`EngineError::Rejected`] with `refused(message)` naming the grant.
async fn run_altered(
    conn: &mut PgConnection,
    statement: String,
    gone: &str,
    refused: impl FnOnce(&str) -> String,
) -> Result<bool, EngineError> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(conn)
        .await
    {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(gone) => Ok(false),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
            Err(EngineError::Rejected(refused(db.message())))
        }
        Err(e) => Err(query_error(e)),
    }
}
