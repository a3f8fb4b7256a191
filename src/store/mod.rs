//! The state store: audit records and service state, in SQLite (default) or PostgreSQL.
//!
//! One set of SQL serves both through sqlx's `Any` driver: every statement uses `$n`
//! placeholders (which SQLite accepts too) and plain TEXT/INTEGER columns, and timestamps are
//! fixed-width RFC 3339 text so they sort and compare the same way in both.
//!
//! At the bottom: may call only `fds` (the pool size its descriptor budget counts).

mod announcements;
mod drains;
mod file;
mod locks;
mod policies;
mod pool;
mod roles;
mod verifications;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, Connection, Row};
use tokio_util::sync::CancellationToken;

pub use announcements::AnnouncementRow;
pub use drains::{DrainRow, Drained, NewDrain};
pub use file::FileWatch;
pub use locks::{Ended, LockRow, NewLock};
pub use policies::{LastEvaluation, PolicyState, Streak};
pub use pool::{KEEP_WARM_EVERY, again_if_lost, connection_lost};
use pool::{STALE_AFTER, release_clean};
pub use roles::{LearnedRole, RoleClass, StoredRoles};
pub use verifications::{VerificationEnd, VerificationRow};

/// How often the store file's identity is checked besides before each commit.
pub const FILE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Failures of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported backend.
    #[error("unsupported store URL scheme {0:?} (use sqlite:// or postgres://)")]
    Scheme(String),
    /// Connecting failed.
    #[error("cannot open the store: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("cannot migrate the store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// The SQLite file was deleted, moved or replaced while open; the path is in the log
    /// (not here, since this text reaches HTTP clients).
    #[error(
        "the store file was deleted or replaced while sever had it open; nothing new is \
         accepted until sever is restarted (its log names the file)"
    )]
    FileLost,
}

/// Which database holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Outcome of claiming an idempotency key (a `webhook-id`, an SNS message id, a rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time this id is seen: go ahead.
    Claimed,
    /// Already processed, as this action.
    Duplicate {
        /// The action the first delivery started.
        action_id: String,
    },
}

/// Connections a PostgreSQL store's pool opens at most (SQLite's has one): what the open-file
/// budget sets aside for the store ([`crate::fds::STORE_POOL`]).
pub const POSTGRES_POOL: u32 = crate::fds::STORE_POOL as u32;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The SQLite file's identity watch; `None` for PostgreSQL and in-memory SQLite.
    file: Option<Arc<FileWatch>>,
    /// The login a PostgreSQL store's connections run as (`session_user`); `None` for SQLite.
    login: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("login", &self.login)
            .finish()
    }
}

/// Formats a timestamp the way the store keeps it: UTC, microseconds, fixed width.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The most bind parameters one multi-row statement takes: well under both SQLite's
/// (32,766) and PostgreSQL's (65,535) limits.
const MAX_BINDS: usize = 8192;

/// How many rows of `columns` values fit in one multi-row statement.
pub fn rows_per_statement(columns: usize) -> usize {
    (MAX_BINDS / columns.max(1)).max(1)
}

/// Multi-row statements of up to this many rows stay prepared on their connection.
const PREPARED_ROWS: usize = 8;
/// Statements padded to a power of two ([`padded`]) stay prepared up to this many rows.
const PREPARED_PADDED: usize = 64;

/// Whether a multi-row statement of `rows` rows (new SQL text per count) should stay
/// prepared. On PostgreSQL an unprepared statement costs a round trip more (Parse and
/// Describe before Bind and Execute); sqlx keeps 100 prepared statements per connection,
/// and counts up to [`PREPARED_ROWS`] are few texts (an event, its records, a few targets),
/// while a large group commit is rare and would only evict the others.
pub fn keep_prepared(rows: usize) -> bool {
    rows <= PREPARED_ROWS
}

/// `n` rounded up to a power of two: a list that can take filler (an `IN` list repeating a
/// value, allowances of no target) keeps to few SQL texts, so it stays prepared.
pub fn padded(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// Whether a statement padded to `rows` rows ([`padded`]) should stay prepared.
pub fn keep_padded_prepared(rows: usize) -> bool {
    rows <= PREPARED_PADDED
}

/// Placeholders for a multi-row `VALUES` list: `($1, $2), ($3, $4)` for two rows of two
/// columns on PostgreSQL, `(?, ?), (?, ?)` on SQLite. Written by hand because sqlx's
/// `QueryBuilder` for the `Any` driver writes `?` for both, which PostgreSQL refuses; and
/// SQLite gets anonymous ones because sqlx looks up each numbered one by name, which SQLite
/// answers with a linear search: quadratic in a statement of thousands of values.
pub fn values_list(backend: Backend, rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => sql.push_str(&format!("${}", row * columns + column + 1)),
            }
        }
        sql.push(')');
    }
    sql
}

impl Store {
    /// Opens the store at `url` and applies pending migrations.
    pub async fn connect(url: &SecretString) -> Result<Self, StoreError> {
        install_default_drivers();
        let url = url.expose_secret();
        let scheme = url.split(':').next().unwrap_or_default();
        let backend = match scheme {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            other => return Err(StoreError::Scheme(other.to_owned())),
        };
        let mut options = AnyPoolOptions::new()
            // A connection whose transaction did not end cleanly is never handed out again.
            // SQLite rolls a transaction back by itself when its COMMIT fails with
            // SQLITE_FULL, an I/O error, out of memory or an interrupt; sqlx still counts the
            // transaction as open, its queued ROLLBACK then fails ("no transaction is
            // active"), and every later `BEGIN` on that connection is refused for good. (A
            // PostgreSQL connection broken mid-transaction fails sqlx's ping on release and is
            // closed by sqlx already; the same check is a second net there.) Checking
            // sqlx's own transaction depth in the pool's hooks covers every caller (the
            // audit chain, the queue's writes, identities, checkpoints, migrations) without
            // each having to remember it, and closes the connection: the next one is opened
            // fresh, so writes work again as soon as space or I/O is back.
            .after_release(|conn, _| Box::pin(release_clean(conn)))
            // A PostgreSQL store is often on another host, where sqlx's ping before every
            // acquire is a round trip on every statement's path (five per rotation). sqlx
            // pings each connection as it goes back anyway, and [`Store::keep_warm`] hands
            // every idle one back that way every [`KEEP_WARM_EVERY`], so an idle connection
            // was proven alive moments ago; one idle longer than [`STALE_AFTER`] (no keeper:
            // the CLI) is pinged here as before. One that died in between fails its
            // statement, and is closed: transactions retry ([`crate::audit`]'s loop), and
            // the rotation's direct statements run again ([`again_if_lost`]).
            .test_before_acquire(backend == Backend::Sqlite)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if backend == Backend::Postgres && meta.idle_for > STALE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(!conn.is_in_transaction())
                })
            })
            // Fail fast when the store is down, well within a request's time limit: the
            // sender gets `503 unavailable` (nothing accepted) and retries, instead of
            // waiting for sqlx's 30 s default and a timeout.
            .acquire_timeout(std::time::Duration::from_secs(5))
            .max_connections(match backend {
                // SQLite has one writer. With several connections, a writer that finds the
                // lock taken is put to sleep by SQLite's busy handler (1 ms, then up to
                // 100 ms a turn) and a deferred transaction can fail outright; one connection
                // makes this process's statements queue in order instead, and the queue
                // groups accepted events into shared commits. Other processes (the CLI)
                // still open their own.
                Backend::Sqlite => 1,
                Backend::Postgres => POSTGRES_POOL,
            });
        if backend == Backend::Sqlite {
            // SQLite's one connection is kept for the life of the process: nothing gains from
            // reopening a local file, and a store file deleted under sever stays readable
            // through the open connection, so work accepted before the loss was noticed can
            // still finish (a reopened connection would find an empty new file, or none).
            options = options.idle_timeout(None).max_lifetime(None);
        }
        let url = match backend {
            Backend::Postgres => with_application_name(url)?,
            Backend::Sqlite => url.to_owned(),
        };
        let url = url.as_str();
        let pool = options.connect(url).await.map_err(StoreError::Connect)?;
        if backend == Backend::Sqlite {
            // Write-ahead logging: one fsync per commit instead of several (synchronous stays
            // FULL, so a commit is still durable), and readers (the CLI, audit exports) no
            // longer block the writer. The mode is stored in the file, so this sticks.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(StoreError::Connect)?;
        }
        match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await?,
        }
        let file = match backend {
            Backend::Sqlite => SqliteConnectOptions::from_str(url)
                .ok()
                .and_then(|o| FileWatch::new(o.get_filename()))
                .map(Arc::new),
            Backend::Postgres => None,
        };
        // The name the store's connections show on the server: a PostgreSQL store often
        // shares a server with a target, and there this login is sever's own.
        let login = match backend {
            Backend::Postgres => Some(
                sqlx::query_scalar::<_, String>("SELECT session_user::text")
                    .fetch_one(&pool)
                    .await
                    .map_err(StoreError::Connect)?,
            ),
            Backend::Sqlite => None,
        };
        Ok(Self {
            pool,
            backend,
            file,
            login,
        })
    }

    /// The connection pool, for modules that keep their own tables here.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a transaction that writes. On SQLite it takes the write lock at `BEGIN
    /// IMMEDIATE`: a deferred transaction takes a read snapshot at its first statement and
    /// upgrades it to write, and when another process (the CLI, or the server beside it)
    /// commits in between, the upgrade fails at once with "database is locked"
    /// (`SQLITE_BUSY_SNAPSHOT`, which the busy timeout cannot wait out). Taken up front, the
    /// lock is waited for instead.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The login a PostgreSQL store's connections run as, which counts as sever's own login
    /// on every PostgreSQL target; `None` for SQLite.
    pub fn login(&self) -> Option<&str> {
        self.login.as_deref()
    }

    /// Checks that the SQLite file is still the one sever opened (see [`FileWatch`]); the
    /// caller holds a pool connection (e.g. is inside a transaction). Always `Ok` for
    /// PostgreSQL.
    pub fn check_file(&self) -> Result<(), StoreError> {
        match &self.file {
            Some(watch) => watch.check().map_err(|_| StoreError::FileLost),
            None => Ok(()),
        }
    }

    /// Checks the store file now, holding a connection while doing so (for `/readyz` and
    /// the timer). `None` when the store is no file (PostgreSQL, in-memory SQLite).
    pub async fn verify_file(&self) -> Option<Result<(), StoreError>> {
        let watch = self.file.as_ref()?;
        let result = match self.pool.acquire().await {
            Ok(_held) => watch.check(),
            // No connection to hold: compare the path alone, which needs none.
            Err(_) => watch.check_path(),
        };
        Some(result.map_err(|_| StoreError::FileLost))
    }

    /// Checks the store file every [`FILE_CHECK_EVERY`] until `stop`, so a loss is noticed
    /// (and logged) even while nothing is submitted.
    pub async fn watch_file(self, stop: CancellationToken) {
        if self.file.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(FILE_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    if let Some(Err(_)) = self.verify_file().await {
                        // Logged once when latched; nothing more to learn.
                        return;
                    }
                }
            }
        }
    }

    /// Records `key` as processed by `action_id` unless it already was. Keys are namespaced
    /// by their caller (`webhook:…`, `sns:…`, `aws-rotation:…`).
    pub async fn claim(
        &self,
        webhook_id: &str,
        action_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Claim, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO webhook_deliveries (webhook_id, received_at, action_id) \
             VALUES ($1, $2, $3) ON CONFLICT (webhook_id) DO NOTHING",
        )
        .bind(webhook_id)
        .bind(timestamp(now))
        .bind(action_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Claim::Claimed);
        }
        let row = sqlx::query("SELECT action_id FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(webhook_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(Claim::Duplicate {
            action_id: row.try_get("action_id")?,
        })
    }

    /// Forgets a claim whose processing could not be recorded, so the sender's retry is served.
    pub async fn release(&self, webhook_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(webhook_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Drops claims made before `before`; returns how many.
    pub async fn prune_claims(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
                .bind(timestamp(before))
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// The last value a watcher recorded under `key`.
    pub async fn mark(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM watch_marks WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    /// Records `value` under `key`, replacing what was there.
    pub async fn set_mark(
        &self,
        key: &str,
        value: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO watch_marks (key, value, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, seen_at = excluded.seen_at",
        )
        .bind(key)
        .bind(value)
        .bind(timestamp(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Remembers engine identities (e.g. role oids) seen for logins on a target.
    pub async fn remember_identities(
        &self,
        target: &str,
        seen: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (login, identity) in seen {
            sqlx::query(
                "INSERT INTO login_identities (target, login, identity, seen_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (target, login, identity) DO UPDATE SET seen_at = excluded.seen_at",
            )
            .bind(target)
            .bind(login)
            .bind(identity)
            .bind(timestamp(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every identity ever seen for any login on `target`, as (login, identity).
    pub async fn every_identity(&self, target: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT login, identity FROM login_identities WHERE target = $1")
            .bind(target)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("login")?, row.try_get("identity")?)))
            .collect()
    }

    /// Every identity ever seen for `logins` on `target`, as (login, identity).
    pub async fn identities(
        &self,
        target: &str,
        logins: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        // Few rows per target: filtering here keeps the SQL identical on both backends.
        let rows = again_if_lost(|| {
            sqlx::query("SELECT login, identity FROM login_identities WHERE target = $1")
                .bind(target)
                .fetch_all(&self.pool)
        })
        .await?;
        let mut out = Vec::new();
        for row in rows {
            let login: String = row.try_get("login")?;
            if logins.contains(&login) {
                out.push((login, row.try_get("identity")?));
            }
        }
        Ok(out)
    }
}

/// The application name sever's connections show (`pg_stat_activity.application_name`),
/// unless the URL or `PGAPPNAME` sets one.
pub const APPLICATION_NAME: &str = "sever";

/// A PostgreSQL store URL with `application_name=sever` added when neither the URL nor
/// `PGAPPNAME` names one, so the store's sessions are recognisable on a shared server. (The
/// `Any` driver is configured by URL alone.)
fn with_application_name(url: &str) -> Result<String, StoreError> {
    // Parse errors can quote the URL, which holds the password: say only what is wrong.
    let unusable = || {
        StoreError::Connect(sqlx::Error::Configuration(
            "not a valid PostgreSQL URL".into(),
        ))
    };
    let options = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|_| unusable())?;
    if options.get_application_name().is_some() {
        return Ok(url.to_owned());
    }
    let mut parsed = url::Url::parse(url).map_err(|_| unusable())?;
    parsed
        .query_pairs_mut()
        .append_pair("application_name", APPLICATION_NAME);
    Ok(parsed.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let store = Store::connect(&SecretString::from(url)).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_delivery_is_claimed_once_and_can_be_pruned() {
        let (_dir, store) = temp_store().await;
        let now = Utc::now();
        assert_eq!(
            store.claim("msg_1", "a1", now).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(
            store.claim("msg_1", "a2", now).await.unwrap(),
            Claim::Duplicate {
                action_id: "a1".into()
            }
        );
        assert_eq!(
            store
                .prune_claims(now + chrono::Duration::seconds(1))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store.claim("msg_1", "a3", now).await.unwrap(),
            Claim::Claimed
        );
    }

    #[tokio::test]
    async fn identities_are_remembered_per_target_and_login() {
        let (_dir, store) = temp_store().await;
        let now = Utc::now();
        store
            .remember_identities("pg", &[("app".into(), "16384".into())], now)
            .await
            .unwrap();
        store
            .remember_identities("pg", &[("app".into(), "16384".into())], now)
            .await
            .unwrap();
        store
            .remember_identities("other", &[("app".into(), "1".into())], now)
            .await
            .unwrap();
        let found = store.identities("pg", &["app".into()]).await.unwrap();
        assert_eq!(found, vec![("app".to_string(), "16384".to_string())]);
        assert!(
            store
                .identities("pg", &["nobody".into()])
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn marks_are_replaced_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let url = SecretString::from(format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("s.db").display()
        ));
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(store.mark("vault:a").await.unwrap(), None);
        store.set_mark("vault:a", "1", Utc::now()).await.unwrap();
        store.set_mark("vault:a", "2", Utc::now()).await.unwrap();
        drop(store);
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(store.mark("vault:a").await.unwrap().as_deref(), Some("2"));
    }

    #[test]
    fn values_lists_number_every_placeholder_once() {
        assert_eq!(values_list(Backend::Postgres, 1, 1), "($1)");
        assert_eq!(
            values_list(Backend::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(values_list(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
        assert_eq!(rows_per_statement(9) * 9, 8190);
        assert_eq!(rows_per_statement(0), MAX_BINDS);
        assert_eq!((padded(0), padded(1), padded(3), padded(8)), (1, 1, 4, 8));
        assert!(keep_prepared(8) && !keep_prepared(9));
        assert!(keep_padded_prepared(64) && !keep_padded_prepared(128));
    }

    #[tokio::test]
    async fn unknown_scheme_is_refused() {
        let err = Store::connect(&SecretString::from("mysql://x/y".to_string()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Scheme(_)));
    }
}
