//! What only the MySQL engine has, against a real throwaway MariaDB: accounts (user + host),
//! the connection-id watermark and a server restart, and Amazon RDS's kill procedure. The
//! behaviour every engine shares is in `tests/engines.rs`.

mod support;

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::json;
use sever::config::Config;
use sever::terminate::mysql::Mysql;
use sever::terminate::{Scope, TerminateRequest};
use sqlx::Connection;
use sqlx::mysql::MySqlConnectOptions;
use support::mariadb::TestMariaDb;
use support::scenarios::Database;
use support::sever::{TestServer, Workspace, pids, sorted_ids};

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
    let config = format!(
        "{}{}[credentials.tcp]\nlogins = [{{ target = \"main\", login = \"'app'@'127.0.0.1'\" }}]\n",
        ws.base_config(),
        Database::target(&db, &ws, "main").await,
    );
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

async fn engine(db: &TestMariaDb, ws: &Workspace, rds: bool) -> Mysql {
    let target = Database::target(db, ws, "main").await + if rds { "rds = true\n" } else { "" };
    let config = Config::parse(&target).unwrap();
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
