//! What only the MySQL engine has, against a real throwaway MariaDB: accounts (user + host),
//! the connection-id watermark and a server restart, and Amazon RDS's kill procedure. The
//! behaviour every engine shares is in `tests/engines.rs`.

use std::time::Duration;

use crate::support::config::{ConfigBuilder, file};
use crate::support::scenarios::Database;
use crate::support::sever::{TestServer, Workspace, pids, sorted_ids};
use chrono::Utc;
use reqwest::StatusCode;
use serde_json::json;
use sever::config::Config;
use sever::terminate::mysql::Mysql;
use sever::terminate::{Engine, Scope, TerminateRequest};
use sever_testkit::mariadb::TestMariaDb;
use sqlx::Connection;
use sqlx::mysql::MySqlConnectOptions;

const GONE: Duration = Duration::from_secs(5);

/// A session as `user` over the server's Unix socket, so it authenticates as `user@localhost`.
async fn socket_session(db: &TestMariaDb, user: &str, password: &str) -> i64 {
    let options = MySqlConnectOptions::new()
        .socket(db.socket_path())
        .username(user)
        .password(password);
    let mut conn = sqlx::MySqlConnection::connect_with(&options).await.unwrap();
    let account: String = sqlx::query_scalar("SELECT CURRENT_USER()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(account, format!("{user}@localhost"));
    let id: i64 = sqlx::query_scalar("SELECT CAST(CONNECTION_ID() AS SIGNED)")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    std::mem::forget(conn);
    id
}

#[tokio::test]
async fn an_account_mapping_reaches_only_that_accounts_sessions() {
    // As production servers usually run: accounts are matched on addresses, not names.
    let db = TestMariaDb::start_with_args(&["--skip-name-resolve"]);
    // Two accounts, one user name: over TCP from 127.0.0.1 and over the local socket.
    db.create_account("app", "127.0.0.1", "tcp-pw").await;
    db.create_account("app", "localhost", "socket-pw").await;
    let ws = Workspace::new();
    let config = ws
        .config()
        .merge_toml(&Database::target(&db, &ws, "main").await)
        .credential("tcp", &[("main", "'app'@'127.0.0.1'")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    let tcp: Vec<i64> = db.open("app", "tcp-pw", 2).await;
    let local = socket_session(&db, "app", "socket-pw").await;

    let (status, listed) = server
        .operator_get("/v1/sessions?login=%27app%27%40%27127.0.0.1%27")
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 2, "{listed}");
    assert!(
        listed["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["login_id"] == "'app'@'127.0.0.1'")
    );

    let (status, report) = server
        .event(&json!({"credential": "tcp", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted_ids(&tcp));
    for id in &tcp {
        assert!(db.wait_gone(*id as u64, GONE).await);
    }
    assert!(
        db.is_alive(local as u64).await,
        "'app'@'localhost' is another account"
    );
    server.stop().await;
}

pub(super) async fn engine(db: &TestMariaDb, ws: &Workspace, rds: bool) -> Mysql {
    let mut target = ConfigBuilder::new().merge_toml(&Database::target(db, ws, "main").await);
    if rds {
        target = target.set("targets.main.rds", true);
    }
    engine_from(&target.toml())
}

/// The engine a `[targets.main]` table describes.
fn engine_from(target: &str) -> Mysql {
    let config = Config::parse(target).unwrap();
    let target = &config.targets["main"];
    Mysql::new(
        &target.url.load("url").unwrap(),
        target,
        &config.termination,
    )
    .unwrap()
}

fn request(login: &str) -> TerminateRequest {
    TerminateRequest {
        logins: vec![login.into()],
        scope: Scope::Before(Utc::now()),
        protected: Default::default(),
        dry_run: false,
        verify_timeout: GONE,
        refine_cutoff: false,
        journal: None,
        roles: None,
    }
}

#[tokio::test]
async fn the_watermark_spares_later_sessions_and_a_restart_ends_them_all_and_says_so() {
    sever::install_crypto_provider();
    let db = TestMariaDb::start();
    let ws = Workspace::new();
    let engine = engine(&db, &ws, false).await;
    db.create_login("app", "pw0").await;

    // Without a restart: sessions opened after the watermark survive.
    let before = db.open("app", "pw0", 2).await;
    let watermark = engine.watermark().await.unwrap();
    let after = db.open("app", "pw0", 1).await;
    let outcome = engine
        .terminate_with_watermark(&request("app"), Some(watermark))
        .await
        .unwrap();
    let ended: Vec<i64> = outcome.terminated.iter().map(|s| s.pid).collect();
    assert_eq!(
        sorted_ids(&ended),
        sorted_ids(&before),
        "{outcome:?} {watermark:?}"
    );
    assert!(outcome.notes.is_empty());
    assert!(db.is_alive(after[0] as u64).await);

    // A restart between the watermark and the kill: ids restarted, so every session goes.
    let watermark = engine.watermark().await.unwrap();
    db.restart();
    let reconnected = db.open("app", "pw0", 2).await;
    assert!(
        reconnected.iter().all(|id| (*id as u64) < watermark.id),
        "ids restart after a restart"
    );
    let outcome = engine
        .terminate_with_watermark(&request("app"), Some(watermark))
        .await
        .unwrap();
    let ended: Vec<i64> = outcome.terminated.iter().map(|s| s.pid).collect();
    assert_eq!(sorted_ids(&ended), sorted_ids(&reconnected));
    assert!(
        outcome.notes.iter().any(|n| n.contains("restarted")),
        "{:?}",
        outcome.notes
    );
}

#[tokio::test]
async fn rds_mode_kills_through_mysql_rds_kill() {
    sever::install_crypto_provider();
    let db = TestMariaDb::start();
    // RDS provides this procedure (running with its definer's rights); here it is made the same way.
    db.exec("CREATE PROCEDURE mysql.rds_kill(IN thread BIGINT) SQL SECURITY DEFINER KILL CONNECTION thread")
        .await;
    let ws = Workspace::new();
    let engine = engine(&db, &ws, true).await;
    db.exec("GRANT EXECUTE ON PROCEDURE mysql.rds_kill TO 'sever_admin'@'%'")
        .await;
    db.create_login("app", "pw0").await;
    let sessions = db.open("app", "pw0", 2).await;
    let mut all = request("app");
    all.scope = Scope::All;
    let outcome = engine.terminate_with_watermark(&all, None).await.unwrap();
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    let ended: Vec<i64> = outcome.terminated.iter().map(|s| s.pid).collect();
    assert_eq!(sorted_ids(&ended), sorted_ids(&sessions));
    for id in &sessions {
        assert!(db.wait_gone(*id as u64, GONE).await);
    }
}

/// `(pid, reason)` of every session `report` lists as skipped on target `main`.
fn skipped(report: &serde_json::Value) -> Vec<(i64, String)> {
    let mut skipped: Vec<(i64, String)> = report["targets"][0]["skipped"]
        .as_array()
        .unwrap_or_else(|| panic!("no skipped in {report}"))
        .iter()
        .map(|s| {
            (
                s["pid"].as_i64().unwrap(),
                s["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    skipped.sort();
    skipped
}

/// sever running against `db` with one credential, `all`, mapped to each of `logins`.
async fn serve_logins(db: &TestMariaDb, ws: &Workspace, logins: &[&str]) -> TestServer {
    let mapped: Vec<(&str, &str)> = logins.iter().map(|l| ("main", *l)).collect();
    let config = ws
        .config()
        .merge_toml(&Database::target(db, ws, "main").await)
        .credential("all", &mapped)
        .toml();
    TestServer::start(&ws.write_config(&config)).await
}

#[tokio::test]
async fn administrator_accounts_are_skipped_as_superuser_and_their_sessions_survive() {
    let db = TestMariaDb::start();
    for login in ["app", "dba", "roled", "connadmin", "late"] {
        db.create_login(login, "pw0").await;
    }
    // The account; SUPER through a role granted to the default role, which
    // mysql.user does not show; MariaDB's CONNECTION ADMIN alone.
    db.exec(
        "GRANT ALL PRIVILEGES ON *.* TO 'dba'@'%' WITH GRANT OPTION; \
         CREATE ROLE inner_admin; GRANT SUPER ON *.* TO inner_admin; \
         CREATE ROLE outer_role; GRANT inner_admin TO outer_role; \
         GRANT outer_role TO 'roled'@'%'; SET DEFAULT ROLE outer_role FOR 'roled'@'%'; \
         GRANT CONNECTION ADMIN ON *.* TO 'connadmin'@'%';",
    )
    .await;
    let mut root = db.root_connection().await;
    let shown: String =
        sqlx::query_scalar("SELECT Super_priv FROM mysql.user WHERE User = 'roled'")
            .fetch_one(&mut root)
            .await
            .unwrap();
    assert_eq!(shown, "N", "the role's SUPER is not in mysql.user");
    let ws = Workspace::new();
    let server = serve_logins(&db, &ws, &["app", "dba", "roled", "connadmin", "late"]).await;
    let mut sessions = std::collections::BTreeMap::new();
    for login in ["app", "dba", "roled", "connadmin", "late"] {
        sessions.insert(login, db.open(login, "pw0", 1).await[0]);
    }
    // Granted after sever started: the check is made when sessions are selected.
    db.exec("GRANT SUPER ON *.* TO 'late'@'%'").await;

    let (status, report) = server
        .event(&json!({"credential": "all", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), vec![sessions["app"]]);
    let mut admins: Vec<(i64, String)> = ["dba", "roled", "connadmin", "late"]
        .iter()
        .map(|l| (sessions[l], "superuser".to_owned()))
        .collect();
    admins.sort();
    assert_eq!(skipped(&report), admins, "{report}");
    assert!(db.wait_gone(sessions["app"] as u64, GONE).await);
    for login in ["dba", "roled", "connadmin", "late"] {
        assert!(
            db.is_alive(sessions[login] as u64).await,
            "{login}'s session was ended"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn without_select_on_the_privilege_tables_sessions_are_skipped_as_privileges_unknown() {
    let db = TestMariaDb::start();
    db.create_login("app", "pw0").await;
    let ws = Workspace::new();
    let server = serve_logins(&db, &ws, &["app"]).await;
    db.exec("REVOKE SELECT ON mysql.global_priv FROM 'sever_admin'@'%'")
        .await;
    let app = db.open("app", "pw0", 1).await[0];

    let (status, report) = server
        .event(&json!({"credential": "all", "kind": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        skipped(&report),
        vec![(app, "privileges_unknown".to_owned())],
        "{report}"
    );
    assert!(pids(&report, "main", "terminated").is_empty(), "{report}");
    let notes = report["targets"][0]["notes"].to_string();
    assert!(notes.contains("mysql.global_priv"), "{report}");
    assert!(db.is_alive(app as u64).await, "never treated as ordinary");
    server.stop().await;
}

#[tokio::test]
async fn logins_match_exactly_and_a_4_byte_login_matches_nothing_without_an_error() {
    sever::install_crypto_provider();
    let db = TestMariaDb::start();
    db.create_login("app", "pw0").await;
    let ws = Workspace::new();
    let server = serve_logins(&db, &ws, &["app"]).await;
    let app = db.open("app", "pw0", 2).await;
    let listed = |body: &serde_json::Value| -> Vec<i64> {
        let mut pids: Vec<i64> = body["sessions"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|s| s["pid"].as_i64().unwrap())
            .collect();
        pids.sort();
        pids
    };
    let (status, body) = server.operator_get("/v1/sessions?login=app").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(listed(&body), sorted_ids(&app));
    for other in ["APP", "app%20"] {
        let (status, body) = server
            .operator_get(&format!("/v1/sessions?login={other}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{other}: {body}");
        assert!(listed(&body).is_empty(), "{other} listed {body}");
    }
    server.stop().await;

    // Straight to the engine, as a mapping would send it: no collation error, no match.
    let url = ws.secret_path("again.url", &db.url("sever_admin", "severadminpw"));
    let engine = engine_from(
        &ConfigBuilder::new()
            .set("targets.main.engine", "mysql")
            .set("targets.main.url", file(&url))
            .toml(),
    );
    let four_byte = "app\u{1F600}";
    let selector = sever::select::Selector {
        logins: vec![four_byte.into()],
        ..Default::default()
    };
    let listed = sever::terminate::Engine::list(&engine, &selector, false)
        .await
        .unwrap();
    assert!(
        listed
            .iter()
            .all(|l| l.decision != sever::select::Decision::Selected),
        "{listed:?}"
    );
    let mut all = request(four_byte);
    all.scope = Scope::All;
    let outcome = engine.terminate_with_watermark(&all, None).await.unwrap();
    assert!(
        outcome.matched.is_empty() && outcome.skipped.is_empty(),
        "{outcome:?}"
    );
    let account = request(&format!("'{four_byte}'@'%'"));
    let outcome = engine.terminate(&account).await.unwrap();
    assert!(outcome.matched.is_empty(), "{outcome:?}");
    for id in &app {
        assert!(db.is_alive(*id as u64).await);
    }
}

/// Log output captured for one test (a `tracing` subscriber set as the thread's default).
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn learning_warns_once_about_a_mapped_administrator_and_unreadable_privileges() {
    sever::install_crypto_provider();
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // tracing caches each callsite's interest process-wide. While one dispatcher alone is
    // registered, a callsite first reached on another test's thread (this binary runs many)
    // is asked only of that thread's default, none, and stays off for good. A second live
    // dispatcher makes every registration ask all of them, this test's included.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    // The test runs on one thread, so the engine's warnings land here.
    let _guard = tracing::subscriber::set_default(subscriber);
    let db = TestMariaDb::start();
    db.create_login("app", "pw0").await;
    db.create_login("dba", "pw0").await;
    db.exec("GRANT SUPER ON *.* TO 'dba'@'%'").await;
    let ws = Workspace::new();
    let engine = engine(&db, &ws, false).await;
    let logins = vec!["app".to_owned(), "dba".to_owned()];

    engine.learn_logins(&logins).await.unwrap();
    engine.learn_logins(&logins).await.unwrap();
    let text = logs.text();
    // sever's own warnings only: under load sqlx warns about slow statements too.
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(" sever::"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("administrator") && warnings[0].contains("login=dba"),
        "{text}"
    );

    db.exec("REVOKE SELECT ON mysql.roles_mapping FROM 'sever_admin'@'%'")
        .await;
    let fresh = engine_from(
        &ConfigBuilder::new()
            .set("targets.main.engine", "mysql")
            .set(
                "targets.main.url",
                file(&ws.secret_path("fresh.url", &db.url("sever_admin", "severadminpw"))),
            )
            .toml(),
    );
    fresh.learn_logins(&logins).await.unwrap();
    let text = logs.text();
    assert!(
        text.contains("privileges_unknown") && text.contains("mysql.roles_mapping"),
        "{text}"
    );
}

/// The selector and the impact columns on a real MariaDB: a transaction holding a row lock,
/// a session waiting on it, an idle one; fields MariaDB cannot evaluate are refused by name.
#[tokio::test]
async fn the_listing_shows_transactions_and_lock_waits_and_refuses_what_it_cannot_read() {
    use sqlx::Executor;
    sever::install_crypto_provider();
    let db = TestMariaDb::start();
    db.create_login("app", "pw0").await;
    db.exec("CREATE DATABASE appdb").await;
    db.exec("CREATE TABLE appdb.t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        .await;
    db.exec("INSERT INTO appdb.t VALUES (1, 0)").await;
    db.exec("GRANT ALL ON appdb.* TO 'app'@'%'").await;
    let ws = Workspace::new();
    let server = serve_logins(&db, &ws, &["app"]).await;

    let (mut holder, holder_id) = db.session("app", "pw0").await;
    holder.execute("BEGIN").await.unwrap();
    holder
        .execute("UPDATE appdb.t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    let (mut waiter, waiter_id) = db.session("app", "pw0").await;
    let blocked = tokio::spawn(async move {
        let _ = waiter
            .execute("UPDATE appdb.t SET v = 2 WHERE id = 1")
            .await;
        waiter
    });
    let (_idle, idle_id) = db.session("app", "pw0").await;
    let row = |body: &serde_json::Value, id: u64| -> serde_json::Value {
        body["sessions"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .find(|s| s["pid"].as_u64() == Some(id))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    let mut body = serde_json::Value::Null;
    for _ in 0..200 {
        let (status, b) = server.operator_get("/v1/sessions?logins=app").await;
        assert_eq!(status, StatusCode::OK, "{b}");
        body = b;
        if row(&body, waiter_id)["blocked_by"] == json!([holder_id]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        row(&body, waiter_id)["blocked_by"],
        json!([holder_id]),
        "{body}"
    );
    assert_eq!(row(&body, holder_id)["blocking"], 1, "{body}");
    assert_eq!(
        row(&body, holder_id)["state"],
        "idle_in_transaction",
        "{body}"
    );
    assert!(row(&body, holder_id)["xact_start"].is_string(), "{body}");
    assert_eq!(row(&body, idle_id)["state"], "idle", "{body}");
    assert!(row(&body, idle_id)["xact_start"].is_null(), "{body}");
    let summary = &body["summary"][0];
    assert_eq!(summary["login"], "app", "{body}");
    assert_eq!(summary["sessions"], 3, "{body}");
    assert_eq!(summary["open_transactions"], 2, "{body}");
    assert_eq!(summary["blocked_sessions"], 1, "{body}");

    let (status, body) = server
        .operator_get("/v1/sessions?logins=app&states=idle_in_transaction&in_transaction_for=0s")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<u64> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [holder_id], "{body}");

    // MariaDB records no connection start; performance_schema is off by default here.
    let (status, body) = server
        .operator_get("/v1/sessions?started_before=2030-01-01T00:00:00Z")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("started_before"), "{body}");
    let (status, body) = server
        .operator_get("/v1/sessions?exclude_application_names=mysqldump")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("performance_schema"), "{body}");
    let (status, body) = server.operator_get("/v1/sessions?exclude_login=app").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    holder.execute("ROLLBACK").await.unwrap();
    drop(blocked.await.unwrap());
    server.stop().await;
}
