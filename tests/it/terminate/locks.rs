//! Login locks (issue 19), engine by engine, called directly as the lock runner will: the
//! gate is read, closed (new connections refused, sessions untouched) and restored exactly,
//! a change made meanwhile is reported and left alone, a dropped login is `gone`, a missing
//! grant is named, and a target without `locks = true` refuses. Real PostgreSQL and MariaDB;
//! SQL Server through the TDS stand-in, which records the statements it was sent.

use std::sync::Arc;

use secrecy::SecretString;
use sever::config::Config;
use sever::store::Store;
use sever::terminate::lockout::{GateAccount, LoginGate, Restored};
use sever::terminate::{Engine, EngineError, Targets};
use sever_testkit::mariadb::TestMariaDb;
use sever_testkit::pg::TestPostgres;
use sever_testkit::tds::TdsStandIn;
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;

use crate::support::config::{ConfigBuilder, file};
use crate::support::scenarios::{Database, tds_session};
use crate::support::sever::Workspace;

/// Target `main` of `config`, built as sever builds it (`Targets::from_config`).
async fn build(ws: &Workspace, config: ConfigBuilder) -> Arc<dyn Engine> {
    let config = Config::parse(&config.toml()).unwrap();
    let url = format!("sqlite://{}?mode=rwc", ws.path("locks.db").display());
    let store = Store::connect(&SecretString::from(url)).await.unwrap();
    let targets = Targets::from_config(&config, &store).unwrap();
    targets.get("main").unwrap().clone()
}

/// `db`'s target `main` (creating sever's admin login there).
async fn base(db: &dyn Database, ws: &Workspace) -> ConfigBuilder {
    ConfigBuilder::new().merge_toml(&db.target(ws, "main").await)
}

/// `base` with `locks = true` and, when given, `lock_url` (in a secret file).
async fn locking(base: &ConfigBuilder, ws: &Workspace, lock_url: Option<&str>) -> Arc<dyn Engine> {
    let mut config = base.clone().set("targets.main.locks", true);
    if let Some(url) = lock_url {
        config = config.set(
            "targets.main.lock_url",
            file(&ws.secret_path("main.lock_url", url)),
        );
    }
    build(ws, config).await
}

fn gate(accounts: &[(&str, bool)]) -> LoginGate {
    LoginGate {
        accounts: accounts
            .iter()
            .map(|(account, open)| GateAccount {
                account: (*account).into(),
                open: *open,
            })
            .collect(),
    }
}

fn unsupported(result: Result<impl std::fmt::Debug, EngineError>) {
    match result {
        Err(EngineError::Unsupported(why)) => assert!(why.contains("locks = true"), "{why}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

fn rejected_naming(result: Result<impl std::fmt::Debug, EngineError>, privilege: &str) {
    match result {
        Err(EngineError::Rejected(why)) => assert!(why.contains(privilege), "{why}"),
        other => panic!("expected Rejected naming {privilege}, got {other:?}"),
    }
}

// --- PostgreSQL -------------------------------------------------------------------------

/// A role whose name needs quoting as an identifier.
const ROLE: &str = "O'Brien \"ops\"";

async fn pg_connect(pg: &TestPostgres, login: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(pg.port())
        .username(login)
        .password("pw")
        .database("postgres");
    sqlx::PgConnection::connect_with(&options).await
}

async fn can_login(pg: &TestPostgres, role: &str) -> Option<bool> {
    let mut conn = pg_connect(pg, "locker").await.unwrap();
    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_optional(&mut conn)
        .await
        .unwrap()
}

/// A server with sever's admin, a `locker` login holding CREATEROLE, role [`ROLE`] (LOGIN)
/// and `batch` (NOLOGIN), and target `main` locking through `locker`.
async fn pg_setup(ws: &Workspace) -> (TestPostgres, Arc<dyn Engine>) {
    let pg = TestPostgres::start();
    pg.exec(
        "CREATE ROLE locker LOGIN CREATEROLE PASSWORD 'pw'; \
         CREATE ROLE \"O'Brien \"\"ops\"\"\" LOGIN PASSWORD 'pw'; \
         CREATE ROLE batch NOLOGIN PASSWORD 'pw'",
    )
    .await;
    let base = base(&pg, ws).await;
    let engine = locking(&base, ws, Some(&pg.url("locker", "pw", "postgres"))).await;
    (pg, engine)
}

#[tokio::test]
async fn postgres_a_locked_role_is_refused_keeps_its_sessions_and_logs_in_after_restore() {
    let ws = Workspace::new();
    let (pg, engine) = pg_setup(&ws).await;
    let mut session = pg_connect(&pg, ROLE).await.unwrap();

    let before = engine.close_login(ROLE).await.unwrap();
    assert_eq!(before, Some(gate(&[(ROLE, true)])));
    assert_eq!(
        engine.login_gate(ROLE).await.unwrap(),
        Some(gate(&[(ROLE, false)]))
    );
    let refused = pg_connect(&pg, ROLE).await.unwrap_err().to_string();
    assert!(refused.contains("is not permitted to log in"), "{refused}");
    // Ending the sessions is the caller's step: the lock itself leaves them running.
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(one, 1);

    let restored = engine
        .restore_login(ROLE, before.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(restored, Restored::Restored);
    assert_eq!(can_login(&pg, ROLE).await, Some(true));
    pg_connect(&pg, ROLE).await.unwrap();
    assert_eq!(engine.close_login("nobody").await.unwrap(), None);
}

#[tokio::test]
async fn postgres_restores_only_what_the_lock_changed() {
    let ws = Workspace::new();
    let (pg, engine) = pg_setup(&ws).await;

    // NOLOGIN before the lock: still NOLOGIN after it.
    let before = engine.close_login("batch").await.unwrap().unwrap();
    assert_eq!(before, gate(&[("batch", false)]));
    assert_eq!(
        engine.restore_login("batch", &before).await.unwrap(),
        Restored::Restored
    );
    assert_eq!(can_login(&pg, "batch").await, Some(false));

    // Someone lets the role in meanwhile: reported, and left as they set it.
    let before = engine.close_login(ROLE).await.unwrap().unwrap();
    pg.exec("ALTER ROLE \"O'Brien \"\"ops\"\"\" LOGIN").await;
    assert_eq!(
        engine.restore_login(ROLE, &before).await.unwrap(),
        Restored::Changed {
            now: gate(&[(ROLE, true)])
        }
    );
    // The role is dropped before the restore (a Vault revocation, say).
    let before = engine.close_login(ROLE).await.unwrap().unwrap();
    pg.exec("DROP ROLE \"O'Brien \"\"ops\"\"\"").await;
    assert_eq!(
        engine.restore_login(ROLE, &before).await.unwrap(),
        Restored::Gone
    );
}

#[tokio::test]
async fn postgres_without_createrole_is_rejected_by_name_and_without_locks_unsupported() {
    let ws = Workspace::new();
    let pg = TestPostgres::start();
    pg.create_login("app", "pw").await;
    // No lock_url: the admin login is used, and it holds no CREATEROLE.
    let base = base(&pg, &ws).await;
    let engine = locking(&base, &ws, None).await;
    rejected_naming(engine.close_login("app").await, "CREATEROLE");
    assert_eq!(can_login_as_superuser(&pg, "app").await, Some(true));
    // Asked beforehand, so a lock request is refused by name before anything is stored.
    let missing = engine.missing_lock_grant().await.unwrap();
    assert!(missing.is_some_and(|g| g.contains("CREATEROLE")));
    pg.exec("ALTER ROLE sever_admin CREATEROLE").await;
    assert_eq!(engine.missing_lock_grant().await.unwrap(), None);

    let plain = build(&ws, base).await;
    unsupported(plain.login_gate("app").await);
    unsupported(plain.close_login("app").await);
    unsupported(plain.restore_login("app", &gate(&[("app", true)])).await);
    assert_eq!(can_login_as_superuser(&pg, "app").await, Some(true));
}

async fn can_login_as_superuser(pg: &TestPostgres, role: &str) -> Option<bool> {
    let (mut conn, _) = pg.session("postgres", "", "postgres", "").await;
    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_optional(&mut conn)
        .await
        .unwrap()
}

// --- MariaDB ----------------------------------------------------------------------------

/// A server without name resolution (accounts match by address) with sever's admin and a
/// `locker` login holding CREATE USER and SELECT on mysql.global_priv and mysql.roles_mapping
/// (to tell administrators, which are never locked); user `app` has two
/// accounts, `'app'@'localhost'` already locked.
async fn mariadb_setup(ws: &Workspace) -> (TestMariaDb, Arc<dyn Engine>) {
    let db = TestMariaDb::start_with_args(&["--skip-name-resolve"]);
    db.exec(
        "CREATE USER 'locker'@'%' IDENTIFIED BY 'lockerpw'; \
         GRANT CREATE USER ON *.* TO 'locker'@'%'; \
         GRANT SELECT ON mysql.global_priv TO 'locker'@'%'; \
         GRANT SELECT ON mysql.roles_mapping TO 'locker'@'%'",
    )
    .await;
    db.create_account("app", "127.0.0.1", "pw").await;
    db.create_account("app", "localhost", "pw").await;
    db.exec("ALTER USER 'app'@'localhost' ACCOUNT LOCK").await;
    let base = base(&db, ws).await;
    let engine = locking(&base, ws, Some(&db.url("locker", "lockerpw"))).await;
    (db, engine)
}

#[tokio::test]
async fn mariadb_locks_the_open_account_and_unlocks_only_that_one() {
    let ws = Workspace::new();
    let (db, engine) = mariadb_setup(&ws).await;
    let (mut session, id) = db.session("app", "pw").await;

    let before = engine.close_login("app").await.unwrap().unwrap();
    assert_eq!(
        before,
        gate(&[("'app'@'127.0.0.1'", true), ("'app'@'localhost'", false)])
    );
    assert_eq!(
        engine.login_gate("app").await.unwrap(),
        Some(before.closed())
    );
    let refused = db.try_session("app", "pw").await.unwrap_err().to_string();
    assert!(refused.contains("locked"), "{refused}");
    assert!(db.is_alive(id).await, "a lock does not end sessions");
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();

    assert_eq!(
        engine.restore_login("app", &before).await.unwrap(),
        Restored::Restored
    );
    assert_eq!(engine.login_gate("app").await.unwrap(), Some(before));
    db.session("app", "pw").await;

    // One account named: only that account is the gate.
    let one = "'app'@'127.0.0.1'";
    let before = engine.close_login(one).await.unwrap().unwrap();
    assert_eq!(before, gate(&[(one, true)]));
    assert!(db.try_session("app", "pw").await.is_err());
    assert_eq!(
        engine.restore_login(one, &before).await.unwrap(),
        Restored::Restored
    );
    db.session("app", "pw").await;
}

#[tokio::test]
async fn mariadb_reports_a_change_and_a_drop_and_quotes_any_name() {
    let ws = Workspace::new();
    let (db, engine) = mariadb_setup(&ws).await;

    let before = engine.close_login("app").await.unwrap().unwrap();
    // Someone re-opens the locked-before account meanwhile: nothing is unlocked.
    db.exec("ALTER USER 'app'@'localhost' ACCOUNT UNLOCK").await;
    assert_eq!(
        engine.restore_login("app", &before).await.unwrap(),
        Restored::Changed {
            now: gate(&[("'app'@'127.0.0.1'", false), ("'app'@'localhost'", true)])
        }
    );
    assert_eq!(
        engine.login_gate("app").await.unwrap(),
        Some(gate(&[
            ("'app'@'127.0.0.1'", false),
            ("'app'@'localhost'", true)
        ]))
    );

    db.exec("DROP USER 'app'@'127.0.0.1', 'app'@'localhost'")
        .await;
    assert_eq!(
        engine.restore_login("app", &before).await.unwrap(),
        Restored::Gone
    );
    assert_eq!(engine.close_login("app").await.unwrap(), None);

    // A quote and a backslash in the user name: ALTER USER takes no placeholders.
    db.exec(r"CREATE USER 'it''s\\ops'@'%' IDENTIFIED BY 'pw'")
        .await;
    let odd = r"it's\ops";
    let before = engine.close_login(odd).await.unwrap().unwrap();
    assert_eq!(before, gate(&[(r"'it's\ops'@'%'", true)]));
    assert!(db.try_session(odd, "pw").await.is_err());
    assert_eq!(
        engine.restore_login(odd, &before).await.unwrap(),
        Restored::Restored
    );
    db.session(odd, "pw").await;
}

#[tokio::test]
async fn mariadb_without_create_user_is_rejected_by_name_and_without_locks_unsupported() {
    let ws = Workspace::new();
    let db = TestMariaDb::start();
    db.create_account("app", "%", "pw").await;
    // No lock_url: the admin login is used, and it holds no CREATE USER.
    let base = base(&db, &ws).await;
    let engine = locking(&base, &ws, None).await;
    rejected_naming(engine.close_login("app").await, "CREATE USER");
    db.session("app", "pw").await;
    assert_eq!(
        engine.missing_lock_grant().await.unwrap().as_deref(),
        Some("CREATE USER")
    );

    let plain = build(&ws, base).await;
    unsupported(plain.close_login("app").await);
    unsupported(plain.login_gate("app").await);
}

// --- SQL Server (the TDS stand-in) ------------------------------------------------------

async fn tds_setup(ws: &Workspace) -> (TdsStandIn, Arc<dyn Engine>) {
    let db = TdsStandIn::start().await;
    db.allow_login("locker", "lockerpw");
    db.allow_login("o]brien", "pw");
    let lock_url = format!(
        "Server=tcp:127.0.0.1,{};User Id=locker;Password=lockerpw;Encrypt=DANGER_PLAINTEXT",
        db.port()
    );
    let base = base(&db, ws).await;
    let engine = locking(&base, ws, Some(&lock_url)).await;
    (db, engine)
}

async fn tds_connects(db: &TdsStandIn, login: &str) -> Result<(), tiberius::error::Error> {
    use tokio_util::compat::TokioAsyncWriteCompatExt;
    let mut config = tiberius::Config::new();
    config.host("127.0.0.1");
    config.port(db.port());
    config.authentication(tiberius::AuthMethod::sql_server(login, "pw"));
    config.encryption(tiberius::EncryptionLevel::NotSupported);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", db.port()))
        .await
        .unwrap();
    tiberius::Client::connect(config, tcp.compat_write())
        .await
        .map(drop)
}

fn sent(db: &TdsStandIn, needle: &str) -> Vec<String> {
    db.statements()
        .into_iter()
        .filter(|s| s.contains(needle))
        .collect()
}

#[tokio::test]
async fn sqlserver_disables_and_enables_a_bracketed_login() {
    let ws = Workspace::new();
    let (db, engine) = tds_setup(&ws).await;
    let session = tds_session(&db, "o]brien", "pw").await;

    let before = engine.close_login("o]brien").await.unwrap().unwrap();
    assert_eq!(before, gate(&[("o]brien", true)]));
    assert_eq!(sent(&db, "ALTER LOGIN"), ["ALTER LOGIN [o]]brien] DISABLE"]);
    assert_eq!(db.login_disabled("o]brien"), Some(true));
    let refused = tds_connects(&db, "o]brien").await.unwrap_err().to_string();
    assert!(refused.contains("disabled"), "{refused}");
    assert!(
        db.sessions()
            .iter()
            .any(|s| i64::from(s.session_id) == session)
    );

    assert_eq!(
        engine.restore_login("o]brien", &before).await.unwrap(),
        Restored::Restored
    );
    assert_eq!(
        sent(&db, "ALTER LOGIN"),
        [
            "ALTER LOGIN [o]]brien] DISABLE",
            "ALTER LOGIN [o]]brien] ENABLE"
        ]
    );
    tds_connects(&db, "o]brien").await.unwrap();

    // A login disabled before the lock stays disabled: nothing is sent.
    db.set_login_disabled("o]brien", true);
    let before = engine.close_login("o]brien").await.unwrap().unwrap();
    assert_eq!(before, gate(&[("o]brien", false)]));
    assert_eq!(
        engine.restore_login("o]brien", &before).await.unwrap(),
        Restored::Restored
    );
    assert_eq!(sent(&db, "ALTER LOGIN").len(), 2);
    assert_eq!(db.login_disabled("o]brien"), Some(true));
}

#[tokio::test]
async fn sqlserver_reports_a_change_and_a_drop_and_locks_contained_users_by_connect() {
    let ws = Workspace::new();
    let (db, engine) = tds_setup(&ws).await;

    let before = engine.close_login("o]brien").await.unwrap().unwrap();
    db.set_login_disabled("o]brien", false);
    assert_eq!(
        engine.restore_login("o]brien", &before).await.unwrap(),
        Restored::Changed {
            now: gate(&[("o]brien", true)])
        }
    );
    assert_eq!(sent(&db, "ENABLE"), Vec::<String>::new());
    engine.close_login("o]brien").await.unwrap();
    db.drop_login("o]brien");
    assert_eq!(
        engine.restore_login("o]brien", &before).await.unwrap(),
        Restored::Gone
    );

    db.set_contained_user("orders", "app", true);
    let before = engine.close_login("orders/app").await.unwrap().unwrap();
    assert_eq!(before, gate(&[("orders/app", true)]));
    assert_eq!(db.contained_user_connect("orders", "app"), Some(false));
    assert_eq!(
        sent(&db, "CONNECT"),
        ["sp_executesql: EXEC [orders].sys.sp_executesql @P1 | @P1='REVOKE CONNECT FROM [app]'"]
    );
    assert_eq!(
        engine.restore_login("orders/app", &before).await.unwrap(),
        Restored::Restored
    );
    assert_eq!(db.contained_user_connect("orders", "app"), Some(true));
    assert_eq!(
        engine.close_login("orders/nobody").await.unwrap(),
        None,
        "no such contained user"
    );
    engine.close_login("orders/app").await.unwrap();
    db.drop_contained_user("orders", "app");
    assert_eq!(
        engine.restore_login("orders/app", &before).await.unwrap(),
        Restored::Gone
    );
}

#[tokio::test]
async fn sqlserver_without_alter_any_login_is_rejected_by_name_and_without_locks_unsupported() {
    let ws = Workspace::new();
    let (db, engine) = tds_setup(&ws).await;
    db.set_alter_any_login(false);
    rejected_naming(engine.close_login("o]brien").await, "ALTER ANY LOGIN");
    assert_eq!(db.login_disabled("o]brien"), Some(false));
    // Without VIEW ANY DEFINITION either, the login cannot even be seen: not "no login".
    db.set_view_any_definition(false);
    rejected_naming(engine.login_gate("o]brien").await, "ALTER ANY LOGIN");

    let plain = build(&ws, base(&db, &ws).await).await;
    unsupported(plain.close_login("o]brien").await);
    unsupported(
        plain
            .restore_login("o]brien", &gate(&[("o]brien", true)]))
            .await,
    );
}
